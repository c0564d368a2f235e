"""`tumorseg segment`'s extra outputs: DICOM SEG (-o FILE.dcm or --dicom-seg), --measure, --uncertainty.

All outputs of one run are checked before the work and written all or none. The DICOM
SEG must read back (highdicom, through the engine) into exactly the label map of the same
run, on the source series' grid; the measurement table must describe the same voxels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import write_ct_series
from model_factory import make_tiny_package

from tumorseg_core.cli import main
from tumorseg_core.dicom.seg_read import read_dicom_seg
from tumorseg_core.dicom.series import read_dicom_series

SPACING = (0.9, 0.8, 2.5)


def _oblique() -> np.ndarray:
    a = np.radians(25.0)
    return np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])


@pytest.fixture
def ct_folder(tmp_path):
    """An oblique, anisotropic CT series with one bright ellipsoid; returns (folder, centre LPS)."""
    shape = (12, 36, 40)
    z, y, x = np.indices(shape)
    inside = ((z - 6) / 3.0) ** 2 + ((y - 18) / 8.0) ** 2 + ((x - 20) / 9.0) ** 2 <= 1.0
    rng = np.random.default_rng(0)
    array = rng.normal(40.0, 5.0, shape).astype(np.int16)
    array[inside] = 300
    folder = tmp_path / "ct"
    write_ct_series(folder, array, spacing=SPACING, origin=(-30.0, 20.0, 5.0), direction=_oblique().ravel())
    image = read_dicom_series(folder).image
    return folder, image.TransformIndexToPhysicalPoint((20, 18, 6)), inside


def test_seeded_click_to_dicom_seg_and_measurements(ct_folder, tmp_path, capsys):
    folder, centre, inside = ct_folder
    out, table = tmp_path / "tumor.dcm", tmp_path / "tumor.json"
    seed = ",".join(f"{v:.3f}" for v in centre)
    assert main(["segment", str(folder), "-o", str(out), f"--seed={seed}", "--measure", str(table)]) == 0
    series = read_dicom_series(folder)
    labels, segments = read_dicom_seg(out, reference=series)
    mask = sitk.GetArrayFromImage(labels) > 0
    assert labels.GetSize() == series.image.GetSize()
    np.testing.assert_allclose(labels.GetDirection(), series.image.GetDirection(), atol=1e-6)
    dice = 2 * np.sum(mask & inside) / (mask.sum() + inside.sum())
    assert dice > 0.9  # the click grew the bright ellipsoid
    rows = json.loads(table.read_text())
    rows = rows["lesions"] if isinstance(rows, dict) else rows
    assert len(rows) == 1
    voxel_ml = np.prod(SPACING) / 1000.0
    assert rows[0]["volume_ml"] == pytest.approx(mask.sum() * voxel_ml)
    assert rows[0]["segment"] == segments[0].name
    summary = capsys.readouterr().err
    assert str(out) in summary and str(table) in summary
    # The DICOM SEG is accepted wherever a label map is: measure and evaluate.
    again = tmp_path / "again.json"
    assert main(["measure", str(out), "--image", str(folder), "--json", str(again)]) == 0
    again_rows = json.loads(again.read_text())
    again_rows = again_rows["lesions"] if isinstance(again_rows, dict) else again_rows
    assert [r["volume_ml"] for r in again_rows] == pytest.approx([r["volume_ml"] for r in rows])
    assert again_rows[0]["segment"] == segments[0].name
    truth = sitk.GetImageFromArray(inside.astype(np.uint8))
    truth.CopyInformation(series.image)
    sitk.WriteImage(truth, str(tmp_path / "truth.nii.gz"))
    metrics_csv = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred", str(out), "--truth", str(tmp_path / "truth.nii.gz"),
                 "--csv", str(metrics_csv)]) == 0
    header, *lines = metrics_csv.read_text().splitlines()
    dice_column = header.split(",").index("dice")
    assert float(lines[0].split(",")[dice_column]) == pytest.approx(dice, abs=1e-3)


def test_model_labelmap_dicom_seg_uncertainty_agree(ct_folder, tmp_path):
    folder, _centre, _inside = ct_folder
    package = make_tiny_package(tmp_path / "pkg", modalities=("CT",), spacing=(2.0, 2.0, 2.5))
    labelmap, seg, uncertainty = tmp_path / "out.seg.nrrd", tmp_path / "out.dcm", tmp_path / "u.nrrd"
    assert main(["segment", str(folder), "-o", str(labelmap), "--model", str(package), "--dicom-seg", str(seg),
                 "--uncertainty", str(uncertainty), "-q"]) == 0
    series = read_dicom_series(folder)
    written = sitk.ReadImage(str(labelmap))
    from_seg, _ = read_dicom_seg(seg, reference=series)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_seg) > 0, sitk.GetArrayFromImage(written) > 0)
    entropy = sitk.ReadImage(str(uncertainty))
    assert entropy.GetSize() == series.image.GetSize()
    np.testing.assert_allclose(entropy.GetOrigin(), series.image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(entropy.GetDirection(), series.image.GetDirection(), atol=1e-6)
    values = sitk.GetArrayFromImage(entropy)
    assert values.min() >= 0.0 and values.max() <= 1.0


def test_a_late_failure_leaves_no_output(ct_folder, tmp_path, monkeypatch, capsys):
    import tumorseg_core.dicom.seg_write as seg_write

    folder, centre, _inside = ct_folder

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seg_write, "write_dicom_seg", broken)
    labelmap, seg = tmp_path / "out.seg.nrrd", tmp_path / "out.dcm"
    seed = ",".join(f"{v:.3f}" for v in centre)
    with pytest.raises(OSError):
        main(["segment", str(folder), "-o", str(labelmap), f"--seed={seed}", "--dicom-seg", str(seg)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


@pytest.mark.parametrize("extra, message", [
    (["--dicom-seg", "{tmp}/x.dcm"], "not a DICOM folder"),
    (["--uncertainty", "{tmp}/u.nrrd"], "uncertainty needs a model"),
    (["--measure", "{tmp}/m.txt"], ".csv"),
    (["--model", "default", "--uncertainty", "{tmp}/out.seg.nrrd"], "give them different names"),
])
def test_bad_output_requests_fail_before_the_work(tmp_path, make_sphere_image, capsys, extra, message):
    image, centre = make_sphere_image(radius_mm=5.0, size_xyz=(20, 20, 12), spacing=(1.0, 1.0, 2.0))
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(image, str(path))
    args = ["segment", str(path), "-o", str(tmp_path / "out.seg.nrrd"),
            "--seed=" + ",".join(f"{v:.3f}" for v in centre)] + [a.format(tmp=tmp_path) for a in extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz"]


def test_dcm_output_and_dicom_seg_together_is_refused(ct_folder, tmp_path, capsys):
    folder, _centre, _inside = ct_folder
    assert main(["segment", str(folder), "-o", str(tmp_path / "a.dcm"), "--dicom-seg", str(tmp_path / "b.dcm"),
                 "--seed=0,0,0"]) == 2
    assert "drop --dicom-seg" in capsys.readouterr().err
