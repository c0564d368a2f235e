"""Training a 2.5D network (issue #23): valid-context training slices, label centring, plain tensors.

``unet25d`` in training mode predicts only the slices whose neighbours are all real
(models/unet25d.py), the trainer scores it on the label's centre slices
(trainer.centre_crop_like), and training batches are plain tensors, not MONAI MetaTensors
(patches.plain_tensor).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from dataset_factory import write_labelled_case  # noqa: E402

from tumorseg_core.models.registry import build_network  # noqa: E402
from tumorseg_core.training.cache import CachedCase  # noqa: E402
from tumorseg_core.training.patches import PatchDataset, plain_tensor  # noqa: E402
from tumorseg_core.training.trainer import centre_crop_like, train  # noqa: E402

KWARGS = {"in_channels": 2, "out_channels": 3, "context": 2, "features": [2, 2, 4, 4, 8, 2]}


def _net():
    torch.manual_seed(0)
    return build_network("unet25d", KWARGS)


def test_training_mode_predicts_the_slices_with_real_neighbours_only():
    net = _net()
    x = torch.randn(2, 2, 7, 16, 32)  # (B, C, z, y, x)
    net.eval()
    with torch.no_grad():
        every = net(x)
    net.train()
    with torch.no_grad():
        valid = net(x)
    assert tuple(every.shape) == (2, 3, 7, 16, 32)
    assert tuple(valid.shape) == (2, 3, 3, 16, 32)  # slices 2..4: z - 2k
    # InstanceNorm keeps no running statistics: train and eval mode compute the same
    # function, so the valid slices are exactly the eval output's inner slices.
    torch.testing.assert_close(valid, every[:, :, 2:5], rtol=1e-5, atol=1e-5)
    # ...and they differ from the border slices, which see repeated edge slices.
    assert not torch.allclose(every[:, :, 0], every[:, :, 2])


def test_training_mode_window_of_at_most_2k_slices_predicts_every_slice():
    net = _net().train()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 4, 32, 32))
    assert tuple(out.shape) == (1, 3, 4, 32, 32)


def test_centre_crop_like_cuts_the_label_to_the_output():
    label = torch.arange(2 * 1 * 6 * 4 * 4).reshape(2, 1, 6, 4, 4)
    logits = torch.zeros(2, 3, 2, 4, 4)
    cut = centre_crop_like(label, logits)
    assert tuple(cut.shape) == (2, 1, 2, 4, 4)
    assert torch.equal(cut, label[:, :, 2:4])
    assert centre_crop_like(label, torch.zeros(2, 3, 6, 4, 4)) is label
    for bad in ((2, 3, 3, 4, 4), (2, 3, 8, 4, 4)):  # odd difference, larger output
        with pytest.raises(ValueError, match="cannot be centred"):
            centre_crop_like(label, torch.zeros(bad))


def test_plain_tensor_strips_metatensor_without_copy():
    from monai.data import MetaTensor

    meta = MetaTensor(torch.ones(1, 2, 3))
    plain = plain_tensor(meta)
    assert type(plain) is torch.Tensor
    assert plain.data_ptr() == meta.data_ptr()
    assert type(plain_tensor(np.zeros((1, 2), np.float32))) is torch.Tensor


def test_patch_dataset_yields_plain_tensors(tmp_path):
    from tumorseg_core.training.augment import build_train_transforms

    rng = np.random.default_rng(0)
    label = np.zeros((1, 12, 20, 20), np.uint8)
    label[0, 4:8, 6:12, 6:12] = 1
    np.save(tmp_path / "c.image.npy", rng.standard_normal((1, 12, 20, 20)).astype(np.float32))
    np.save(tmp_path / "c.label.npy", label)
    case = CachedCase("c", tmp_path / "c.image.npy", tmp_path / "c.label.npy")
    ds = PatchDataset([case], build_train_transforms((6, 16, 16), {"rotation_prob": 1.0}), length=3, seed=1)
    for i in range(3):
        item = ds[i]
        assert type(item["image"]) is torch.Tensor and type(item["label"]) is torch.Tensor
        assert tuple(item["label"].shape) == (1, 6, 16, 16)


def test_tiny_unet25d_run_trains_on_centre_slices_and_writes_a_package(tmp_path):
    """End to end: patches of 2k+2 slices, the network predicts 2 of them; the loss is finite
    and falls over a few steps on one bright lesion; the package loads."""
    z, y, x = np.mgrid[:16, :32, :32]
    for i in range(2):
        lesion = ((z - 8) ** 2 + (y - 14 - 2 * i) ** 2 + (x - 16) ** 2 < 20).astype(np.uint8)
        image = (100 + 5 * np.random.default_rng(i).standard_normal(lesion.shape) + 80 * lesion).astype(np.float32)
        img = sitk.GetImageFromArray(image)
        img.SetSpacing((1.5, 1.5, 1.5))
        write_labelled_case(tmp_path / "data", f"case{i}", img, sitk.GetImageFromArray(lesion))
    config = {
        "data": str(tmp_path / "data"), "architecture": "unet25d",
        "kwargs": {"context": 2, "features": [4, 4, 8, 8, 16, 4]}, "patch_size": [32, 32, 6],
        "epochs": 2, "iterations_per_epoch": 6, "batch_size": 2, "lr": 3e-3, "val_fraction": 0.0,
        "device": "cpu", "seed": 0, "name": "tiny-25d", "augment": {"pos": 1.0, "neg": 0.0},
        "workdir": str(tmp_path / "work"),
    }
    package = train(config, tmp_path / "pkg")
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    losses = [row["train_loss"] for row in state["history"]]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]
    manifest = json.loads((Path(package) / "manifest.json").read_text())
    assert manifest["architecture"] == "unet25d"


def test_validation_runs_a_25d_network_by_slices_in_training_patch_tiles():
    """Validation predicts every slice from its real neighbours, its plane in tiles of the training
    patch (as slice mode), not by 3D windows whose border slices see repeated context."""
    from tumorseg_core.training.validation import predict_by_slices, predict_case

    net = _net().eval()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 9, 32, 48)).astype(np.float32)  # (C, z, y, x)
    with torch.no_grad():
        whole = net(torch.from_numpy(image)[None]).argmax(dim=1)[0].numpy()  # every slice, edges repeated at the ends
    # One tile the size of the plane: the network's own 3D contract, slice by slice.
    np.testing.assert_array_equal(predict_by_slices(net, image, torch.device("cpu"), (32, 48)), whole)
    # predict_case (what validate calls) takes that path for the training window's (y, x) ...
    np.testing.assert_array_equal(predict_case(net, image, (6, 32, 48), torch.device("cpu"), overlap=0.25), whole)
    # ... which 3D windows of 6 slices would not reproduce (their border slices repeat the window's edge).
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        windows = sliding_window_inference(torch.from_numpy(image)[None], (6, 32, 48), 2, net, overlap=0.25,
                                           mode="gaussian").argmax(dim=1)[0].numpy()
    assert (windows != whole).any()
    # A plane smaller than the tile is zero-padded to it (as training pads its patches) and cut back.
    small = image[:, :, :30, :37]
    padded = np.pad(small, ((0, 0), (0, 0), (0, 2), (0, 11)))
    with torch.no_grad():
        expected = net(torch.from_numpy(padded)[None]).argmax(dim=1)[0].numpy()[:, :30, :37]
    np.testing.assert_array_equal(predict_by_slices(net, small, torch.device("cpu"), (32, 48)), expected)


@pytest.mark.parametrize("size, tile, overlap", [((70, 45), (32, 32), 0.25), ((20, 90), (32, 48), 0.5),
                                                 ((32, 48), (32, 48), 0.25)])
def test_tiles_blend_to_the_untiled_answer_of_a_pixelwise_network(size, tile, overlap):
    """A network that looks at each pixel alone gives the same answer tiled or not: the tiles cover
    the plane, the Gaussian weights sum to one, and padding is cut back."""
    from tumorseg_core.inference.plane_tiles import softmax, tile_starts, tiled_probabilities

    rng = np.random.default_rng(1)
    plane = rng.normal(size=(3, *size)).astype(np.float32)
    calls = []

    def pixelwise(tiles):
        calls.append(tiles.shape)
        assert tiles.shape[2:] == tile
        return softmax(tiles[:, :2] * 2.0 - tiles[:, 2:3], axis=1)

    got = tiled_probabilities(plane, tile, overlap, pixelwise, batch=3)
    want = softmax((plane[:2] * 2.0 - plane[2:3])[None], axis=1)[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    for n, t in zip(size, tile):
        starts = tile_starts(max(n, t), t, overlap)
        assert starts[0] == 0 and starts[-1] + t == max(n, t)
        assert all(b - a <= t for a, b in zip(starts, starts[1:]))  # no gap between tiles
