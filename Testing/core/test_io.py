"""Reading (checks, DICOM, channels) and atomic writing (images, label maps, .seg.nrrd)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.imaging import io
from tumorseg_core.imaging.geometry import same_grid
from tumorseg_core.imaging.segments import SegmentInfo, terminology_string

TUMOR_TERMINOLOGY = {
    "category": ["SCT", "49755003", "Morphologically Altered Structure"],
    "type": ["SCT", "108369006", "Neoplasm"],
}
OBLIQUE = dict(spacing=(0.7, 0.8, 2.5), origin=(-1200.0, 800.0, 3000.0))


@pytest.fixture
def volume(make_image, rotation_direction):
    """A (6, 7, 8) zyx float32 volume with an oblique, far-away, anisotropic geometry."""
    array = np.random.default_rng(0).normal(100, 20, (6, 7, 8)).astype(np.float32)
    return make_image(array, direction=rotation_direction("z", 30.0), **OBLIQUE)


@pytest.fixture
def labelmap(make_image):
    array = np.zeros((6, 7, 8), dtype=np.uint8)
    array[1:4, 2:5, 3:7] = 1
    array[4, 5, 6] = 2
    return make_image(array, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), pixel_type=sitk.sitkUInt8, **OBLIQUE)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_image_round_trip(ext, volume, tmp_path):
    path = io.write_image(volume, tmp_path / f"img{ext}")
    back = io.read_image(path)
    assert same_grid(back, volume, tol=1e-4)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(volume))
    assert sorted(os.listdir(tmp_path)) == [f"img{ext}"], "no temporary files left behind"
    assert io.to_float32(back).GetPixelID() == sitk.sitkFloat32


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_labelmap_round_trip(ext, labelmap, tmp_path):
    path = io.write_labelmap(labelmap, tmp_path / f"labels{ext}")
    back = sitk.ReadImage(str(path))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert same_grid(back, labelmap, tol=1e-4)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labelmap))


def test_seg_nrrd_reads_back_with_slicerio(labelmap, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    segments = [SegmentInfo(1, "Tumor", (0.9, 0.3, 0.2), TUMOR_TERMINOLOGY),
                SegmentInfo.from_dict({"value": 2, "name": "Edema", "color": [0.2, 0.6, 0.9],
                                       "terminology": dict(TUMOR_TERMINOLOGY, modifier=["SCT", "24028007", "Right"])})]
    path = io.write_labelmap(labelmap, tmp_path / "result.seg.nrrd", segments)

    # SimpleITK sees the exact grid and voxels.
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == labelmap.GetSize() and back.GetOrigin() == labelmap.GetOrigin()
    assert back.GetSpacing() == labelmap.GetSpacing() and back.GetDirection() == labelmap.GetDirection()
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labelmap))

    seg = slicerio.read_segmentation(str(path))
    by_name = {s["name"]: s for s in seg["segments"]}
    assert set(by_name) == {"Tumor", "Edema"}
    assert by_name["Tumor"]["labelValue"] == 1 and by_name["Edema"]["labelValue"] == 2
    assert np.allclose(by_name["Tumor"]["color"], (0.9, 0.3, 0.2))
    assert by_name["Tumor"]["terminology"]["type"] == ["SCT", "108369006", "Neoplasm"]
    assert by_name["Edema"]["terminology"]["typeModifier"] == ["SCT", "24028007", "Right"]
    assert seg["masterRepresentation"] == "Binary labelmap"
    # slicerio's IJK-to-LPS matrix equals the image geometry; its voxels are (i, j, k).
    expected = np.eye(4)
    expected[:3, :3] = np.asarray(labelmap.GetDirection()).reshape(3, 3) * np.asarray(labelmap.GetSpacing())
    expected[:3, 3] = labelmap.GetOrigin()
    assert np.allclose(seg["ijkToLPS"], expected)
    assert np.array_equal(seg["voxels"], sitk.GetArrayViewFromImage(labelmap).transpose(2, 1, 0))


def test_seg_nrrd_loads_as_slicer_segmentation(labelmap, tmp_path):
    slicer = pytest.importorskip("slicer")
    vtk = pytest.importorskip("vtk")
    path = io.write_labelmap(labelmap, tmp_path / "result.seg.nrrd", [SegmentInfo(1, "Tumor", (0.9, 0.3, 0.2),
                                                                                      TUMOR_TERMINOLOGY)])
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2  # label 2 gets an automatic segment
    tumor = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Tumor"))
    assert np.allclose(tumor.GetColor(), (0.9, 0.3, 0.2), atol=1e-5)
    tag = vtk.mutable("")
    assert tumor.GetTag("TerminologyEntry", tag) and "SCT^108369006^Neoplasm" in str(tag)
    matrix = vtk.vtkMatrix4x4()
    tumor.GetRepresentation("Binary labelmap").GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(ijk_to_ras[:3, 3], [1200.0, -800.0, 3000.0])  # LPS origin -> RAS
    assert np.allclose(np.diag(ijk_to_ras)[:3], [0.7, 0.8, 2.5])  # LPS diag(-1,-1,1) -> RAS identity


def test_seg_nrrd_without_segments_names_every_label(labelmap, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    seg = slicerio.read_segmentation(str(io.write_labelmap(labelmap, tmp_path / "auto.seg.nrrd")))
    assert [s["name"] for s in seg["segments"]] == ["Segment_1", "Segment_2"]
    assert all(0 <= c <= 1 for s in seg["segments"] for c in s["color"])


def _write_dicom_series(folder, array_zyx, spacing, origin, series_uid, description):
    """Write a CT-like int16 series one slice per file with the tags a scanner would set."""
    volume = sitk.GetImageFromArray(array_zyx.astype(np.int16))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        slice_k = volume[:, :, k]
        for tag, value in [
            ("0008|0060", "CT"), ("0020|000e", series_uid), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0008|103e", description), ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k + 1)),
            ("0020|0032", "\\".join(str(v) for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))),
            ("0008|0018", f"{series_uid}.{k + 1}"), ("0028|1053", "1"), ("0028|1052", "0"),
        ]:
            slice_k.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{description}_{k:03d}.dcm"))
        writer.Execute(slice_k)


def test_dicom_series_largest_is_read(tmp_path, caplog):
    rng = np.random.default_rng(3)
    big = rng.integers(-100, 400, (5, 12, 10))
    _write_dicom_series(tmp_path, big, (0.8, 0.8, 2.0), (-50.0, 20.0, 100.0), "1.2.826.0.1.3680043.2.1125.11", "big")
    _write_dicom_series(tmp_path, rng.integers(0, 50, (3, 12, 10)), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0),
                        "1.2.826.0.1.3680043.2.1125.22", "small")
    with caplog.at_level("INFO", logger="tumorseg_core.imaging.io"):
        image = io.read_image(tmp_path)
    assert "2 DICOM series" in caplog.text
    assert image.GetSize() == (10, 12, 5)
    assert np.allclose(image.GetSpacing(), (0.8, 0.8, 2.0)) and np.allclose(image.GetOrigin(), (-50.0, 20.0, 100.0))
    assert np.array_equal(sitk.GetArrayViewFromImage(image), big)


def test_read_channels_splits_4d(tmp_path, make_image):
    channels = [make_image(np.random.default_rng(c).random((4, 5, 6)).astype(np.float32), spacing=(1.0, 2.0, 3.0),
                           origin=(4.0, 5.0, 6.0)) for c in range(3)]
    four_d = sitk.JoinSeries(channels)
    sitk.WriteImage(four_d, str(tmp_path / "multi.nii.gz"))
    with pytest.raises(InputError, match="its own 3D file") as error:
        io.read_image(tmp_path / "multi.nii.gz")
    assert "use read_channels" not in str(error.value) and "fslsplit" in str(error.value)
    back = io.read_channels(tmp_path / "multi.nii.gz")
    assert len(back) == 3
    for original, channel in zip(channels, back):
        assert channel.GetDimension() == 3 and same_grid(channel, original)
        assert np.array_equal(sitk.GetArrayViewFromImage(channel), sitk.GetArrayViewFromImage(original))
    vector = sitk.Compose(channels[:2])
    sitk.WriteImage(vector, str(tmp_path / "vector.nrrd"))
    assert len(io.read_channels(tmp_path / "vector.nrrd")) == 2
    assert len(io.read_channels(io.write_image(channels[0], tmp_path / "one.mha"))) == 1


def test_read_images_accepts_paths_and_images(tmp_path, volume):
    path = io.write_image(volume, tmp_path / "a.nrrd")
    images = io.read_images([path, volume, str(path)])
    assert len(images) == 3 and all(isinstance(im, sitk.Image) for im in images)
    with pytest.raises(InputError, match="no input images"):
        io.read_images([])
    with pytest.raises(InputError, match="input 1 is a int"):
        io.read_images([3])


@pytest.mark.parametrize(
    "array, match",
    [
        (np.full((4, 5, 6), 7.0, dtype=np.float32), "empty/constant"),
        (np.where(np.arange(120).reshape(4, 5, 6) % 7 == 0, np.nan, 1.0).astype(np.float32), r"18 NaN and 0 Inf"),
        (np.where(np.arange(120).reshape(4, 5, 6) == 3, np.inf, 1.0).astype(np.float32), r"0 NaN and 1 Inf"),
        (np.random.default_rng(0).random((1, 5, 6)).astype(np.float32), "single slice"),
    ],
)
def test_bad_images_raise_input_error(array, match, tmp_path):
    path = tmp_path / "bad.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match=match) as info:
        io.read_image(path)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=match):
        io.read_images([sitk.GetImageFromArray(array)])


def test_2d_missing_and_unreadable_raise_input_error(tmp_path):
    path = tmp_path / "slice.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(30, dtype=np.uint8).reshape(5, 6)), str(path))
    with pytest.raises(InputError, match="is 2D"):
        io.read_image(path)
    with pytest.raises(InputError, match="does not exist") as info:
        io.read_image(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(info.value)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="could not read") as info:
        io.read_image(garbage)
    assert "garbage.nii.gz" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="without a DICOM series"):
        io.read_image(tmp_path / "empty_dir")


def test_unknown_extension(labelmap, tmp_path):
    with pytest.raises(TumorSegError, match=r"\.seg\.nrrd, \.nii\.gz"):
        io.write_labelmap(labelmap, tmp_path / "out.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("failure", ["enospc", "itk"])
def test_failed_write_leaves_no_file(failure, labelmap, tmp_path, monkeypatch):
    target = tmp_path / "out.seg.nrrd"
    existing = tmp_path / "kept.nii.gz"
    existing.write_bytes(b"previous result")

    def failing_write(image, filename, compress):
        with open(filename, "wb") as handle:  # a partial file, as a full disk would leave
            handle.write(b"NRRD0004 partial")
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute:\nDescription: Could not write file")

    monkeypatch.setattr(io, "_sitk_write", failing_write)
    message = "no space left on device; free space" if failure == "enospc" else "Could not write file"
    with pytest.raises(TumorSegError, match=message) as info:
        io.write_labelmap(labelmap, target)
    assert "\n" not in str(info.value) and str(target) in str(info.value)
    with pytest.raises(TumorSegError, match=message):
        io.write_labelmap(labelmap, existing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.nii.gz"]
    assert existing.read_bytes() == b"previous result", "a failed write keeps the old file intact"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_write_into_read_only_folder(labelmap, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(TumorSegError, match="could not write"):
            io.write_labelmap(labelmap, folder / "out.nii.gz")
        assert not list(folder.iterdir())
    finally:
        folder.chmod(0o755)


def test_segment_info_and_terminology_string():
    assert terminology_string(TUMOR_TERMINOLOGY) == (
        "Segmentation category and type - TumorSeg~SCT^49755003^Morphologically Altered"
        " Structure~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^"
    )
    assert terminology_string(None) is None
    with pytest.raises(TumorSegError, match="RGB"):
        SegmentInfo(1, "Tumor", (255, 0, 0))
    with pytest.raises(TumorSegError, match="segment description"):
        SegmentInfo.from_dict({"name": "no value"})
    info = SegmentInfo.from_dict({"value": 3, "name": "Edema", "color": [0.2, 0.6, 0.9], "terminology": TUMOR_TERMINOLOGY})
    assert SegmentInfo.from_dict(info.to_dict()) == info
    with pytest.raises(TypeError, match="SegmentInfo"):
        io.write_labelmap(sitk.Image(4, 4, 4, sitk.sitkUInt8), "x.seg.nrrd", [{"value": 1, "name": "Tumor"}])
