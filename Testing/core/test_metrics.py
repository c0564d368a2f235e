"""tumorseg_core.evaluation.metrics against values computed by hand (arrays are (z, y, x), spacing x, y, z)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from tumorseg_core.errors import InputError
from tumorseg_core.evaluation import metrics


def box(shape, z, y, x):
    """Bool array of ``shape`` with the half-open box z=(z0, z1), y=(y0, y1), x=(x0, x1) set."""
    out = np.zeros(shape, dtype=bool)
    out[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return out


def test_confusion_ratios_on_tiny_arrays():
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool).reshape(1, 1, 10)
    truth = np.array([0, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool).reshape(1, 1, 10)
    # TP = 2 (x=1,2), FP = 1 (x=0), FN = 2 (x=3,4), TN = 5
    assert metrics.confusion(pred, truth) == (2, 1, 2, 5)
    assert metrics.dice(pred, truth) == pytest.approx(4 / 7)
    assert metrics.sensitivity(pred, truth) == pytest.approx(2 / 4)
    assert metrics.specificity(pred, truth) == pytest.approx(5 / 6)
    assert metrics.precision(pred, truth) == pytest.approx(2 / 3)


def test_dice_of_overlapping_cubes():
    shape = (8, 8, 8)
    a = box(shape, (0, 4), (0, 4), (0, 4))  # 64 voxels
    b = box(shape, (0, 4), (0, 4), (2, 6))  # 64 voxels, overlap 4*4*2 = 32
    assert metrics.dice(a, b) == pytest.approx(2 * 32 / 128)
    assert metrics.sensitivity(a, b) == pytest.approx(0.5)
    assert metrics.precision(a, b) == pytest.approx(0.5)
    assert metrics.specificity(a, b) == pytest.approx((512 - 96) / (512 - 64))
    inner = box(shape, (0, 2), (0, 2), (0, 2))  # 8 voxels inside a 16-voxel truth
    outer = box(shape, (0, 4), (0, 2), (0, 2))
    assert metrics.dice(inner, outer) == pytest.approx(16 / 24)
    assert metrics.precision(inner, outer) == 1.0


def test_hd95_plate_shift_is_spacing_aware():
    shape = (6, 6, 6)
    spacing_xyz = (1.0, 1.0, 3.0)
    # One-voxel-thick plates: every voxel is a surface voxel at the same distance.
    plate_z2 = box(shape, (2, 3), (1, 5), (1, 5))
    plate_z3 = box(shape, (3, 4), (1, 5), (1, 5))
    assert metrics.hd95(plate_z2, plate_z3, spacing_xyz) == pytest.approx(3.0)
    plate_x2 = box(shape, (1, 5), (1, 5), (2, 3))
    plate_x3 = box(shape, (1, 5), (1, 5), (3, 4))
    assert metrics.hd95(plate_x2, plate_x3, spacing_xyz) == pytest.approx(1.0)
    assert metrics.hd95(plate_z2, plate_z2, spacing_xyz) == 0.0


@pytest.mark.parametrize("axis, spacing_xyz, step_mm", [(2, (1.0, 1.0, 1.0), 1.0), (0, (1.0, 1.0, 3.0), 3.0)])
def test_hd95_is_pooled_95th_percentile(axis, spacing_xyz, step_mm):
    # P = {0}, T = {0, 10} along one axis. d(P->T) = [0]; d(T->P) = [0, 10 steps].
    # Pooled [0, 0, 10]: linear percentile at rank 0.95 * 2 = 1.9 -> 0 + 0.9 * 10 = 9 steps.
    shape = [1, 1, 1]
    shape[axis] = 11
    pred, truth = np.zeros(shape, bool), np.zeros(shape, bool)
    idx0, idx10 = [0, 0, 0], [0, 0, 0]
    idx10[axis] = 10
    pred[tuple(idx0)] = truth[tuple(idx0)] = truth[tuple(idx10)] = True
    assert metrics.hd95(pred, truth, spacing_xyz) == pytest.approx(9.0 * step_mm)
    assert metrics.hd95(truth, pred, spacing_xyz) == pytest.approx(9.0 * step_mm)  # symmetric
    # surface Dice at 5 steps: 2 of the 3 surface voxels are within tolerance.
    assert metrics.surface_dice(pred, truth, spacing_xyz, 5 * step_mm) == pytest.approx(2 / 3)


def test_hd95_matches_brute_force_on_blobs():
    rng = np.random.default_rng(3)
    shape = (12, 14, 16)
    spacing_xyz = (0.8, 1.1, 2.5)
    pred = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=2)
    truth = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=2)
    surfaces = []
    for m in (pred, truth):
        interior = ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1), border_value=0)
        surfaces.append(np.argwhere(m & ~interior) * np.array(spacing_xyz[::-1]))
    d = cdist(surfaces[0], surfaces[1])
    pooled = np.concatenate([d.min(axis=1), d.min(axis=0)])
    assert metrics.hd95(pred, truth, spacing_xyz) == pytest.approx(np.percentile(pooled, 95))
    tol = 2.0
    expected = (np.count_nonzero(d.min(axis=1) <= tol) + np.count_nonzero(d.min(axis=0) <= tol)) / pooled.size
    assert metrics.surface_dice(pred, truth, spacing_xyz, tol) == pytest.approx(expected)


def test_surface_dice_tolerance_below_and_above_shift():
    shape = (6, 6, 6)
    spacing_xyz = (1.0, 1.0, 3.0)
    a = box(shape, (2, 3), (1, 5), (1, 5))
    b = box(shape, (3, 4), (1, 5), (1, 5))
    assert metrics.surface_dice(a, b, spacing_xyz, tolerance_mm=2.0) == 0.0
    assert metrics.surface_dice(a, b, spacing_xyz, tolerance_mm=3.0) == 1.0  # inclusive
    assert metrics.surface_dice(a, a, spacing_xyz, tolerance_mm=0.0) == 1.0


def test_volume_error():
    shape = (4, 4, 4)
    pred = box(shape, (0, 2), (0, 2), (0, 2))   # 8 voxels
    truth = box(shape, (0, 4), (0, 2), (0, 2))  # 16 voxels
    absolute, relative = metrics.volume_error(pred, truth, (1.0, 2.0, 3.0))  # 6 mm3 per voxel
    assert absolute == pytest.approx(48.0)
    assert relative == pytest.approx(0.5)


def test_lesion_detection_found_missed_false_positive():
    shape = (10, 10, 20)
    truth = box(shape, (1, 4), (1, 4), (1, 4)) | box(shape, (1, 4), (1, 4), (10, 13))
    pred = box(shape, (2, 5), (2, 5), (2, 5)) | box(shape, (6, 9), (6, 9), (16, 19))
    counts = metrics.lesion_detection(pred, truth, (1, 1, 1))
    assert counts == {"lesions_truth": 2, "lesions_found": 1, "lesions_missed": 1, "lesions_fp": 1}


def test_lesion_detection_overlap_threshold_connectivity_and_min_volume():
    shape = (6, 6, 6)
    truth = box(shape, (0, 2), (0, 2), (0, 2))  # 8 voxels
    one_voxel = box(shape, (0, 1), (0, 1), (0, 1))
    assert metrics.lesion_detection(one_voxel, truth, (1, 1, 1))["lesions_found"] == 1
    assert metrics.lesion_detection(one_voxel, truth, (1, 1, 1), min_overlap=0.5)["lesions_missed"] == 1
    corners = np.zeros(shape, bool)
    corners[1, 1, 1] = corners[2, 2, 2] = True  # touch only at a corner
    empty = np.zeros(shape, bool)
    assert metrics.lesion_detection(corners, empty, (1, 1, 1))["lesions_fp"] == 1
    assert metrics.lesion_detection(corners, empty, (1, 1, 1), connectivity=6)["lesions_fp"] == 2
    speck = one_voxel.copy()
    speck[5, 5, 5] = True
    assert metrics.lesion_detection(speck, truth, (1, 1, 1))["lesions_fp"] == 1
    # 1 mm3 specks are ignored with min_volume_mm3=2: the lone FP voxel and the one-voxel hit.
    counts = metrics.lesion_detection(speck, truth, (1, 1, 1), min_volume_mm3=2.0)
    assert counts == {"lesions_truth": 1, "lesions_found": 0, "lesions_missed": 1, "lesions_fp": 0}
    # spacing matters: with 0.5 mm voxels the 8-voxel truth is 1 mm3 and is ignored too.
    counts = metrics.lesion_detection(speck, truth, (0.5, 0.5, 0.5), min_volume_mm3=2.0)
    assert counts["lesions_truth"] == 0


def test_empty_mask_policy():
    shape = (5, 5, 5)
    empty = np.zeros(shape, bool)
    full = box(shape, (1, 3), (1, 3), (1, 3))
    sp = (1, 1, 1)
    # both empty: perfect agreement where defined, NaN where a denominator is zero
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.hd95(empty, empty, sp) == 0.0
    assert metrics.surface_dice(empty, empty, sp) == 1.0
    assert math.isnan(metrics.sensitivity(empty, empty))
    assert math.isnan(metrics.precision(empty, empty))
    assert metrics.specificity(empty, empty) == 1.0
    assert metrics.volume_error(empty, empty, sp)[0] == 0.0
    assert math.isnan(metrics.volume_error(empty, empty, sp)[1])
    # truth empty, prediction not
    assert metrics.dice(full, empty) == 0.0
    assert math.isnan(metrics.hd95(full, empty, sp))
    assert metrics.surface_dice(full, empty, sp) == 0.0
    assert math.isnan(metrics.sensitivity(full, empty))
    assert metrics.precision(full, empty) == 0.0
    assert metrics.lesion_detection(full, empty, sp)["lesions_fp"] == 1
    # prediction empty, truth not
    assert metrics.dice(empty, full) == 0.0
    assert math.isnan(metrics.hd95(empty, full, sp))
    assert metrics.sensitivity(empty, full) == 0.0
    assert math.isnan(metrics.precision(empty, full))
    assert metrics.volume_error(empty, full, sp) == (8.0, 1.0)
    assert metrics.lesion_detection(empty, full, sp)["lesions_missed"] == 1
    # truth covers every voxel: specificity undefined
    assert math.isnan(metrics.specificity(np.ones(shape, bool), np.ones(shape, bool)))


def test_evaluate_case_matches_single_metrics():
    shape = (8, 10, 12)
    spacing_xyz = (0.5, 1.0, 2.0)
    truth = np.zeros(shape, np.uint8)
    truth[1:5, 2:7, 2:8] = 1
    truth[5:7, 2:5, 8:11] = 2
    pred = np.zeros(shape, np.uint8)
    pred[2:5, 2:8, 3:8] = 1
    rows = metrics.evaluate_case(pred, truth, spacing_xyz, {1: "Tumor", 2: "Edema"}, tolerance_mm=1.0)
    assert [(r["label"], r["name"]) for r in rows] == [(1, "Tumor"), (2, "Edema")]
    t, p = truth == 1, pred == 1
    r = rows[0]
    assert r["dice"] == pytest.approx(metrics.dice(p, t))
    assert r["sensitivity"] == pytest.approx(metrics.sensitivity(p, t))
    assert r["specificity"] == pytest.approx(metrics.specificity(p, t))
    assert r["precision"] == pytest.approx(metrics.precision(p, t))
    assert r["hd95"] == pytest.approx(metrics.hd95(p, t, spacing_xyz))
    assert r["surface_dice"] == pytest.approx(metrics.surface_dice(p, t, spacing_xyz, 1.0))
    assert (r["volume_error_mm3"], r["volume_error_rel"]) == pytest.approx(metrics.volume_error(p, t, spacing_xyz))
    assert r["volume_truth_mm3"] == pytest.approx(4 * 5 * 6 * 1.0)
    assert rows[1]["dice"] == 0.0 and rows[1]["lesions_missed"] == 1 and math.isnan(rows[1]["hd95"])
    auto = metrics.evaluate_case(pred, truth, spacing_xyz)
    assert [r["name"] for r in auto] == ["label_1", "label_2"]


def test_input_errors():
    with pytest.raises(InputError, match="shape"):
        metrics.dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(InputError, match="spacing"):
        metrics.hd95(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="connectivity"):
        metrics.lesion_detection(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1, 1, 1), connectivity=18)


def test_metrics_module_does_not_import_torch():
    code = "import sys, tumorseg_core.evaluation.metrics, tumorseg_core.training.losses; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lesions_found_by_diameter_bins():
    """Equivalent-sphere diameters, by hand: 4^3 voxels of 1 mm -> 4.96 mm, 12^3 -> 14.9 mm,
    20^3 -> 24.8 mm; the prediction finds the smallest and the largest."""
    truth = np.zeros((60, 60, 60), bool)
    truth[1:5, 1:5, 1:5] = True
    truth[10:22, 10:22, 10:22] = True
    truth[30:50, 30:50, 30:50] = True
    pred = np.zeros_like(truth)
    pred[2, 2, 2] = pred[40, 40, 40] = True
    counts = metrics.lesion_detection(pred, truth, (1.0, 1.0, 1.0), by_diameter=True)
    assert {k: counts[k] for k in metrics.LESION_SIZE_KEYS} == {
        "lesions_truth_lt10mm": 1, "lesions_found_lt10mm": 1,
        "lesions_truth_10to20mm": 1, "lesions_found_10to20mm": 0,
        "lesions_truth_ge20mm": 1, "lesions_found_ge20mm": 1,
    }
    # Spacing counts: the 4^3 lesion at 3 mm voxels is 14.9 mm across.
    coarse = metrics.lesion_detection(pred, truth, (3.0, 3.0, 3.0), by_diameter=True)
    assert coarse["lesions_truth_lt10mm"] == 0 and coarse["lesions_found_10to20mm"] == 1
    assert set(metrics.lesion_detection(pred, truth, (1, 1, 1))) == set(metrics.LESION_KEYS)
