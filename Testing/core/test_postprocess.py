"""Per-label clean-up: small components, largest component, 3D holes."""

from __future__ import annotations

import numpy as np
import pytest

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.postprocess import connected_components, hole_mask, postprocess_labels


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
