"""Training augmentation: shapes, label integrity, determinism, foreground oversampling."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("monai")

from tumorseg_core.errors import InputError  # noqa: E402
from tumorseg_core.training.augment import (  # noqa: E402
    DEFAULT_AUGMENT,
    _crop_size_zyx,
    augment_config,
    build_train_transforms,
)


def _case(shape=(20, 40, 36), channels=2, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros((1, *shape), np.uint8)
    label[0, 12:16, 5:10, 30:34] = 1  # small lesion near a corner
    label[0, 13:15, 6:8, 31:33] = 2
    image = rng.standard_normal((channels, *shape)).astype(np.float32) + 3 * label
    return {"image": image, "label": label}


def _run(transforms, data, seed):
    transforms.set_random_state(seed=seed)
    out = transforms({k: v.copy() for k, v in data.items()})
    assert isinstance(out, dict) and set(out) == {"image", "label"}
    return out


def test_output_shapes_and_labels_survive_all_augmentations():
    cfg = {k: (1.0 if k.endswith("_prob") else v) for k, v in DEFAULT_AUGMENT.items()}
    cfg["elastic_prob"] = 1.0
    cfg["elastic_magnitude"] = [0.0, 50.0]
    t = build_train_transforms((16, 24, 24), cfg)
    data = _case()
    for seed in range(3):
        out = _run(t, data, seed)
        assert tuple(out["image"].shape) == (2, 16, 24, 24)
        assert tuple(out["label"].shape) == (1, 16, 24, 24)
        assert str(out["image"].dtype) == "torch.float32"
        values = set(np.unique(np.asarray(out["label"])).tolist())
        assert values <= {0.0, 1.0, 2.0}  # nearest-neighbour: no blended label values
        assert np.isfinite(np.asarray(out["image"])).all()


def test_small_case_is_padded_to_the_patch():
    t = build_train_transforms((32, 32, 32), {"rotation_prob": 0.0, "scale_prob": 0.0})
    out = _run(t, _case(shape=(10, 12, 14)), 1)
    assert tuple(out["image"].shape) == (2, 32, 32, 32)


def test_same_seed_same_patch_different_seed_different_patch():
    t = build_train_transforms((16, 16, 16), None)
    data = _case()
    a, b, c = _run(t, data, 7), _run(t, data, 7), _run(t, data, 8)
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(c["image"]))


def test_foreground_oversampling_centres_crops_on_the_lesion():
    # pos only, no spatial/intensity change: every crop must contain lesion voxels,
    # although the lesion fills < 0.5 % of the case.
    cfg = {k: (0.0 if k.endswith("_prob") else v) for k, v in DEFAULT_AUGMENT.items()}
    cfg.update(pos=1.0, neg=0.0)
    t = build_train_transforms((8, 8, 8), cfg)
    data = _case()
    hits = [np.asarray(_run(t, data, s)["label"]).any() for s in range(10)]
    assert all(hits)
    cfg.update(pos=0.0, neg=1.0)
    t = build_train_transforms((8, 8, 8), cfg)
    hits = [np.asarray(_run(t, data, s)["label"]).any() for s in range(10)]
    assert not all(hits)


def test_foreground_crop_matches_monai_pad_and_crop():
    """RandForegroundCropd = SpatialPadd + RandCropByPosNegLabeld: padding is symmetric like
    SpatialPad's, a crop lies inside the case and holds its centre voxel, and precomputed
    coordinates give the same crops as scanning the label."""
    import monai.transforms as mt

    from tumorseg_core.training.foreground_crop import COORDS_KEY, RandForegroundCropd, foreground_coordinates

    data = _case(shape=(20, 40, 36))
    crop = RandForegroundCropd(["image", "label"], "label", (33, 24, 24), pos=1.0, neg=0.0)
    theirs = mt.SpatialPad((33, 40, 36))(data["image"])  # z is shorter than the crop: padded only
    for seed in range(6):
        crop.set_random_state(seed)
        out = crop(dict(data))
        assert out["label"].any()  # centred on a lesion voxel
        z, y, x = crop.center
        assert 0 <= y - crop_y(crop, 40, 24) < 24 and 0 <= x - crop_y(crop, 36, 24, axis=2) < 24
        y0, x0 = crop_y(crop, 40, 24), crop_y(crop, 36, 24, axis=2)
        np.testing.assert_array_equal(out["image"], np.asarray(theirs)[:, :, y0:y0 + 24, x0:x0 + 24])
        crop.set_random_state(seed)
        again = crop({**data, COORDS_KEY: foreground_coordinates(data["label"])})
        assert COORDS_KEY not in again
        np.testing.assert_array_equal(again["image"], out["image"])


def crop_y(crop, dim: int, size: int, axis: int = 1) -> int:
    from tumorseg_core.training.foreground_crop import crop_start

    return crop_start(crop.center[axis], dim, size)


def test_foreground_coordinates_are_bounded_and_exact():
    from tumorseg_core.training.foreground_crop import MAX_COORDS, foreground_coordinates

    label = np.zeros((1, 30, 30, 30), np.uint8)
    label[0, 2:22, 2:22, 2:22] = 1  # 8000 voxels
    coords = foreground_coordinates(label)
    assert coords.shape == (MAX_COORDS, 3) and coords.dtype == np.int32
    assert label[0][tuple(coords.T)].all()
    assert foreground_coordinates(np.zeros((1, 5, 5, 5), np.uint8)).shape == (0, 3)


def test_crop_is_enlarged_for_rotation_and_scaling_only():
    cfg = augment_config(None)
    assert all(c > p for c, p in zip(_crop_size_zyx((32, 32, 32), cfg), (32, 32, 32)))
    cfg.update(rotation_prob=0.0, scale_prob=0.0)
    assert _crop_size_zyx((32, 32, 32), cfg) == [32, 32, 32]


def test_bad_settings_are_user_errors():
    with pytest.raises(InputError, match="unknown augmentation"):
        augment_config({"rotate": 1})
    with pytest.raises(InputError, match="probability"):
        augment_config({"flip_prob": 2})


def test_per_lesion_sampling_centres_small_lesions_as_often_as_big_ones():
    """fg_sampling "lesion": every lesion keeps coordinates (a random 4096-voxel subset of
    a 27000-voxel lesion would leave a 27-voxel one ~4 of them) and foreground crops pick
    lesions uniformly; "voxel" keeps RandCropByPosNegLabeld's voxel-weighted draw."""
    from tumorseg_core.training.foreground_crop import MAX_COORDS, RandForegroundCropd, foreground_coordinates

    label = np.zeros((1, 48, 48, 48), np.uint8)
    label[0, 2:32, 2:32, 2:32] = 1  # big lesion: 27000 voxels
    label[0, 40:43, 40:43, 40:43] = 1  # small lesion: 27 voxels
    coords = foreground_coordinates(label, seed=0, per_lesion=True)
    assert coords.shape[1] == 4 and len(coords) <= MAX_COORDS + 2
    assert sorted(np.unique(coords[:, 3]).tolist()) == [1, 2]
    small_id = int(coords[(coords[:, 0] == 40) & (coords[:, 1] == 40) & (coords[:, 2] == 40), 3][0])
    assert np.sum(coords[:, 3] == small_id) == 27  # all of the small lesion is kept
    assert all(label[0, z, y, x] for z, y, x in coords[:, :3])

    def small_share(per_lesion: bool) -> float:
        crop = RandForegroundCropd(["label"], "label", (8, 8, 8), pos=1.0, neg=0.0, per_lesion=per_lesion)
        data = {"label": label}
        hits = 0
        for seed in range(400):
            crop.set_random_state(seed)
            crop(dict(data))
            hits += min(crop.center) >= 40
        return hits / 400

    assert 0.4 < small_share(True) < 0.6
    assert small_share(False) < 0.02
    with pytest.raises(ValueError, match="per_lesion=True"):
        bad = RandForegroundCropd(["label"], "label", (8, 8, 8), pos=1.0, neg=0.0, per_lesion=True)
        bad({"label": label, "fg_coords": foreground_coordinates(label)})
    assert foreground_coordinates(np.zeros((4, 4, 4)), per_lesion=True).shape == (0, 4)


def test_fg_sampling_setting_is_checked():
    with pytest.raises(InputError, match="fg_sampling"):
        augment_config({"fg_sampling": "component"})
    assert augment_config({"fg_sampling": "lesion"})["fg_sampling"] == "lesion"
