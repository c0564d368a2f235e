"""tumorseg_core.training.losses: every loss builds, is finite, prefers right answers, honours class weights."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from tumorseg_core.errors import TumorSegError  # noqa: E402
from tumorseg_core.training.losses import LOSS_NAMES, build_loss  # noqa: E402

SHAPE = (2, 1, 6, 6, 6)  # (B, 1, z, y, x)


def softmax_case(channels: int = 3):
    """Integer target (B, 1, z, y, x) with labels 0..channels-1 and perfect / wrong logits (B, C, ...)."""
    target = torch.zeros(SHAPE, dtype=torch.long)
    target[:, :, 1:4, 1:4, 1:4] = 1
    if channels > 2:
        target[:, :, 4:6, 4:6, 4:6] = 2
    onehot = torch.cat([(target == c) for c in range(channels)], dim=1).float()
    perfect = (onehot * 2 - 1) * 8
    wrong = torch.roll(perfect, shifts=1, dims=1)  # every voxel scored as the next class
    return target, perfect, wrong


def sigmoid_case(channels: int = 2):
    """Binary target (B, C, z, y, x) of nested regions and perfect / wrong logits."""
    target = torch.zeros((SHAPE[0], channels) + SHAPE[2:], dtype=torch.long)
    target[:, 0, 1:5, 1:5, 1:5] = 1
    if channels > 1:
        target[:, 1, 2:4, 2:4, 2:4] = 1
    perfect = (target.float() * 2 - 1) * 8
    return target, perfect, -perfect


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("include_background", [False, True])
def test_softmax_losses(name, include_background):
    target, perfect, wrong = softmax_case()
    loss = build_loss(name, "softmax", include_background=include_background)
    assert isinstance(loss, torch.nn.Module)
    good, bad = loss(perfect, target), loss(wrong, target)
    assert good.ndim == 0 and math.isfinite(good.item()) and math.isfinite(bad.item())
    assert good.item() < 0.05 < bad.item()


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("channels", [1, 2])
def test_sigmoid_losses(name, channels):
    target, perfect, wrong = sigmoid_case(channels)
    loss = build_loss(name, "sigmoid")
    good, bad = loss(perfect, target), loss(wrong, target)
    assert good.ndim == 0 and math.isfinite(good.item())
    assert good.item() < 0.05 < bad.item()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_has_gradients(name):
    target, _, _ = softmax_case()
    logits = torch.randn((SHAPE[0], 3) + SHAPE[2:], generator=torch.Generator().manual_seed(0), requires_grad=True)
    build_loss(name, "softmax")(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("output_type", ["softmax", "sigmoid"])
def test_class_weights_change_the_value(name, output_type):
    gen = torch.Generator().manual_seed(1)
    if output_type == "softmax":
        target, _, _ = softmax_case(channels=3)
        weights = [0.1, 1.0, 5.0]
    else:
        target, _, _ = sigmoid_case(channels=2)
        weights = [1.0, 5.0]
    logits = torch.randn((SHAPE[0], len(weights)) + SHAPE[2:], generator=gen)
    plain = build_loss(name, output_type)(logits, target).item()
    weighted = build_loss(name, output_type, class_weights=weights)(logits, target).item()
    assert math.isfinite(weighted)
    assert abs(weighted - plain) > 1e-4


def test_binary_softmax_focal_without_background_is_not_zero():
    # MONAI's softmax focal with include_background=False would take the softmax over one
    # channel (always 1) and give 0; our focal terms keep every channel.
    target, _, wrong = softmax_case(channels=2)
    for name in ("focal", "dice_focal"):
        assert build_loss(name, "softmax", include_background=False)(wrong, target).item() > 1.0


def test_options_are_passed_through():
    target, _, wrong = softmax_case()
    base = build_loss("dice_ce", "softmax")(wrong, target).item()
    no_ce = build_loss("dice_ce", "softmax", lambda_ce=0.0)(wrong, target).item()
    dice_only = build_loss("dice", "softmax")(wrong, target).item()
    assert no_ce == pytest.approx(dice_only) and base > no_ce
    g0 = build_loss("focal", "sigmoid", gamma=0.0)
    g2 = build_loss("focal", "sigmoid", gamma=2.0)
    t, _, _ = sigmoid_case(1)
    half = torch.zeros(t.shape)  # p = 0.5 everywhere: gamma=2 scales each term by 0.25
    assert g2(half, t).item() == pytest.approx(0.25 * g0(half, t).item(), rel=1e-5)


def test_user_errors():
    with pytest.raises(TumorSegError, match="dice, focal, dice_ce, dice_focal"):
        build_loss("tversky")
    with pytest.raises(TumorSegError, match="output type"):
        build_loss("dice", "relu")
    with pytest.raises(TumorSegError, match="does not take"):
        build_loss("dice", "softmax", gamma=2.0)
    with pytest.raises(TumorSegError, match="class_weights"):
        build_loss("dice_ce", "softmax", class_weights=[1.0, -1.0])
    with pytest.raises(TumorSegError, match="class_weights"):
        build_loss("dice_ce", "softmax", class_weights="heavy")
