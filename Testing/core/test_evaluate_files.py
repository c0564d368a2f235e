"""`tumorseg evaluate` on one pair of files, with the segments' own names and a per-lesion table (issue #21)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tumorseg_core.cli import main
from tumorseg_core.evaluation import evaluate as evaluation
from tumorseg_core.evaluation import metrics
from tumorseg_core.imaging.io import write_labelmap
from tumorseg_core.imaging.seg_nrrd import segment_names
from tumorseg_core.imaging.segments import SegmentInfo

SPACING = (0.7, 1.3, 2.5)  # x, y, z: anisotropic
ORIGIN = (40.0, -20.0, 100.0)
# Flipped and rotated by 30 degrees about z.
_C, _S = np.cos(np.radians(30)), np.sin(np.radians(30))
DIRECTION = (-_C, -_S, 0.0, _S, -_C, 0.0, 0.0, 0.0, 1.0)
SHAPE = (10, 16, 18)  # z, y, x
SEGMENTS = [SegmentInfo(1, "Liver lesion", (0.9, 0.3, 0.2)), SegmentInfo(2, "Edema", (0.2, 0.6, 0.9))]


def image_of(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def truth_and_pred() -> tuple[np.ndarray, np.ndarray]:
    """Truth: lesion A (found), lesion B (missed) of label 1 and an edema blob (label 2).
    Prediction: half of A, a false positive of label 1 and the edema."""
    truth = np.zeros(SHAPE, np.uint8)
    truth[1:5, 2:8, 2:8] = 1  # A: 4*6*6 = 144 voxels
    truth[6:8, 10:13, 12:15] = 1  # B: 2*3*3 = 18 voxels
    truth[1:3, 11:15, 2:5] = 2
    pred = np.zeros(SHAPE, np.uint8)
    pred[1:5, 2:8, 2:5] = 1  # half of A
    pred[7:9, 2:4, 14:17] = 1  # false positive: 2*2*3 = 12 voxels
    pred[1:3, 11:15, 2:5] = 2
    return truth, pred


@pytest.fixture
def files(tmp_path):
    truth, pred = truth_and_pred()
    truth_path, pred_path = tmp_path / "truth.seg.nrrd", tmp_path / "pred.nii.gz"
    write_labelmap(image_of(truth), truth_path, segments=SEGMENTS)
    write_labelmap(image_of(pred), pred_path)
    return pred_path, truth_path


def test_a_single_pair_of_files_is_one_case_named_after_its_segments(files, capsys):
    pred, truth = files
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 case(s)")
    assert "Liver lesion (1)" in out and "Edema (2)" in out and "label_1" not in out
    rows = evaluation.evaluate_folders(pred, truth)
    assert [(r["case"], r["label"], r["name"]) for r in rows] == [("truth", 1, "Liver lesion"), ("truth", 2, "Edema")]
    assert rows[1]["dice"] == 1.0
    assert rows[0]["lesions_truth"] == 2 and rows[0]["lesions_found"] == 1 and rows[0]["lesions_fp"] == 1


def test_names_come_from_the_prediction_when_the_truth_has_none_else_label_n(tmp_path):
    truth, pred = truth_and_pred()
    pred[pred == 2] = 0  # label 2 only in the truth, which names nothing
    (tmp_path / "t").mkdir()
    (tmp_path / "p").mkdir()
    write_labelmap(image_of(truth), tmp_path / "t" / "c1.nii.gz")
    write_labelmap(image_of(pred), tmp_path / "p" / "c1.seg.nrrd", segments=SEGMENTS[:1])
    rows = evaluation.evaluate_folders(tmp_path / "p", tmp_path / "t")
    assert [(r["label"], r["name"]) for r in rows] == [(1, "Liver lesion"), (2, "label_2")]


def test_file_and_folder_mixed_or_missing_is_one_error_line(files, tmp_path, capsys):
    pred, _ = files
    assert main(["evaluate", "--pred", str(pred), "--truth", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "two label map files" in err[0]
    assert main(["evaluate", "--pred", str(tmp_path / "absent.nii.gz"), "--truth", str(pred)]) == 2
    assert "prediction file or folder" in capsys.readouterr().err


def test_lesion_table_lists_found_missed_and_false_positive_lesions(files, capsys):
    pred, truth = files
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--lesions"]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n", 1)[1]
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    liver = [line for line in table.splitlines() if "Liver lesion (1)" in line]
    by_id = {line.split()[4]: line for line in liver}  # case, "Liver", "lesion", "(1)", lesion id
    assert sorted(by_id) == ["P1", "T1", "T2"]
    assert "found" in by_id["T1"] and f"{144 * voxel_ml:.3f}" in by_id["T1"] and "50%" in by_id["T1"]
    assert "missed" in by_id["T2"] and f"{18 * voxel_ml:.3f}" in by_id["T2"] and " 0%" in by_id["T2"]
    assert "false positive" in by_id["P1"] and f"{12 * voxel_ml:.3f}" in by_id["P1"]
    assert len([line for line in table.splitlines() if "Edema (2)" in line]) == 1


def test_lesion_centres_are_lps_points_on_the_oblique_grid(files):
    pred, truth = files
    rows: list = []
    evaluation.evaluate_folders(pred, truth, lesion_rows=rows)
    truth_image = sitk.ReadImage(str(truth))
    t2 = next(r for r in rows if r["label"] == 1 and r["lesion"] == "T2")
    # Mean of the physical points of lesion B's voxels, computed voxel by voxel.
    points = [truth_image.TransformIndexToPhysicalPoint((x, y, z))
              for z in range(6, 8) for y in range(10, 13) for x in range(12, 15)]
    assert np.allclose(t2["center_lps"], np.mean(points, axis=0), atol=1e-6)
    assert t2["volume_mm3"] == pytest.approx(18 * np.prod(SPACING))


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, (5, 6, 7)), arrays(np.bool_, (5, 6, 7)), st.sampled_from([0.0, 0.3, 1.0]))
def test_lesion_records_add_up_to_the_detection_counts(pred, truth, min_overlap):
    records = metrics.lesion_records(pred, truth, SPACING, min_overlap)
    counts = metrics.lesion_detection(pred, truth, SPACING, min_overlap)
    status = [r["status"] for r in records]
    assert status.count("found") == counts["lesions_found"]
    assert status.count("missed") == counts["lesions_missed"]
    assert status.count("false positive") == counts["lesions_fp"]
    assert sum(r["volume_mm3"] for r in records if r["kind"] == "truth") == pytest.approx(
        truth.sum() * np.prod(SPACING))
    assert metrics.lesion_count(truth) == counts["lesions_truth"]


def test_segment_names_read_back_from_a_written_seg_nrrd(tmp_path):
    path = tmp_path / "x.seg.nrrd"
    write_labelmap(image_of(np.zeros(SHAPE)), path, segments=SEGMENTS)
    assert segment_names(sitk.ReadImage(str(path))) == {1: "Liver lesion", 2: "Edema"}
    assert evaluation.read_labels(path)[1] == {1: "Liver lesion", 2: "Edema"}
    write_labelmap(image_of(np.zeros(SHAPE)), tmp_path / "x.nii.gz")
    assert evaluation.read_labels(tmp_path / "x.nii.gz")[1] == {}
