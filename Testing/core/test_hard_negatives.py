"""Hard-negative mining: false-positive lesions of a model on the training cases, and crops on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from dataset_factory import write_labelled_case  # noqa: E402
from model_factory import make_tiny_package  # noqa: E402

from tumorseg_core.errors import InputError  # noqa: E402
from tumorseg_core.training.foreground_crop import HARD_KEY, RandForegroundCropd  # noqa: E402
from tumorseg_core.training.hard_negatives import (  # noqa: E402
    false_positive_coordinates,
    hard_coordinates,
    hard_negative_settings,
    mine_hard_negatives,
    missed_coordinates,
)

NORMALIZATION = {"type": "zscore", "nonzero": False}  # the tiny packages' normalization


def test_false_positives_are_predicted_lesions_that_touch_no_labelled_voxel():
    pred = np.zeros((10, 10, 10), dtype=np.uint8)
    truth = np.zeros_like(pred)
    truth[2:4, 2:4, 2:4] = 1
    pred[3:6, 3:6, 3:6] = 1  # overlaps the truth: found, not false
    pred[8, 8, 8] = 1  # a single-voxel false positive
    pred[0, 8, 0] = pred[1, 9, 1] = 1  # two voxels touching at a corner: one (26-connected) lesion
    coords = false_positive_coordinates(pred[None], truth[None])
    assert coords.dtype == np.int32 and coords.shape == (3, 4)
    assert {tuple(r[:3]) for r in coords} == {(8, 8, 8), (0, 8, 0), (1, 9, 1)}
    assert sorted(set(coords[:, 3].tolist())) == [1, 2]
    # Each lesion's rows carry one number, and no row lies on a found lesion.
    assert len({tuple(r[3:]) for r in coords if tuple(r[:3]) in {(0, 8, 0), (1, 9, 1)}}) == 1
    assert false_positive_coordinates(pred, np.ones_like(pred)).shape == (0, 4)
    assert false_positive_coordinates(np.zeros_like(pred), truth).shape == (0, 4)
    with pytest.raises(ValueError, match="shape"):
        false_positive_coordinates(pred, truth[:5])


def test_big_false_positives_are_subsampled_but_every_lesion_keeps_voxels():
    from tumorseg_core.training.foreground_crop import MAX_COORDS

    pred = np.zeros((40, 40, 40), dtype=np.uint8)
    pred[:30, :30, :30] = 1  # 27000 voxels
    pred[35, 35, 35] = 1
    coords = false_positive_coordinates(pred, np.zeros_like(pred))
    assert len(coords) <= MAX_COORDS + 1
    assert set(coords[:, 3].tolist()) == {1, 2}
    assert all(pred[tuple(r[:3])] for r in coords)


def test_missed_parts_of_poorly_found_lesions_are_hard_positives_one_number_per_lesion():
    truth = np.zeros((20, 20, 20), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[1:5, 1:5, 1:5] = 1  # 64 voxels, 60 found: recall 0.94, not poor at 0.8
    pred[1:5, 1:5, 1:5] = 1
    pred[1, 1, 1:5] = 0
    truth[8:12, 8:12, 8:12] = 1  # 64 voxels, a middle slab found (recall 0.25): missed in two pieces
    pred[9, 8:12, 8:12] = 1
    truth[16, 16, 16] = 1  # a one-voxel lesion, missed entirely
    pred[18, 2, 2] = 1  # a false positive
    coords = missed_coordinates(pred[None], truth[None], 0.8)
    assert coords.dtype == np.int32 and coords.shape == (48 + 1, 4)
    assert all(truth[tuple(r[:3])] and not pred[tuple(r[:3])] for r in coords)
    second = {tuple(r[:3]) for r in coords if r[3] == 1}
    assert len(second) == 48 and {z for z, _, _ in second} == {8, 10, 11}  # both pieces under one number
    assert {tuple(r[:3]) for r in coords if r[3] == 2} == {(16, 16, 16)}
    # At recall 0.95 the first lesion is poor too and comes first (the label's order).
    assert [int((missed_coordinates(pred, truth, 0.95)[:, 3] == n).sum()) for n in (1, 2, 3)] == [4, 48, 1]
    assert missed_coordinates(pred, np.zeros_like(truth), 0.8).shape == (0, 4)
    assert missed_coordinates(truth, truth, 1.0).shape == (0, 4)
    # Combined: false positives first (1..n), then the poorly found lesions numbered after them.
    both = hard_coordinates(pred, truth, 0.8)
    assert {tuple(r[:3]) for r in both if r[3] == 1} == {(18, 2, 2)}
    assert sorted(set(both[:, 3].tolist())) == [1, 2, 3] and int((both[:, 3] == 2).sum()) == 48
    assert np.array_equal(hard_coordinates(pred, truth, None), false_positive_coordinates(pred, truth))
    with pytest.raises(ValueError, match="shape"):
        missed_coordinates(pred, truth[:5], 0.8)


def test_settings_default_to_the_fine_tuned_model_and_reject_bad_values():
    assert hard_negative_settings(None, "default") is None
    assert hard_negative_settings(True, "default") == {"model": "default", "fraction": 0.25, "overlap": None,
                                                       "missed": None, "weights_sha256": None}
    assert hard_negative_settings({"missed": 1}, "default")["missed"] == 1
    assert hard_negative_settings({"model": "m", "fraction": 1}, None)["model"] == "m"
    for bad, message in (({"fraction": 0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"fractoin": 0.2}, "unknown"),
                         ({"overlap": 1.0}, "overlap"), ("yes", "object"), ({}, "model to mine"),
                         ({"model": 5}, "name, folder or zip"), ({"weights_sha256": "ab"}, "sha256"),
                         ({"missed": 0}, "missed"), ({"missed": True}, "missed"), ({"missed": 1.2}, "missed")):
        with pytest.raises(InputError, match=message):
            hard_negative_settings(bad, None if message == "model to mine" else "default")


def test_crops_centre_on_hard_negatives_at_the_configured_share_and_not_otherwise():
    image = np.zeros((1, 30, 30, 30), dtype=np.float32)
    label = np.zeros((1, 30, 30, 30), dtype=np.uint8)
    label[0, 5, 5, 5] = 1
    hard = np.array([[20, 21, 22, 1], [25, 25, 25, 2]], dtype=np.int32)

    def centres(fraction: float, with_hard: bool, n: int = 40) -> list[tuple[int, ...]]:
        crop = RandForegroundCropd(["image", "label"], "label", (8, 8, 8), pos=1.0, neg=1.0, hard_fraction=fraction)
        crop.set_random_state(seed=7)
        out = []
        for _ in range(n):
            data = {"image": image, "label": label}
            if with_hard:
                data[HARD_KEY] = hard
            result = crop(data)
            assert HARD_KEY not in result and result["image"].shape == (1, 8, 8, 8)
            out.append(crop.center)
        return out

    always = centres(1.0, True)
    assert set(always) == {(20, 21, 22), (25, 25, 25)}  # both lesions drawn
    # No hard negatives, or a zero share: exactly the pos/neg draws of a run without
    # mining, written out independently here (one draw for pos/neg, then the centre).
    rng = np.random.RandomState(7)
    reference = []
    for _ in range(40):
        if rng.random_sample() < 0.5:
            reference.append((5, 5, 5) if rng.randint(1) == 0 else None)
        else:
            reference.append(tuple(int(rng.randint(n)) for n in (30, 30, 30)))
    assert centres(0.0, True) == centres(0.0, False) == centres(0.5, False) == reference
    share = centres(0.3, True, n=400)
    hits = sum(c in {(20, 21, 22), (25, 25, 25)} for c in share)
    assert 80 <= hits <= 160  # ~0.3 of 400
    with pytest.raises(ValueError, match="hard_fraction"):
        RandForegroundCropd(["image"], "label", (8, 8, 8), hard_fraction=2.0)


def _cached_cases(root: Path, n: int = 3):
    """n tiny cases on a 2 mm grid, cached like a training run of the tiny packages."""
    from tumorseg_core.training.cache import PreprocessConfig, cache_cases
    from tumorseg_core.training.datasets import Case

    cases = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = sitk.GetImageFromArray((100 + 30 * rng.standard_normal((20, 24, 28))).astype(np.float32))
        img.SetSpacing((2.0, 2.0, 2.0))
        label = np.zeros((20, 24, 28), dtype=np.uint8)
        if i == 0:
            label[:, :12] = 1  # half of this case is "tumour": predictions there are not false
        image_path, label_path = write_labelled_case(root, f"c{i}", img, sitk.GetImageFromArray(label))
        cases.append(Case(f"c{i}", [image_path], label_path))
    pre = PreprocessConfig((2.0, 2.0, 2.0), "LPS", (NORMALIZATION,), 1)
    return cache_cases(cases, pre, root / "cache" / "preprocessed"), pre


def _false_lesions(pred: np.ndarray, label: np.ndarray) -> list[set]:
    """Voxel sets of the 26-connected predicted lesions that touch no label voxel."""
    from scipy import ndimage

    components, n = ndimage.label(pred > 0, structure=np.ones((3, 3, 3), dtype=bool))
    out = []
    for k in range(1, n + 1):
        mask = components == k
        if not (mask & (label > 0)).any():
            out.append(set(map(tuple, np.argwhere(mask).tolist())))
    return out


def test_mining_segments_each_case_like_the_model_and_caches_the_result(tmp_path, monkeypatch):
    from tumorseg_core.imaging.postprocess import postprocess_labels
    from tumorseg_core.inference.predictor import Predictor
    from tumorseg_core.training.hard_negatives import open_mining_model

    rule = [{"label": 1, "min_volume_mm3": 40.0}]  # 5 voxels of 8 mm³
    package_dir = make_tiny_package(tmp_path / "pkg", seed=3, postprocessing=rule)
    cached, pre = _cached_cases(tmp_path / "data")
    settings = {"model": str(package_dir), "fraction": 0.5, "overlap": 0.25, "weights_sha256": None}
    package = open_mining_model(settings, pre)
    mined = mine_hard_negatives(cached, settings, package, tmp_path / "cache")
    predictor = Predictor.from_package(package, device="cpu", overlap=0.25, tta=False)
    for case, coords in zip(cached, mined):
        arrays = case.load()
        pred = postprocess_labels(predictor.predict(np.asarray(arrays["image"])), (2.0, 2.0, 2.0), rule)
        assert pred.any(), "the random network should mark something on these cases"
        lesions = _false_lesions(pred, arrays["label"][0])
        if case is cached[0]:  # the labelled case: predictions on its label are not hard negatives
            assert len(lesions) < len(_false_lesions(pred, np.zeros_like(pred)))
        # Every false lesion is there, each under one number, and nothing else.
        assert len(set(coords[:, 3].tolist())) == len(lesions)
        for number in set(coords[:, 3].tolist()):
            rows = {tuple(r) for r in coords[coords[:, 3] == number][:, :3].tolist()}
            assert sum(rows <= lesion for lesion in lesions) == 1
    assert len(list((tmp_path / "cache" / "hard_negatives").glob("*.npy"))) == len(cached)
    # The result of a case does not depend on its place in the list (nor on who mined it).
    shuffled = mine_hard_negatives(cached[::-1], settings, package, tmp_path / "cache2")
    assert all(np.array_equal(a, b) for a, b in zip(shuffled[::-1], mined))
    halves = [mine_hard_negatives(cached, settings, package, tmp_path / "cache3", share=(r, 2)) for r in (0, 1)]
    assert [len(h) for h in halves] == [2, 1]

    def no_predictor(*args, **kwargs):
        raise AssertionError("cached mining results must not run the model again")

    monkeypatch.setattr(Predictor, "from_package", no_predictor)
    for cache in ("cache", "cache3"):
        again = mine_hard_negatives(cached, settings, package, tmp_path / cache)
        assert all(np.array_equal(a, b) for a, b in zip(again, mined))
    # Other weights or another overlap are other results, never the cached ones.
    other = open_mining_model(dict(settings, model=str(make_tiny_package(tmp_path / "other", seed=4,
                                                                         postprocessing=rule))), pre)
    with pytest.raises(AssertionError, match="must not run"):
        mine_hard_negatives(cached, settings, other, tmp_path / "cache")
    with pytest.raises(AssertionError, match="must not run"):
        mine_hard_negatives(cached, dict(settings, overlap=0.5), package, tmp_path / "cache")
    with pytest.raises(AssertionError, match="must not run"):
        mine_hard_negatives(cached, dict(settings, missed=0.8), package, tmp_path / "cache")


def test_a_mining_model_that_preprocesses_differently_is_refused(tmp_path):
    from tumorseg_core.training.hard_negatives import open_mining_model, weight_digests

    package = make_tiny_package(tmp_path / "pkg", spacing=(1.0, 1.0, 1.0))
    _, pre = _cached_cases(tmp_path / "data", n=1)
    with pytest.raises(InputError, match="preprocesses differently"):
        open_mining_model({"model": str(package), "weights_sha256": None}, pre)
    # Pinned weights (a run's record of what mined) must still be the model's.
    good = make_tiny_package(tmp_path / "good")
    digests = weight_digests(open_mining_model({"model": str(good)}, pre))
    assert open_mining_model({"model": str(good), "weights_sha256": digests}, pre) is not None
    with pytest.raises(InputError, match="other weights"):
        open_mining_model({"model": str(good), "weights_sha256": ["0" * 64]}, pre)


def test_training_with_hard_negatives_mines_with_init_weights_and_writes_a_package(tmp_path):
    from tumorseg_core.training import distributed as dist_utils
    from tumorseg_core.training.setup import prepare_data
    from tumorseg_core.training.trainer import train

    package = make_tiny_package(tmp_path / "pkg", seed=3)
    _cached_cases(tmp_path / "data")
    config = {
        "data": str(tmp_path / "data"), "architecture": "unet3d", "kwargs": {"features": [2, 4], "norm": "none"},
        "inputs": [{"modality": "MRI", "normalization": NORMALIZATION}], "spacing": [2.0, 2.0, 2.0],
        "patch_size": [16, 16, 16], "epochs": 1, "iterations_per_epoch": 2, "batch_size": 1, "val_fraction": 0.34,
        "device": "cpu", "seed": 1, "init_weights": str(package), "hard_negatives": {"fraction": 1.0},
        "workdir": str(tmp_path / "work"),
    }
    from tumorseg_core.training.config import merge_config

    run = prepare_data(merge_config(config, {}), tmp_path / "work", dist_utils.DistInfo())
    hard = run.patches.hard_coords
    assert hard is not None and len(hard) == len(run.train_cases) and any(len(h) for h in hard)
    # The run records what mined (model resolved, weights pinned): the resume hash covers it.
    assert run.config["hard_negatives"]["model"] == str(package)
    assert len(run.config["hard_negatives"]["weights_sha256"]) == 1
    out = train(config, tmp_path / "tuned")
    assert (Path(out) / "fold0.safetensors").is_file()
    # Other weights behind the same model path: resuming that run is refused.
    make_tiny_package(tmp_path / "pkg2", seed=5)
    for f in ("fold0.safetensors", "manifest.json"):
        (Path(package) / f).write_bytes((tmp_path / "pkg2" / f).read_bytes())
    with pytest.raises(InputError, match="different training configuration"):
        train(dict(config, epochs=2), tmp_path / "tuned2")
