"""DICOM SEG out and in (tumorseg_core.dicom): a series built here with pydicom, labels on its grid,
the SEG checked by dciodvfy, dcmqi and highdicom, and the errors a user can cause.

The source series is oblique (rotated about x and z), anisotropic (0.7 x 0.9 x 2.5 mm) and
stacked against its row x column normal ("flipped"), with file names against the slice
order; a second one is gantry-tilted (positions sheared along y, orientation unchanged).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import write_ct_series
from directions import rotation_direction

from tumorseg_core.dicom import series as dicom_series
from tumorseg_core.dicom.codes import segment_description
from tumorseg_core.dicom.labels import read_label_file
from tumorseg_core.dicom.seg_read import is_dicom_seg, read_dicom_seg
from tumorseg_core.dicom.seg_write import write_dicom_seg
from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.imaging import io
from tumorseg_core.imaging.segments import SEEDED_TUMOR, SegmentInfo

pydicom = pytest.importorskip("pydicom")
highdicom = pytest.importorskip("highdicom")

SHAPE_ZYX = (12, 36, 40)
SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-20.0, 30.0, 50.0)
ENHANCING = SegmentInfo(2, "Enhancing tumor", (0.2, 0.8, 0.3), {
    "category": ["SCT", "49755003", "Morphologically Altered Structure"], "type": ["SCT", "108369006", "Neoplasm"],
    "modifier": ["NCIt", "C113842", "Enhancing Lesion"],
})
SEGMENTS = [SEEDED_TUMOR, ENHANCING]


def _oblique_flipped() -> tuple[float, ...]:
    """Rotation about x then z, with the slice axis reversed (stacked against row x column)."""
    matrix = np.array(rotation_direction("x", 25)).reshape(3, 3) @ np.array(rotation_direction("z", 15)).reshape(3, 3)
    return tuple((matrix @ np.diag([1.0, 1.0, -1.0])).ravel())


def _labels_on(image: sitk.Image) -> sitk.Image:
    """Two labels (boxes in index space, one touching the first slice) on ``image``'s grid."""
    array = np.zeros(SHAPE_ZYX, np.uint8)
    array[0:5, 8:20, 4:16] = 1
    array[5:9, 20:31, 18:34] = 2
    array[6, 25, 10] = 1  # a lone voxel
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    return labels


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    """(folder, written Series, DicomSeries read back, voxels written (z, y, x))."""
    folder = tmp_path_factory.mktemp("oblique")
    voxels = np.random.default_rng(7).integers(-200, 600, SHAPE_ZYX)
    written = write_ct_series(folder, voxels, SPACING, ORIGIN, _oblique_flipped())
    return folder, written, dicom_series.read_dicom_series(folder), voxels


@pytest.fixture(scope="module")
def written_seg(oblique, tmp_path_factory):
    """(SEG path, label map written) for the oblique series."""
    folder, _written, series, _voxels = oblique
    labels = _labels_on(series.image)
    out = write_dicom_seg(labels, folder, tmp_path_factory.mktemp("seg") / "result.dcm", SEGMENTS,
                          "TumorSeg test", "1.2.3")
    return out, labels


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _assert_segments(read: list[SegmentInfo], expected: list[SegmentInfo]) -> None:
    assert [(s.value, s.name, s.terminology) for s in read] == [(s.value, s.name, s.terminology) for s in expected]
    for got, want in zip(read, expected):
        assert np.allclose(got.color, want.color, atol=1.5 / 255)  # CIELab, 8-bit RGB


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ----------------------------------------------------------------------------- the series


def test_series_is_read_in_simpleitk_order_with_its_uids(oblique):
    folder, written, series, voxels = oblique
    image = io.read_image(folder)
    _assert_same_grid(series.image, image)
    assert np.array_equal(_array(series.image), _array(image))
    # stacked against the normal: SimpleITK's slice 0 is the last slice written
    assert np.array_equal(_array(series.image), voxels[::-1])
    assert series.sop_instance_uids == written.sop_instance_uids[::-1]
    for k, ds in enumerate(series.datasets):
        position = series.image.TransformIndexToPhysicalPoint((0, 0, k))
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], position, atol=1e-3)
    assert (series.study_uid, series.series_uid, series.frame_of_reference_uid) == (
        written.study_uid, written.series_uid, written.frame_of_reference_uid)
    assert dicom_series.series_uid_of(series.image) == written.series_uid
    assert not hasattr(series.datasets[0], "PixelData")


