"""Hard-negative mining: false-positive lesions of a model on the training cases, and crops on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from model_factory import make_tiny_package  # noqa: E402

from tumorseg_core.augment_crop import HARD_KEY, RandForegroundCropd  # noqa: E402
from tumorseg_core.errors import InputError  # noqa: E402
from tumorseg_core.training.hard_negatives import (  # noqa: E402
    false_positive_coordinates,
    hard_negative_settings,
    mine_hard_negatives,
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
    from tumorseg_core.augment_crop import MAX_COORDS

    pred = np.zeros((40, 40, 40), dtype=np.uint8)
    pred[:30, :30, :30] = 1  # 27000 voxels
    pred[35, 35, 35] = 1
    coords = false_positive_coordinates(pred, np.zeros_like(pred))
    assert len(coords) <= MAX_COORDS + 1
    assert set(coords[:, 3].tolist()) == {1, 2}
    assert all(pred[tuple(r[:3])] for r in coords)


def test_settings_default_to_the_fine_tuned_model_and_reject_bad_values():
    assert hard_negative_settings(None, "default") is None
    assert hard_negative_settings(True, "default") == {"model": "default", "fraction": 0.25, "overlap": None}
    assert hard_negative_settings({"model": "m", "fraction": 1}, None)["model"] == "m"
    for bad, message in (({"fraction": 0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"fractoin": 0.2}, "unknown"),
                         ({"overlap": 1.0}, "overlap"), ("yes", "object"), ({}, "model to mine")):
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
    # No hard negatives, or a zero share: exactly the sampling of a run without mining.
    assert centres(0.0, True) == centres(0.0, False) == centres(0.5, False)
    share = centres(0.3, True, n=400)
    hits = sum(c in {(20, 21, 22), (25, 25, 25)} for c in share)
    assert 80 <= hits <= 160  # ~0.3 of 400
    with pytest.raises(ValueError, match="hard_fraction"):
        RandForegroundCropd(["image"], "label", (8, 8, 8), hard_fraction=2.0)


def _cached_cases(root: Path, n: int = 3):
    """n tiny cases on a 2 mm grid, cached like a training run of the tiny packages."""
    from tumorseg_core.datasets import Case
    from tumorseg_core.training.cache import PreprocessConfig, cache_cases

    cases = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = sitk.GetImageFromArray((100 + 30 * rng.standard_normal((20, 24, 28))).astype(np.float32))
        img.SetSpacing((2.0, 2.0, 2.0))
        lab = sitk.GetImageFromArray(np.zeros((20, 24, 28), dtype=np.uint8))
        lab.CopyInformation(img)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        sitk.WriteImage(img, str(root / "images" / f"c{i}.nii.gz"))
        sitk.WriteImage(lab, str(root / "labels" / f"c{i}.nii.gz"))
        cases.append(Case(f"c{i}", [root / "images" / f"c{i}.nii.gz"], root / "labels" / f"c{i}.nii.gz"))
    pre = PreprocessConfig((2.0, 2.0, 2.0), "LPS", (NORMALIZATION,), 1)
    return cache_cases(cases, pre, root / "cache" / "preprocessed"), pre


def test_mining_segments_each_case_like_the_model_and_caches_the_result(tmp_path, monkeypatch):
    from tumorseg_core.inference.predictor import Predictor
    from tumorseg_core.package import open_package
    from tumorseg_core.training.hard_negatives import false_positive_coordinates as fp_coords

    package = make_tiny_package(tmp_path / "pkg", seed=3)
    cached, pre = _cached_cases(tmp_path / "data")
    settings = {"model": str(package), "fraction": 0.5, "overlap": 0.25}
    mined = mine_hard_negatives(cached, settings, pre, tmp_path / "cache")
    predictor = Predictor.from_package(open_package(package), device="cpu", overlap=0.25)
    for case, coords in zip(cached, mined):
        arrays = case.load()
        pred = predictor.predict(np.asarray(arrays["image"]))
        assert pred.any(), "the random network should mark something on these cases"
        # The labels are empty, so every predicted lesion is a hard negative.
        np.testing.assert_array_equal(coords, fp_coords(pred, arrays["label"], seed=cached.index(case)))
    assert len(list((tmp_path / "cache" / "hard_negatives").glob("*.npy"))) == len(cached)

    def no_predictor(*args, **kwargs):
        raise AssertionError("cached mining results must not run the model again")

    monkeypatch.setattr(Predictor, "from_package", no_predictor)
    again = mine_hard_negatives(cached, settings, pre, tmp_path / "cache")
    assert all(np.array_equal(a, b) for a, b in zip(again, mined))
    # Other weights or another overlap are other results, never the cached ones.
    other = make_tiny_package(tmp_path / "other", seed=4)
    with pytest.raises(AssertionError, match="must not run"):
        mine_hard_negatives(cached, dict(settings, model=str(other)), pre, tmp_path / "cache")
    with pytest.raises(AssertionError, match="must not run"):
        mine_hard_negatives(cached, dict(settings, overlap=0.5), pre, tmp_path / "cache")


def test_a_mining_model_that_preprocesses_differently_is_refused(tmp_path):
    package = make_tiny_package(tmp_path / "pkg", spacing=(1.0, 1.0, 1.0))
    cached, pre = _cached_cases(tmp_path / "data", n=1)
    with pytest.raises(InputError, match="preprocesses differently"):
        mine_hard_negatives(cached, {"model": str(package), "fraction": 0.5, "overlap": None}, pre, tmp_path / "c")


def test_training_with_hard_negatives_mines_with_init_weights_and_writes_a_package(tmp_path):
    from tumorseg_core.train import train
    from tumorseg_core.training import distributed as dist_utils
    from tumorseg_core.training.setup import prepare_data

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
    out = train(config, tmp_path / "tuned")
    assert (Path(out) / "fold0.safetensors").is_file()
