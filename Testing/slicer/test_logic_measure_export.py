"""The Logic after a segmentation: the "Tumor measurements" table and DICOM SEG export, on real MRML.

Segments are added as TumorSeg would add them (with the model tag) on an oblique,
anisotropic volume; the user's own segments must be left out of both. The table must
agree with the engine's measurement of the same voxels, and the DICOM SEG must read back
(highdicom, through the engine) into exactly the segments' voxels on the series grid.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from dicom_factory import write_ct_series  # noqa: E402

from tumorseg_core.errors import TumorSegError  # noqa: E402


def _direction_lps() -> np.ndarray:
    """An oblique, mirrored direction (columns = LPS axes of i, j, k)."""
    a = np.radians(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    b = np.radians(15.0)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return rot @ tilt


def _ellipsoid(shape_zyx, centre_zyx, radii_zyx) -> np.ndarray:
    z, y, x = np.indices(shape_zyx)
    return (((z - centre_zyx[0]) / radii_zyx[0]) ** 2 + ((y - centre_zyx[1]) / radii_zyx[1]) ** 2
            + ((x - centre_zyx[2]) / radii_zyx[2]) ** 2) <= 1.0


def _node_from_image(scene, image: sitk.Image, name: str):
    from TumorSegmentationLib import geometry_bridge

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    array = sitk.GetArrayFromImage(image)
    vtk_image = __import__("vtk").vtkImageData()
    nz, ny, nx = array.shape
    vtk_image.SetDimensions(nx, ny, nz)
    from vtkmodules.util import numpy_support

    vtk_image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        np.ascontiguousarray(array).ravel(), deep=True, array_type=numpy_support.get_vtk_array_type(array.dtype)))
    node.SetAndObserveImageData(vtk_image)
    node.SetIJKToRASMatrix(geometry_bridge.numpy_to_matrix(geometry_bridge.sitk_ijk_to_ras(image)))
    return node


def _add_segment(segmentation_node, volume_node, mask: np.ndarray, name: str, tumorseg: bool) -> str:
    from TumorSegmentationLib import geometry_bridge
    from TumorSegmentationLib.logic import LABEL_VALUE_TAG, MODEL_TAG

    matrix = geometry_bridge.volume_ijk_to_frame(volume_node, segmentation_node)
    image = geometry_bridge.oriented_image(mask.astype(np.uint8), matrix)
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(0.9, 0.3, 0.2)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), image)
    if tumorseg:
        segment.SetTag(MODEL_TAG, "test-model")
        segment.SetTag(LABEL_VALUE_TAG, "1")
        segment.SetTag(segment.GetTerminologyEntryTagName(),
                       "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered "
                       "Structure~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^")
    segmentation = segmentation_node.GetSegmentation()
    sid = segmentation.GenerateUniqueSegmentID(name)
    assert segmentation.AddSegment(segment, sid)
    return sid


@pytest.fixture
def oblique_case(scene, tmp_path):
    """(volume node, segmentation node, tumor mask, user mask, series) on an oblique anisotropic CT series."""
    shape = (14, 40, 36)
    rng = np.random.default_rng(3)
    array = (rng.normal(40, 10, shape)).astype(np.int16)
    tumor = _ellipsoid(shape, (6, 18, 15), (4, 9, 7)) | _ellipsoid(shape, (9, 31, 28), (2, 3, 3))
    array[tumor] += 200
    user = _ellipsoid(shape, (7, 8, 28), (3, 4, 4))
    series = write_ct_series(tmp_path / "ct", array, spacing=(0.9, 0.7, 2.5), origin=(-20.0, 35.0, 12.0),
                             direction=_direction_lps().ravel())
    from tumorseg_core.dicom.series import read_dicom_series

    dicom = read_dicom_series(tmp_path / "ct")
    volume = _node_from_image(scene, dicom.image, "CT")
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(series.sop_instance_uids))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Result")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    _add_segment(segmentation, volume, tumor, "Tumor", tumorseg=True)
    _add_segment(segmentation, volume, user, "My organ", tumorseg=False)
    return volume, segmentation, tumor, user, series, dicom


def _column(table_node, name: str) -> list:
    table = table_node.GetTable()
    array = table.GetColumnByName(name)
    assert array is not None, f"no column {name}"
    return [array.GetValue(i) for i in range(table.GetNumberOfRows())]


def test_measurement_table_matches_the_engine_and_skips_user_segments(oblique_case, logic):
    from tumorseg_core.measurement import measure

    volume, segmentation, tumor, _user, _series, dicom = oblique_case
    table_node = logic.measure(segmentation, volume)
    assert table_node.GetName() == "Tumor measurements"
    assert table_node.GetTable().GetNumberOfRows() == 2  # two lesions of the one TumorSeg segment
    assert set(_column(table_node, "segment")) == {"Tumor"}
    labels = sitk.GetImageFromArray(tumor.astype(np.uint8))
    labels.CopyInformation(dicom.image)
    expected = measure(labels, image=sitk.Cast(dicom.image, sitk.sitkFloat32))
    assert sorted(_column(table_node, "volume_ml")) == pytest.approx(sorted(r.volume_ml for r in expected.rows))
    assert sorted(_column(table_node, "recist_long_mm")) == pytest.approx(
        sorted(r.recist_long_mm for r in expected.rows))
    voxel_ml = 0.9 * 0.7 * 2.5 / 1000.0
    assert sum(_column(table_node, "volume_ml")) == pytest.approx(tumor.sum() * voxel_ml)
    assert min(_column(table_node, "intensity_mean")) > 150  # the bright lesions, not the background
    # Measuring again refills the same node rather than adding another.
    assert logic.measure(segmentation, volume) is table_node


def test_measure_without_tumorseg_segments_is_a_clear_error(scene, oblique_case, logic):
    volume, _segmentation, _tumor, user, _series, _dicom = oblique_case
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Manual")
    _add_segment(other, volume, user, "My organ", tumorseg=False)
    before = scene.GetNumberOfNodes()
    with pytest.raises(TumorSegError, match="no TumorSeg segments"):
        logic.measure(other, volume)
    assert scene.GetNumberOfNodes() == before


def test_pet_needs_its_suv_factor(oblique_case, logic):
    volume, segmentation, *_ = oblique_case
    with pytest.raises(TumorSegError, match="SUV factor"):
        logic.measure(segmentation, volume, petVolumeNode=volume)


def test_pet_columns_with_a_factor(oblique_case, logic):
    volume, segmentation, tumor, *_ = oblique_case
    table_node = logic.measure(segmentation, volume, petVolumeNode=volume, suvFactor=0.01)
    suv_max = _column(table_node, "suv_max")
    intensity_max = _column(table_node, "intensity_max")
    assert suv_max == pytest.approx([0.01 * v for v in intensity_max])


def test_dicom_seg_export_reads_back_exactly(oblique_case, logic, tmp_path):
    from tumorseg_core.dicom.seg_read import read_dicom_seg

    volume, segmentation, tumor, _user, series, dicom = oblique_case
    files = {uid: str(path) for uid, path in zip(series.sop_instance_uids, series.files)}
    out = logic.exportDicomSeg(segmentation, volume, tmp_path / "tumor_seg.dcm", fileForInstance=files.get)
    assert out.is_file()
    labels, segments = read_dicom_seg(out, reference=dicom)
    assert [s.name for s in segments] == ["Tumor"]
    assert segments[0].terminology["type"][1] == "108369006"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels) > 0, tumor)
    assert labels.GetSize() == dicom.image.GetSize()
    np.testing.assert_allclose(labels.GetDirection(), dicom.image.GetDirection(), atol=1e-6)


def test_dicom_seg_export_refuses_a_volume_not_from_dicom(oblique_case, logic, tmp_path):
    volume, segmentation, *_ = oblique_case
    volume.RemoveAttribute("DICOM.instanceUIDs")
    out = tmp_path / "seg.dcm"
    with pytest.raises(TumorSegError, match="not loaded from DICOM"):
        logic.exportDicomSeg(segmentation, volume, out, fileForInstance={}.get)
    assert not out.exists()
    assert not any(tmp_path.glob("*.dcm*"))


def test_dicom_seg_export_refuses_missing_database_files(oblique_case, logic, tmp_path):
    volume, segmentation, *_ = oblique_case
    out = tmp_path / "seg.dcm"
    with pytest.raises(TumorSegError, match="not in the DICOM database"):
        logic.exportDicomSeg(segmentation, volume, out, fileForInstance={}.get)
    assert not out.exists()
