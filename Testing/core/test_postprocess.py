"""Per-label clean-up: small components, largest component, 3D holes."""

from __future__ import annotations

import numpy as np
import pytest

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.imaging.postprocess import (
    connected_components,
    hole_mask,
    keep_largest_component,
    mask_bbox,
    postprocess_labels,
    remove_small_components,
)


def _scene() -> np.ndarray:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:10, 2:10, 2:10] = 1  # big component: 512 voxels
    labels[15:17, 15:17, 15:17] = 1  # small: 8 voxels
    labels[12:14, 2:4, 2:4] = 2  # another label touching nothing
    return labels


def test_min_volume_uses_spacing():
    labels = _scene()
    # 8 voxels of 1 mm3 = 8 mm3 < 20 -> removed
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), [{"label": 1, "min_volume_mm3": 20}])
    assert out[16, 16, 16] == 0 and out[5, 5, 5] == 1 and out.dtype == np.uint8
    # 8 voxels of 2x2x2 mm = 64 mm3 >= 20 -> kept
    out = postprocess_labels(labels, (2.0, 2.0, 2.0), [{"label": 1, "min_volume_mm3": 20}])
    assert out[16, 16, 16] == 1
    assert np.array_equal(out == 2, labels == 2)
    assert np.array_equal(labels, _scene()), "input must not be modified"


def test_keep_largest_and_face_connectivity():
    labels = _scene()
    labels[10, 10, 10] = 1  # touches the big cube only at a corner: separate component
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), [{"label": 1, "keep_largest": True}])
    assert out[16, 16, 16] == 0 and out[10, 10, 10] == 0 and (out == 1).sum() == 512
    assert np.array_equal(out == 2, labels == 2)
    _, sizes = connected_components(labels == 1)
    assert sorted(sizes[1:].tolist()) == [1, 8, 512]


def test_fill_holes_in_3d_only_enclosed_background():
    labels = np.zeros((16, 16, 16), dtype=np.uint8)
    labels[2:12, 2:12, 2:12] = 1
    labels[5:8, 5:8, 5:8] = 0  # enclosed cavity -> hole
    labels[6, 6, 6] = 2  # nested other label inside the cavity
    labels[4:7, 0:12, 9] = 0  # a tunnel open to the border -> not a hole
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), [{"label": 1, "fill_holes": True}])
    assert out[5, 5, 5] == 1 and out[7, 7, 7] == 1
    assert out[6, 6, 6] == 2, "other labels inside a hole are kept"
    assert np.all(out[4:7, 0:12, 9] == 0), "background touching the border is not a hole"
    # A 2D-only hole (closed in-plane, open along z) is not a 3D hole.
    tube = np.zeros((10, 10, 10), dtype=np.uint8)
    tube[:, 2:8, 2:8] = 1
    tube[:, 4:6, 4:6] = 0
    assert not hole_mask(tube == 1).any()
    assert np.array_equal(postprocess_labels(tube, (1, 1, 1), [{"label": 1, "fill_holes": True}]), tube)


def test_rules_apply_in_order_and_leave_other_labels():
    labels = _scene()
    labels[4:6, 4:6, 4:6] = 0  # hole in label 1
    rules = [{"label": 2, "min_volume_mm3": 100}, {"label": 1, "fill_holes": True, "keep_largest": False,
                                                   "min_volume_mm3": 20}]
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), rules)
    assert (out == 2).sum() == 0  # 8 mm3 < 100
    assert out[4, 4, 4] == 1 and out[16, 16, 16] == 0
    assert np.array_equal(postprocess_labels(labels, (1, 1, 1), []), labels)
    # A rule for a label that is absent changes nothing.
    assert np.array_equal(postprocess_labels(labels, (1, 1, 1), [{"label": 7, "fill_holes": True}]), labels)


@pytest.mark.parametrize(
    "rule, match",
    [
        ({"min_volume_mm3": 5}, "label"),
        ({"label": 1, "largest": True}, "unknown keys"),
        ({"label": 0}, "1..255"),
        ({"label": 1, "min_volume_mm3": -1}, "min_volume"),
    ],
)
def test_bad_rules_raise(rule, match):
    with pytest.raises(ModelPackageError, match=match):
        postprocess_labels(_scene(), (1, 1, 1), [rule])


def _full_volume_rules(labels, spacing_xyz, rules):
    """The rules applied on the whole array (the reference the bounding-box version must equal)."""
    out = labels.copy()
    voxel = float(np.prod(spacing_xyz))
    for rule in rules:
        label = rule["label"]
        mask = out == label
        kept = remove_small_components(mask, rule.get("min_volume_mm3", 0) / voxel)
        if rule.get("keep_largest") and kept.any():
            kept = keep_largest_component(kept)
        out[mask & ~kept] = 0
        if rule.get("fill_holes") and kept.any():
            out[hole_mask(kept) & (out == 0)] = label
    return out


@pytest.mark.parametrize("seed", range(12))
def test_bounding_box_processing_equals_the_whole_volume(seed):
    """Rules run on each label's bounding box; the result must be the whole-volume one,
    also for labels touching the array border and for hollow shells (holes)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(12, 30, size=3))
    labels = np.zeros(shape, dtype=np.uint8)
    for _ in range(int(rng.integers(1, 6))):  # blobs of labels 1-2, some hollow, some at the border
        lo = [int(rng.integers(-3, n - 3)) for n in shape]
        size = [int(rng.integers(2, 9)) for _ in shape]
        box = tuple(slice(max(0, a), max(0, a + b)) for a, b in zip(lo, size))
        value = int(rng.integers(1, 3))
        labels[box] = value
        if rng.uniform() < 0.5 and min(b.stop - b.start for b in box) >= 3:
            inner = tuple(slice(b.start + 1, b.stop - 1) for b in box)
            labels[inner] = 0 if rng.uniform() < 0.7 else 3 - value
    labels[rng.uniform(size=shape) < 0.01] = 1  # specks
    rules = [{"label": 1, "min_volume_mm3": float(rng.integers(0, 20)), "fill_holes": True,
              "keep_largest": bool(rng.uniform() < 0.3)},
             {"label": 2, "min_volume_mm3": 4.0, "fill_holes": bool(rng.uniform() < 0.5)}]
    spacing = (1.0, 0.5, 2.0)
    np.testing.assert_array_equal(postprocess_labels(labels, spacing, rules), _full_volume_rules(labels, spacing, rules))


def test_mask_bbox():
    mask = np.zeros((5, 6, 7), dtype=bool)
    assert mask_bbox(mask) is None
    mask[1, 2, 3] = mask[3, 4, 6] = True
    assert mask_bbox(mask) == (slice(1, 4), slice(2, 5), slice(3, 7))