def test_several_series_in_a_folder(tmp_path):
    small = write_ct_series(tmp_path, np.ones((3, 8, 9)), SPACING, ORIGIN, prefix="small")
    big = write_ct_series(tmp_path, np.arange(5 * 8 * 9).reshape(5, 8, 9), SPACING, ORIGIN, prefix="big")
    assert dicom_series.read_dicom_series(tmp_path).series_uid == big.series_uid
    chosen = dicom_series.read_dicom_series(tmp_path, series_uid=small.series_uid)
    assert chosen.series_uid == small.series_uid and chosen.image.GetDepth() == 3
    with pytest.raises(InputError) as excinfo:
        dicom_series.read_dicom_series(tmp_path, series_uid="1.2.3.4")
    assert "no DICOM series 1.2.3.4" in _one_line_error(excinfo)


# ----------------------------------------------------------------------------- the SEG, checked three ways


def _dciodvfy() -> str | None:
    found = shutil.which("dciodvfy") or ("/usr/bin/dciodvfy" if os.path.exists("/usr/bin/dciodvfy") else None)
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dciodvfy (Debian dicom3tools) is missing on CI; install it")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    return found


def _assert_dciodvfy_clean(path: Path) -> None:
    result = subprocess.run([_dciodvfy(), str(path)], capture_output=True, text=True, timeout=120)
    report = (result.stdout + result.stderr).splitlines()
    errors = [line for line in report if "Error" in line]
    assert not errors, "dciodvfy errors:\n" + "\n".join(report)


def test_seg_passes_dciodvfy(written_seg):
    _assert_dciodvfy_clean(written_seg[0])


def test_seg_is_a_binary_segmentation_of_the_source(written_seg, oblique):
    path, _labels = written_seg
    _folder, written, series, _voxels = oblique
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == written.study_uid and ds.FrameOfReferenceUID == written.frame_of_reference_uid
    assert [str(s.SeriesInstanceUID) for s in ds.ReferencedSeriesSequence] == [written.series_uid]
    assert ds.SeriesInstanceUID != written.series_uid
    assert [s.SegmentAlgorithmType for s in ds.SegmentSequence] == ["AUTOMATIC", "AUTOMATIC"]
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("TumorSeg test", "1.2.3")
    # each frame sits on the source instance it references
    positions = {uid: [float(v) for v in d.ImagePositionPatient]
                 for uid, d in zip(series.sop_instance_uids, series.datasets)}
    for frame in ds.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, positions[uid], atol=1e-3)
    assert is_dicom_seg(path) and not is_dicom_seg(written.files[0])


def _dcmqi_tool() -> Path:
    tool = Path(sys.executable).parent / "segimage2itkimage"
    if not tool.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"dcmqi's segimage2itkimage is missing next to {sys.executable}; pip install dcmqi")
        pytest.skip("dcmqi (segimage2itkimage) is not installed")
    return tool


