"""Tests of the click network: its cube, inputs, simulated users, training cubes, training with resume,
the safe folder it ships in, and the interactive session answered by it (parts, box, undo, geometry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_interactive_session import OBLIQUE_FLIPPED, _centre, _dice, _grid, _same_grid, _scene

from tumorseg_core.clicknet.grid import SIZE, VOXEL_MM, click_grid
from tumorseg_core.clicknet.inputs import CHANNELS, encode
from tumorseg_core.clicknet.predict import WEIGHTS, ClickNet, shipped_folder
from tumorseg_core.clicknet.session import interactive_session
from tumorseg_core.errors import ModelPackageError
from tumorseg_core.interactive import InteractiveSession
from tumorseg_core.training.clicknet import samples, simulate
from tumorseg_core.training.clicknet.export import export
from tumorseg_core.training.clicknet.train import train

RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
DIRECTIONS = {"lps": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), "ras": RAS, "oblique_flipped": OBLIQUE_FLIPPED}


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_cube_is_centred_on_the_click_and_maps_back_onto_the_exact_grid(direction):
    img = _grid(direction=direction)
    point = tuple(_centre(img) + np.array([3.0, -2.0, 4.0]))
    crop = click_grid(img, point)
    assert crop.array.shape == (SIZE,) * 3
    np.testing.assert_allclose(crop.index_of(point), [(SIZE - 1) / 2.0] * 3, atol=1e-6)
    assert crop.grid.GetDirection() == img.GetDirection() and crop.voxel_mm == VOXEL_MM
    ball = np.zeros((SIZE,) * 3, np.float32)
    ball[crop.ball([point], 8.0)] = 1.0
    back = crop.to_image(ball, img)
    _same_grid(back, img)
    arr = sitk.GetArrayFromImage(back) > 0
    idx = np.argwhere(arr)
    pts = np.array([img.TransformIndexToPhysicalPoint(tuple(int(v) for v in i[::-1])) for i in idx])
    assert arr.sum() > 10 and np.linalg.norm(pts - np.asarray(point), axis=1).max() <= 8.0 + 2.0


def test_inputs_put_the_click_at_one_and_the_clicked_level_at_zero():
    raw = np.full((SIZE,) * 3, 30.0, np.float32)
    raw[:, :, :5] = 1000.0  # bone in a corner sets the scene's scale
    raw[15:25, 15:25, 15:25] = 40.0  # a lesion 10 units brighter, clicked at its centre
    raw += np.random.default_rng(0).normal(0.0, 2.0, raw.shape).astype(np.float32)
    c = (20.0, 20.0, 20.0)
    x = encode(raw, VOXEL_MM, [c], [(5.0, 5.0, 5.0)], previous=np.ones(raw.shape))
    assert x.shape == (CHANNELS,) + raw.shape and x.dtype == np.float32
    assert x[2][20, 20, 20] == pytest.approx(1.0) and x[3][5, 5, 5] == pytest.approx(1.0)
    assert x[2][5, 5, 5] < 1e-3 and np.all(x[4] == 1.0)
    assert abs(float(np.median(x[1][18:23, 18:23, 18:23]))) < 0.1
    # The local view shows the 10-unit lesion against tissue; the scene's bone-set scale hardly does.
    local = float(np.median(x[1][17:23, 17:23, 17:23]) - np.median(x[1][30:35, 30:35, 30:35]))
    scene = float(np.median(x[0][17:23, 17:23, 17:23]) - np.median(x[0][30:35, 30:35, 30:35]))
    assert local > 0.3 and local > 5.0 * scene, (local, scene)
    with pytest.raises(ValueError):
        encode(raw, VOXEL_MM, [])


def test_simulated_corrections_point_at_the_largest_errors():
    target = np.zeros((SIZE,) * 3, bool)
    target[10:30, 10:30, 10:30] = True
    shrunk = np.zeros_like(target)
    shrunk[10:30, 10:30, 10:18] = True
    fg, bg = simulate.corrections(shrunk, target, 2)
    assert len(fg) == 1 and not bg and target[fg[0]] and not shrunk[fg[0]]
    leak = target.copy()
    leak[10:20, 10:20, 30:38] = True
    fg, bg = simulate.corrections(leak, target, 3)
    assert len(bg) == 1 and not fg and leak[bg[0]] and not target[bg[0]]
    rng = np.random.default_rng(1)
    raw = np.random.default_rng(2).normal(0, 1, target.shape).astype(np.float32)
    guess = np.zeros_like(target)
    guess[15:25, 15:25, 15:25] = True
    x, y = simulate.sample(raw, target, guess, VOXEL_MM, rng, correcting=False)
    assert x.shape == (CHANNELS,) + target.shape and y.shape == (1,) + target.shape
    assert not x[3].any() and np.array_equal(x[4] > 0, guess)  # the first click refines the model-free guess
    x, y = simulate.sample(raw, target, guess, VOXEL_MM, rng, correcting=True)
    assert x[4].any() and (x[2] > 0.99).sum() + (x[3] > 0.99).sum() >= 2  # the first click and a correction
    x[4] = y[0]  # the augmentation moves inputs and target together
    for seed in range(4):
        xa, ya = simulate.augment(x.copy(), y.copy(), np.random.default_rng(seed))
        assert np.array_equal(xa[4], ya[0])


def _folder(tmp_path: Path) -> Path:
    """A labelled folder: one oblique, anisotropic case with the rim lesion of the session tests."""
    img, truth, _ = _scene(_grid(size=(56, 52, 20)))
    lab = sitk.GetImageFromArray(truth.astype(np.uint8))
    lab.CopyInformation(img)
    for sub, image in (("images", img), ("labels", lab)):
        (tmp_path / "data" / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(tmp_path / "data" / sub / "case_00.nii.gz"))
    return tmp_path / "data"


def test_training_cubes_are_centred_in_their_lesion(tmp_path):
    n = samples.build([_folder(tmp_path)], tmp_path / "cubes")
    assert n == 1 + samples.EXTRA_CLICKS
    raw, target, guess, voxel = samples.load(tmp_path / "cubes")
    assert raw.shape == (n,) + (SIZE,) * 3 and np.all(voxel == VOXEL_MM)
    c = SIZE // 2
    assert all(t[c - 1:c + 1, c - 1:c + 1, c - 1:c + 1].any() for t in target)
    dice = [2.0 * (g & t).sum() / (g.sum() + t.sum()) for g, t in zip(guess, target)]
    assert min(dice) > 0.6, dice  # the model-free answer to each click, on the cube
    assert samples.build([tmp_path / "data"], tmp_path / "cubes") == n  # done cases are kept


def _trained(tmp_path: Path) -> Path:
    folder = _folder(tmp_path)
    samples.build([folder], tmp_path / "cubes")
    train(tmp_path / "cubes", tmp_path / "cubes", tmp_path / "run", steps=2, batch=1, every=1)
    return tmp_path / "run"


def test_training_resumes_and_exports_a_verified_folder(tmp_path):
    run = _trained(tmp_path)
    state = train(tmp_path / "cubes", tmp_path / "cubes", run, steps=3, batch=1, every=1)
    assert state["step"] == 3 and [h["step"] for h in state["history"]] == [1, 2, 3]
    dest = export(run, tmp_path / "net")
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["grid"] == {"size": SIZE, "voxel_mm": VOXEL_MM} and manifest["training"]["steps"] == 3
    net = ClickNet(dest)
    img, _, c = _scene(_grid())
    crop, prob = net.probability(img, [tuple(c)])
    assert prob.shape == (SIZE,) * 3 and np.all((prob >= 0) & (prob <= 1))
    (dest / WEIGHTS).write_bytes((dest / WEIGHTS).read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelPackageError, match="sha256"):
        ClickNet(dest)


def test_a_folder_for_another_input_layout_is_refused(tmp_path):
    dest = export(_trained(tmp_path), tmp_path / "net")
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["grid"]["size"] = 32
    (dest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="another input layout"):
        ClickNet(dest)


class _Ball:
    """A stand-in estimator for the session's bookkeeping: P = 1 within 9 mm of the click, minus 4 mm
    around background clicks; records what it was asked."""

    def __init__(self):
        self.calls = []

    def probability(self, image, fg_lps, bg_lps=(), previous=None):
        self.calls.append((tuple(fg_lps), tuple(bg_lps), previous))
        crop = click_grid(image, fg_lps[0])
        prob = crop.ball([fg_lps[0]], 9.0) & ~crop.ball(list(bg_lps), 4.0)
        return crop, prob.astype(np.float32)


def test_the_estimator_refines_the_model_free_guess_of_the_first_lesion():
    img, truth, c = _scene(_grid(size=(120, 60, 24)))
    est = _Ball()
    session = InteractiveSession(img, estimator=est)
    first = session.add_click(tuple(c))
    _same_grid(first, img)
    assert _dice(first, truth) > 0.8
    (fg, bg, previous), = est.calls
    assert fg == (tuple(c),) and bg == ()
    free = InteractiveSession(img).add_click(tuple(c))  # the guess it refines: the model-free answer
    assert np.array_equal(sitk.GetArrayFromImage(previous), sitk.GetArrayFromImage(free))
    near = tuple(np.asarray(c) + np.asarray(img.GetDirection()).reshape(3, 3) @ np.array([2.0, 0.0, 0.0]))
    session.add_click(near)  # next to the result: moves the boundary, asks nothing
    assert len(est.calls) == 1
    far = tuple(np.asarray(c) + np.asarray(img.GetDirection()).reshape(3, 3) @ np.array([50.0, 0.0, 0.0]))
    second = session.add_click(far)  # a later lesion is grown model-free (the network learnt first clicks)
    assert len(est.calls) == 1
    assert sitk.GetArrayFromImage(second)[img.TransformPhysicalPointToIndex(far)[::-1]] == 1
    assert session.undo() is not second


def test_box_and_scribble_with_an_estimator():
    img, truth, c = _scene(_grid())
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    session = InteractiveSession(img, estimator=_Ball())
    a, b = tuple(c - d @ np.array([12.0, 12.0, 12.0])), tuple(c + d @ np.array([12.0, 12.0, 12.0]))
    assert _dice(session.set_box(a, b), truth) > 0.8
    session = InteractiveSession(img, estimator=_Ball())
    stroke = [tuple(c + d @ np.array([v, 0.0, 0.0])) for v in (-3.0, 0.0, 3.0)]
    assert _dice(session.add_scribble(stroke), truth) > 0.8


def test_interactive_session_falls_back_without_the_network(tmp_path):
    img, _, _ = _scene(_grid())
    assert interactive_session(img, folder=tmp_path / "none").estimator is None
    assert interactive_session(img, use_network=False).estimator is None


@pytest.mark.skipif(not (shipped_folder() / "manifest.json").is_file(), reason="no shipped click network")
def test_shipped_click_network_segments_a_rim_lesion_from_one_click():
    img, truth, c = _scene(_grid(size=(64, 60, 24)))
    session = interactive_session(img)
    assert session.estimator is not None
    assert _dice(session.add_click(tuple(c)), truth) >= 0.75


def test_a_small_lesion_with_an_edge_keeps_the_model_free_estimate():
    """The network's 2 mm grid is coarser than a small lesion: one whose edge the grower found stays model-free."""
    img = _grid(size=(60, 60, 30), spacing=(0.8, 0.8, 1.0))
    c = _centre(img)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in img.GetSize()[::-1]], indexing="ij")[::-1], -1)
    pts = np.asarray(img.GetOrigin()) + (idx * np.asarray(img.GetSpacing())) @ np.asarray(img.GetDirection()).reshape(3, 3).T
    truth = np.linalg.norm(pts - c, axis=-1) <= 5.0  # 0.5 mL
    arr = np.where(truth, 180.0, 100.0) + np.random.default_rng(3).normal(0.0, 5.0, truth.shape)
    image = sitk.GetImageFromArray(arr.astype(np.float32))
    image.CopyInformation(img)
    est = _Ball()
    with_net = InteractiveSession(image, estimator=est).add_click(tuple(c))
    free = InteractiveSession(image).add_click(tuple(c))
    assert not est.calls and np.array_equal(sitk.GetArrayFromImage(with_net), sitk.GetArrayFromImage(free))
    assert _dice(free, truth) > 0.7
