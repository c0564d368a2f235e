"""Training data sources, splits, the preprocessing cache and the patch dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.training import cache as cache_mod
from tumorseg_core.training import datasets
from tumorseg_core.training.cache import PreprocessConfig, cache_case
from tumorseg_core.training.datasets import Case, kfold, load_csv, load_dataset, load_msd, split_cases
from tumorseg_core.training.synthetic_data import synthetic_cases

SHAPE_ZYX = (12, 14, 16)


def _volume(seed: int, value_offset: float = 0.0) -> tuple[sitk.Image, sitk.Image]:
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE_ZYX, np.uint8)
    label[4:8, 5:9, 6:10] = 1
    image = (rng.normal(100, 10, SHAPE_ZYX) + 50 * label + value_offset).astype(np.float32)
    img = sitk.GetImageFromArray(image)
    img.SetSpacing((1.0, 1.0, 2.0))
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(img)
    return img, lab


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _config(channels: int = 1, max_label: int = 1) -> PreprocessConfig:
    return PreprocessConfig((2.0, 2.0, 2.0), "LPS", tuple({"type": "zscore"} for _ in range(channels)), max_label)


def test_msd_layout_splits_4d_image_into_channels(tmp_path):
    root = tmp_path / "Task01_Test"
    entries = []
    for i in range(2):
        ch = [_volume(i, 0)[0], _volume(i, 1000)[0]]
        four_d = sitk.JoinSeries(ch)  # (x, y, z, 2) like BRATS_001.nii.gz
        _write(four_d, root / "imagesTr" / f"case_{i}.nii.gz")
        _write(_volume(i)[1], root / "labelsTr" / f"case_{i}.nii.gz")
        entries.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Test", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema"}, "training": entries,
    }))
    source = load_msd(root)
    assert [c.id for c in source.cases] == ["case_0", "case_1"]
    assert source.modalities == ["FLAIR", "T1w"] and source.labels == {1: "edema"}
    assert load_dataset(root / "dataset.json").cases == source.cases

    cached = cache_case(source.cases[0], _config(channels=2), tmp_path / "cache")
    arrays = cached.load()
    assert arrays["image"].shape[0] == 2 and arrays["image"].dtype == np.float32
    assert arrays["label"].shape == (1, *arrays["image"].shape[1:]) and arrays["label"].dtype == np.uint8
    # 1 x 1 x 2 mm -> 2 mm: x and y halve, z stays
    assert arrays["image"].shape[1:] == (12, 7, 8)
    assert arrays["label"].max() == 1
    # each channel is z-scored on its own: the +1000 offset of channel 1 is gone
    assert abs(float(arrays["image"][1].mean())) < 1e-3
    with pytest.raises(InputError, match="channel"):
        cache_case(source.cases[0], _config(channels=1), tmp_path / "cache")


def test_paired_folders_nnunet_channels_and_flat_pairs(tmp_path):
    a = tmp_path / "a"
    for i in range(3):
        img, lab = _volume(i)
        _write(img, a / "images" / f"p{i}.nii.gz")
        _write(lab, a / "labels" / f"p{i}.nii.gz")
    assert [(c.id, len(c.images)) for c in load_dataset(a).cases] == [("p0", 1), ("p1", 1), ("p2", 1)]

    b = tmp_path / "b"
    for i in range(2):
        img, lab = _volume(i)
        _write(img, b / "imagesTr" / f"case{i}_0000.nii.gz")
        _write(img, b / "imagesTr" / f"case{i}_0001.nii.gz")
        _write(lab, b / "labelsTr" / f"case{i}.nii.gz")
    cases = load_dataset(b).cases
    assert [c.id for c in cases] == ["case0", "case1"]
    assert [p.name for p in cases[0].images] == ["case0_0000.nii.gz", "case0_0001.nii.gz"]

    c = tmp_path / "c"
    img, lab = _volume(0)
    _write(img, c / "x_image.nii.gz")
    _write(lab, c / "x_label.nii.gz")
    _write(img, c / "y_image_0000.nii.gz")
    _write(img, c / "y_image_0001.nii.gz")
    _write(lab, c / "y_label.nii.gz")
    flat = {case.id: len(case.images) for case in load_dataset(c).cases}
    assert flat == {"x": 1, "y": 2}

    _write(img, a / "images" / "orphan.nii.gz")
    with pytest.raises(InputError, match="no label"):
        load_dataset(a)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no training cases"):
        load_dataset(tmp_path / "empty")


def test_csv_list_with_two_channels_and_relative_paths(tmp_path):
    img, lab = _volume(0)
    _write(img, tmp_path / "data" / "t1.nii.gz")
    _write(img, tmp_path / "data" / "t2.nii.gz")
    _write(lab, tmp_path / "data" / "seg.nii.gz")
    (tmp_path / "list.csv").write_text("id,image,image2,label\nmine,data/t1.nii.gz,data/t2.nii.gz,data/seg.nii.gz\n")
    (case,) = load_csv(tmp_path / "list.csv").cases
    assert case.id == "mine"
    assert [p.name for p in case.images] == ["t1.nii.gz", "t2.nii.gz"]
    assert case.label == (tmp_path / "data" / "seg.nii.gz").resolve()
    (tmp_path / "bad.csv").write_text("image,label\ndata/missing.nii.gz,data/seg.nii.gz\n")
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "bad.csv")


def _cases(n: int) -> list[Case]:
    return [Case(f"c{i:02d}", [Path(f"/x/c{i}.nii.gz")], Path(f"/x/c{i}_l.nii.gz")) for i in range(n)]


def test_split_is_deterministic_disjoint_and_order_independent():
    cases = _cases(10)
    train, val = split_cases(cases, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert {c.id for c in train}.isdisjoint({c.id for c in val})
    again = split_cases(list(reversed(cases)), 0.2, seed=3)
    assert [c.id for c in again[1]] == [c.id for c in val]
    other_seeds = {tuple(c.id for c in split_cases(cases, 0.2, seed=s)[1]) for s in range(4, 10)}
    assert len(other_seeds) > 1  # the seed matters
    assert split_cases(cases, 0.0, seed=0)[1] == []
    with pytest.raises(InputError):
        split_cases(cases, 1.0, seed=0)


def test_kfold_covers_every_case_once():
    cases = _cases(11)
    seen = []
    for fold in range(5):
        train, val = kfold(cases, 5, fold, seed=1)
        assert len(train) + len(val) == 11
        assert {c.id for c in train}.isdisjoint({c.id for c in val})
        seen += [c.id for c in val]
        assert [c.id for c in kfold(cases, 5, fold, seed=1)[1]] == [c.id for c in val]
    assert sorted(seen) == sorted(c.id for c in cases)
    with pytest.raises(InputError):
        kfold(cases, 5, 5, seed=1)
    with pytest.raises(InputError):
        kfold(cases[:3], 5, 0, seed=1)


def test_cache_hit_on_second_load_and_miss_after_change(tmp_path, monkeypatch):
    img, lab = _volume(0)
    case = Case("c", [_write(img, tmp_path / "c.nii.gz")], _write(lab, tmp_path / "c_l.nii.gz"))
    first = cache_case(case, _config(), tmp_path / "cache")
    calls = []
    real = cache_mod.preprocess_case
    monkeypatch.setattr(cache_mod, "preprocess_case", lambda *a: calls.append(a) or real(*a))
    second = cache_case(case, _config(), tmp_path / "cache")
    assert second == first and calls == []
    np.testing.assert_array_equal(np.load(second.image, allow_pickle=False), first.load()["image"])
    # A different spacing is a different entry ...
    cache_case(case, PreprocessConfig((1.0, 1.0, 2.0), "LPS", ({"type": "zscore"},), 1), tmp_path / "cache")
    assert len(calls) == 1
    # ... and so is an edited file.
    st = os.stat(case.images[0])
    os.utime(case.images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = cache_case(case, _config(), tmp_path / "cache")
    assert len(calls) == 2 and third.image != first.image


def test_unexpected_label_values_are_a_user_error(tmp_path):
    img, lab = _volume(0)
    lab = sitk.Cast(lab * 3, sitk.sitkUInt8)
    case = Case("c", [_write(img, tmp_path / "c.nii.gz")], _write(lab, tmp_path / "c_l.nii.gz"))
    with pytest.raises(InputError, match="output labels"):
        cache_case(case, _config(max_label=1), tmp_path / "cache")


def test_patch_dataset_is_a_function_of_seed_epoch_index(tmp_path):
    pytest.importorskip("monai")
    from tumorseg_core.training.augment import build_train_transforms
    from tumorseg_core.training.patches import PatchDataset

    cached = []
    for i in range(2):
        img, lab = _volume(i)
        case = Case(f"c{i}", [_write(img, tmp_path / f"c{i}.nii.gz")], _write(lab, tmp_path / f"c{i}_l.nii.gz"))
        cached.append(cache_case(case, _config(), tmp_path / "cache"))
    ds = PatchDataset(cached, build_train_transforms((8, 8, 8), None), length=4, seed=5)
    a = [ds[i]["image"] for i in range(4)]
    ds2 = PatchDataset(cached, build_train_transforms((8, 8, 8), None), length=4, seed=5)
    for i in (3, 0, 2):  # any order, fresh transforms: same samples
        np.testing.assert_array_equal(ds2[i]["image"].numpy(), a[i].numpy())
    ds2.set_epoch(1)
    assert not np.array_equal(ds2[0]["image"].numpy(), a[0].numpy())
    assert tuple(a[0].shape) == (1, 8, 8, 8)


def test_synthetic_cases_are_varied_and_generated_once(tmp_path):
    synthetic = pytest.importorskip("tumorseg_core.synthetic")
    if not hasattr(synthetic, "make_phantom"):
        pytest.skip("tumorseg_core.synthetic.make_phantom is not available yet")
    options = {"fov_mm": [30.0, 50.0], "max_size": 24, "min_size": 12}
    cases = synthetic_cases(6, 0, options, tmp_path)
    assert len(cases) == 6 and all(c.label.is_file() and c.images[0].is_file() for c in cases)
    meta = json.loads((cases[0].label.parent.parent / "phantoms.json").read_text())
    spacings = {tuple(c["spacing_xyz"]) for c in meta["cases"]}
    assert len(spacings) == 6 and all(0.5 <= s <= 5.0 for sp in spacings for s in sp)
    img = sitk.ReadImage(str(cases[0].images[0]))
    assert list(img.GetSpacing()) == pytest.approx(meta["cases"][0]["spacing_xyz"], rel=1e-3)
    mtime = cases[0].images[0].stat().st_mtime_ns
    again = synthetic_cases(6, 0, options, tmp_path)
    assert again == cases and cases[0].images[0].stat().st_mtime_ns == mtime
    with pytest.raises(InputError, match="unknown synthetic option"):
        synthetic_cases(2, 0, {"nope": 1}, tmp_path)
    assert not hasattr(datasets, "synthetic_cases")  # one home: training.synthetic_data