def test_dcmqi_reads_the_same_labels_names_and_codes(written_seg, oblique, tmp_path):
    path, labels = written_seg
    series = oblique[2]
    result = subprocess.run(
        [str(_dcmqi_tool()), "--inputDICOM", str(path), "--outputDirectory", str(tmp_path), "--outputType", "nrrd",
         "--prefix", "seg"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((tmp_path / "seg-meta.json").read_text(encoding="utf-8"))
    combined = np.zeros(SHAPE_ZYX, np.uint8)
    described = {}
    for group, attributes in enumerate(meta["segmentAttributes"], start=1):
        mask = sitk.ReadImage(str(tmp_path / f"seg-{group}.nrrd"))
        on_source = _array(sitk.Resample(mask, series.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
        for attribute in attributes:
            value = int(attribute["labelID"])
            combined[on_source == value] = value
            described[value] = attribute
    assert np.array_equal(combined, _array(labels))
    for info in SEGMENTS:
        attribute = described[info.value]
        assert attribute["SegmentLabel"] == info.name
        for key, dicom_key in (("category", "SegmentedPropertyCategoryCodeSequence"),
                               ("type", "SegmentedPropertyTypeCodeSequence")):
            code = attribute[dicom_key]
            assert [code["CodingSchemeDesignator"], code["CodeValue"], code["CodeMeaning"]] == info.terminology[key]
        modifier = attribute.get("SegmentedPropertyTypeModifierCodeSequence")
        assert ([modifier["CodingSchemeDesignator"], modifier["CodeValue"], modifier["CodeMeaning"]] if modifier
                else None) == info.terminology.get("modifier")


@pytest.mark.parametrize("reference", ["image", "series", "none"])
def test_highdicom_read_back_is_exact(written_seg, oblique, reference):
    path, labels = written_seg
    series = oblique[2]
    ref = {"image": series.image, "series": series, "none": None}[reference]
    read, segments = read_dicom_seg(path, ref)
    if reference == "none":  # the SEG's own volume: resample it to compare
        read = sitk.Resample(read, series.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    _assert_same_grid(read, series.image)
    assert np.array_equal(_array(read), _array(labels))
    _assert_segments(segments, SEGMENTS)


def test_read_label_file_reads_seg_and_seg_nrrd_alike(written_seg, oblique, tmp_path):
    path, labels = written_seg
    series = oblique[2]
    from_seg, seg_segments = read_label_file(path, series.image)
    nrrd = io.write_labelmap(labels, tmp_path / "labels.seg.nrrd", SEGMENTS)
    from_nrrd, nrrd_segments = read_label_file(nrrd, series.image)
    assert np.array_equal(_array(from_seg), _array(labels))
    assert np.array_equal(_array(from_nrrd), _array(labels))
    _assert_same_grid(from_nrrd, series.image)
    _assert_segments(seg_segments, SEGMENTS)
    _assert_segments(nrrd_segments, SEGMENTS)
    plain, plain_segments = read_label_file(io.write_labelmap(labels, tmp_path / "labels.nii.gz"))
    assert np.array_equal(_array(plain), _array(labels)) and plain_segments == []
    with pytest.raises(InputError) as excinfo:
        read_label_file(oblique[1].files[0])  # a CT image, not a SEG
    assert "not a DICOM Segmentation" in _one_line_error(excinfo)


# ----------------------------------------------------------------------------- gantry tilt


def test_gantry_tilted_series(tmp_path):
    """SimpleITK drops the shear (orthogonal grid, spacing = distance between positions) but keeps
    slice k = instance k; the SEG keeps the true positions and reads back exactly by instance."""
    shear = 1.3
    voxels = np.random.default_rng(3).integers(-200, 600, SHAPE_ZYX)
    written = write_ct_series(tmp_path / "tilt", voxels, SPACING, ORIGIN, shear_y=shear)
    series = dicom_series.read_dicom_series(tmp_path / "tilt")
    assert np.allclose(series.image.GetDirection(), np.eye(3).ravel())
    assert series.image.GetSpacing()[2] == pytest.approx(np.hypot(SPACING[2], shear), abs=1e-6)
    assert series.sop_instance_uids == written.sop_instance_uids
    assert np.array_equal(_array(series.image), voxels)
    labels = _labels_on(series.image)
    out = write_dicom_seg(labels, series, tmp_path / "tilt.dcm", SEGMENTS, "TumorSeg test", "1.2.3")
    _assert_dciodvfy_clean(out)
    ds = pydicom.dcmread(out)
    sources = {uid: d for uid, d in zip(series.sop_instance_uids, series.datasets)}
    for frame in ds.PerFrameFunctionalGroupsSequence:
        source = sources[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in source.ImagePositionPatient], atol=1e-3)
    read, segments = read_dicom_seg(out, series)
    assert np.array_equal(_array(read), _array(labels))
    _assert_segments(segments, SEGMENTS)
    with pytest.raises(InputError) as excinfo:  # physical placement is impossible: no regular volume
        read_dicom_seg(out, series.image)
    assert "regular volume" in _one_line_error(excinfo)


# ----------------------------------------------------------------------------- what a user can get wrong


def test_seg_of_another_series_is_refused(written_seg, oblique, tmp_path):
    path = written_seg[0]
    written = oblique[1]
    other_folder = tmp_path / "other"
    write_ct_series(other_folder, oblique[3], SPACING, ORIGIN, _oblique_flipped(), study_uid=written.study_uid,
                    frame_of_reference_uid=written.frame_of_reference_uid)
    other = dicom_series.read_dicom_series(other_folder)
    for reference in (other, other.image):
        with pytest.raises(InputError) as excinfo:
            read_dicom_seg(path, reference)
        assert other.series_uid in _one_line_error(excinfo) and written.series_uid in str(excinfo.value)
    with pytest.raises(InputError):
        read_label_file(path, other)


def _no_files_but(folder: Path, names: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == names


def test_labels_on_another_grid_are_refused_and_nothing_is_written(oblique, tmp_path):
    folder, _written, series, _voxels = oblique
    labels = _labels_on(series.image)
    shifted = sitk.Image(labels)
    shifted.SetOrigin([o + 1.0 for o in labels.GetOrigin()])
    coarse = sitk.Resample(labels, [20, 18, 12], sitk.Transform(), sitk.sitkNearestNeighbor, labels.GetOrigin(),
                           [1.4, 1.8, 2.5], labels.GetDirection())
    for wrong in (shifted, coarse):
        with pytest.raises(InputError) as excinfo:
            write_dicom_seg(wrong, folder, tmp_path / "wrong.dcm", SEGMENTS, "TumorSeg test", "1")
        assert "not on the grid of the source DICOM series" in _one_line_error(excinfo)
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    with pytest.raises(InputError) as excinfo:
        write_dicom_seg(empty, series, tmp_path / "empty.dcm", [], "TumorSeg test", "1")
    assert "empty" in _one_line_error(excinfo)
    _no_files_but(tmp_path, set())


def test_empty_and_absent_segments_are_written(oblique, tmp_path):
    """Nothing found is a result: described segments are written without voxels (as in a .seg.nrrd)."""
    series = oblique[2]
    empty = sitk.Image(series.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(series.image)
    only_tumor = sitk.Image(_labels_on(series.image) == 1)
    for labels, name in ((empty, "empty.dcm"), (only_tumor, "tumor.dcm")):
        out = write_dicom_seg(labels, series, tmp_path / name, SEGMENTS, "TumorSeg test", "1")
        _assert_dciodvfy_clean(out)
        read, segments = read_dicom_seg(out, series.image)
        assert np.array_equal(_array(read), _array(labels))
        _assert_segments(segments, SEGMENTS)


def test_other_label_values_become_segment_numbers(oblique, tmp_path):
    series = oblique[2]
    array = _array(_labels_on(series.image)) * 3  # values 3 and 6
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(series.image)
    out = write_dicom_seg(labels, series, tmp_path / "values.dcm", [SegmentInfo(6, "Six")], "TumorSeg test", "1")
    read, segments = read_dicom_seg(out, series)
    assert np.array_equal(_array(read), array // 3)
    assert [(s.value, s.name) for s in segments] == [(1, "Segment_3"), (2, "Six")]


def test_overlapping_segments_keep_the_higher_number(oblique, tmp_path, caplog):
    """A SEG from another tool may overlap: the higher segment number wins, with a warning."""
    series = oblique[2]
    masks = np.zeros((*SHAPE_ZYX, 2), bool)
    masks[2:6, 5:15, 5:15, 0] = True
    masks[4:8, 10:20, 10:20, 1] = True
    algorithm = highdicom.AlgorithmIdentificationSequence("other", highdicom.sr.CodedConcept(
        "123110", "DCM", "Artificial Intelligence"), "1")
    descriptions = [highdicom.seg.SegmentDescription(
        n, f"s{n}", highdicom.sr.CodedConcept("85756007", "SCT", "Tissue"),
        highdicom.sr.CodedConcept("85756007", "SCT", "Tissue"), "AUTOMATIC", algorithm) for n in (1, 2)]
    seg = highdicom.seg.Segmentation(
        list(series.datasets), masks, "BINARY", descriptions, highdicom.UID(), 9, highdicom.UID(), 1, "x", "x", "1", "1")
    seg.save_as(tmp_path / "overlap.dcm")
    with caplog.at_level("WARNING", logger="tumorseg_core.dicom.seg_read"):
        read, segments = read_dicom_seg(tmp_path / "overlap.dcm", series.image)
    expected = np.where(masks[..., 1], 2, np.where(masks[..., 0], 1, 0))
    assert np.array_equal(_array(read), expected)
    assert f"overlap in {int(np.count_nonzero(masks.all(axis=-1)))} voxels" in caplog.text
    assert [s.name for s in segments] == ["s1", "s2"]


def test_a_failed_write_leaves_no_file(oblique, tmp_path, monkeypatch):
    series = oblique[2]

    def half_written(self, filename, **kwargs):
        Path(filename).write_bytes(b"DICM partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(highdicom.seg.Segmentation, "save_as", half_written)
    with pytest.raises(TumorSegError) as excinfo:
        write_dicom_seg(_labels_on(series.image), series, tmp_path / "full.dcm", SEGMENTS, "TumorSeg test", "1")
    assert "no space left" in _one_line_error(excinfo)
    _no_files_but(tmp_path, set())
    with pytest.raises(TumorSegError, match="ending in .dcm"):
        write_dicom_seg(_labels_on(series.image), series, tmp_path / "out.nii.gz", SEGMENTS, "TumorSeg test", "1")


def test_files_that_are_not_a_seg(tmp_path, oblique):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not DICOM at all")
    with pytest.raises(InputError) as excinfo:
        read_label_file(garbage)
    assert "not a DICOM Segmentation" in _one_line_error(excinfo)
    with pytest.raises(InputError) as excinfo:
        read_dicom_seg(garbage)
    assert "could not read" in _one_line_error(excinfo)
    with pytest.raises(InputError) as excinfo:
        read_dicom_seg(oblique[1].files[0])  # a CT image
    _one_line_error(excinfo)
    with pytest.raises(InputError, match="does not exist"):
        read_label_file(tmp_path / "missing.seg.nrrd")


def test_a_labelmap_seg_is_read(oblique, tmp_path):
    """DICOM's newer Label Map Segmentation Storage (highdicom LABELMAP) reads like a BINARY SEG."""
    series = oblique[2]
    labels = _labels_on(series.image)
    algorithm = highdicom.AlgorithmIdentificationSequence("other", highdicom.sr.CodedConcept(
        "123110", "DCM", "Artificial Intelligence"), "1")
    descriptions = [segment_description(info.value, info, algorithm, "AUTOMATIC") for info in SEGMENTS]
    seg = highdicom.seg.Segmentation(list(series.datasets), _array(labels), "LABELMAP", descriptions,
                                     highdicom.UID(), 9, highdicom.UID(), 1, "x", "x", "1", "1")
    seg.save_as(tmp_path / "labelmap.dcm")
    assert is_dicom_seg(tmp_path / "labelmap.dcm")
    read, segments = read_label_file(tmp_path / "labelmap.dcm", series)
    assert np.array_equal(_array(read), _array(labels))
    assert [(s.name, s.terminology) for s in segments] == [(s.name, s.terminology) for s in SEGMENTS]


def test_label_file_stored_as_float_keeps_its_segments(tmp_path):
    """A .seg.nrrd whose voxels are floats (whole numbers) is cast to integers with its header's segments kept."""
    from tumorseg_core.imaging.segments import SegmentInfo as Info

    arr = np.zeros((6, 7, 8), np.uint8)
    arr[1:3, 2:4, 2:5] = 1
    arr[4, 5, 6] = 2
    labels = sitk.GetImageFromArray(arr)
    labels.SetSpacing((0.8, 0.9, 2.5))
    path = io.write_labelmap(labels, tmp_path / "ints.seg.nrrd", segments=[Info(1, "Tumor"), Info(2, "Node")])
    stored = sitk.ReadImage(str(path))
    as_float = sitk.Cast(stored, sitk.sitkFloat32)
    for key in stored.GetMetaDataKeys():
        as_float.SetMetaData(key, stored.GetMetaData(key))
    sitk.WriteImage(as_float, str(tmp_path / "floats.seg.nrrd"))
    read, segments = read_label_file(tmp_path / "floats.seg.nrrd")
    assert [(s.value, s.name) for s in segments] == [(1, "Tumor"), (2, "Node")]
    assert read.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), arr)
