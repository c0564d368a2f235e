"""Lesion measurements (tumorseg_core/measurement): analytic ellipsoids on anisotropic, oblique grids;
PET metrics against a brute-force reference; tables, pictures, bad input and the ``tumorseg measure`` CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import one_error_line, run_cli
from scipy import ndimage

from tumorseg_core.cli import main
from tumorseg_core.errors import InputError
from tumorseg_core.imaging.io import write_image, write_labelmap
from tumorseg_core.imaging.segments import SegmentInfo
from tumorseg_core.measurement import MeasurementTable, measure, measure_to_file
from tumorseg_core.measurement.pet import SUVPEAK_RADIUS_MM
from tumorseg_core.measurement.picture import render_png

SPACING = (0.8, 1.1, 2.5)
ROTATION = np.array(sitk.VersorTransform((0.3, 1.0, 0.2), 0.4).GetMatrix()).reshape(3, 3)


def _grid(size, spacing=SPACING, flip=False, origin=(12.0, -30.0, 7.0)) -> sitk.Image:
    """An empty uint8 image with an oblique direction (rotated; with ``flip`` also mirrored: det -1)."""
    direction = ROTATION @ np.diag([-1.0, 1.0, 1.0]) if flip else ROTATION
    image = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(origin)
    return image


def _lps_of_every_voxel(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS mm of every voxel centre, from ITK's own index-to-point mapping."""
    size = image.GetSize()
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
    origin = np.array(image.TransformIndexToPhysicalPoint((0, 0, 0)))
    steps = np.stack([np.array(image.TransformIndexToPhysicalPoint(tuple(int(v) for v in e))) - origin
                      for e in np.eye(3, dtype=int)], axis=1)
    return (origin + index @ steps.T).reshape(*size[::-1], 3)


def ellipsoid(a: float, b: float, c: float, theta: float = 0.0, flip: bool = False):
    """A label map of an ellipsoid with semi-axes a, b (in the slice plane, turned by ``theta``) and c
    (along the slice axis), centred on a voxel centre; returns (labels, centre LPS, direction)."""
    size = [int(2 * max(a, b, c) / s) + 8 for s in SPACING]
    image = _grid(size, flip=flip)
    centre = np.array(image.TransformIndexToPhysicalPoint([n // 2 for n in size]))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    along_axes = (_lps_of_every_voxel(image) - centre) @ direction  # mm along the grid's x, y, z axes
    u = math.cos(theta) * along_axes[..., 0] + math.sin(theta) * along_axes[..., 1]
    v = -math.sin(theta) * along_axes[..., 0] + math.cos(theta) * along_axes[..., 1]
    inside = (u / a) ** 2 + (v / b) ** 2 + (along_axes[..., 2] / c) ** 2 <= 1.0
    labels = sitk.GetImageFromArray(inside.astype(np.uint8))
    labels.CopyInformation(image)
    return labels, centre, direction


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    p = 1.6075  # Knud Thomsen's approximation, within 1.1 %
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


PLANE_DIAGONAL = math.hypot(SPACING[0], SPACING[1])
VOXEL_DIAGONAL = math.sqrt(sum(s * s for s in SPACING))


@pytest.mark.parametrize("a, b, c, theta, flip", [
    (18.0, 11.0, 14.0, 0.0, False),
    (18.0, 11.0, 14.0, 0.5, True),    # turned in the slice plane, mirrored grid
    (9.0, 6.0, 20.0, 1.0, False),     # longest along the slice axis: the 3D diameter is not RECIST's
])
def test_ellipsoid_volume_diameters_and_centroid(a, b, c, theta, flip):
    labels, centre, direction = ellipsoid(a, b, c, theta, flip)
    table = measure(labels)
    assert len(table) == 1
    row = table.rows[0]
    assert row.volume_mm3 == pytest.approx(4 / 3 * math.pi * a * b * c, rel=0.02)
    assert row.volume_ml == pytest.approx(row.volume_mm3 / 1000)
    assert abs(row.recist_long_mm - 2 * max(a, b)) <= PLANE_DIAGONAL
    assert abs(row.recist_short_mm - 2 * min(a, b)) <= PLANE_DIAGONAL
    assert abs(row.max_diameter_3d_mm - 2 * max(a, b, c)) <= VOXEL_DIAGONAL
    # the largest ellipse is on the central slice; slices whose ellipse is within a pixel diagonal of it may tie
    tie_mm = c * math.sqrt(1 - (1 - PLANE_DIAGONAL / (2 * max(a, b))) ** 2)
    assert abs(row.recist_slice - labels.GetSize()[2] // 2) * SPACING[2] <= tie_mm
    assert np.linalg.norm(np.array(row.centroid_lps) - centre) < 0.5
    # the endpoints are LPS points whose distances are the reported diameters, on the RECIST slice
    long_ends, short_ends = np.array(row.recist_long_ends_lps), np.array(row.recist_short_ends_lps)
    assert np.linalg.norm(long_ends[1] - long_ends[0]) == pytest.approx(row.recist_long_mm)
    assert np.linalg.norm(short_ends[1] - short_ends[0]) == pytest.approx(row.recist_short_mm)
    assert abs(np.dot(long_ends[1] - long_ends[0], short_ends[1] - short_ends[0])) < 1e-6 * row.recist_long_mm ** 2
    for point in (*long_ends, *short_ends):
        index = labels.TransformPhysicalPointToContinuousIndex(point.tolist())
        assert index[2] == pytest.approx(row.recist_slice, abs=1e-6)
    ends3d = np.array(row.max_diameter_3d_ends_lps)
    assert np.linalg.norm(ends3d[1] - ends3d[0]) == pytest.approx(row.max_diameter_3d_mm)
    # the LPS box of the voxel edges holds the ellipsoid: half extent along LPS axis i is |(D diag(a,b,c))_i|
    turn = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    half = np.linalg.norm(direction @ turn @ np.diag([a, b, c]), axis=1)
    assert np.all(np.array(row.bbox_min_lps) <= centre - half + VOXEL_DIAGONAL)
    assert np.all(np.array(row.bbox_max_lps) >= centre + half - VOXEL_DIAGONAL)
    assert np.all(np.array(row.bbox_max_lps) - np.array(row.bbox_min_lps) <= 2 * half + 2 * VOXEL_DIAGONAL)


def test_surface_area_and_sphericity_do_not_depend_on_the_direction():
    labels, _, _ = ellipsoid(18.0, 11.0, 14.0)
    row = measure(labels).rows[0]
    axis_aligned = sitk.Image(labels)
    axis_aligned.SetDirection(np.eye(3).ravel().tolist())
    same = measure(axis_aligned).rows[0]
    assert same.surface_mm2 == pytest.approx(row.surface_mm2, rel=1e-9)
    # marching cubes on a voxel mask follows its staircase: somewhat above the smooth surface, never below
    assert _ellipsoid_area(18.0, 11.0, 14.0) * 0.98 <= row.surface_mm2 <= _ellipsoid_area(18.0, 11.0, 14.0) * 1.25
    assert same.sphericity == pytest.approx(row.sphericity, rel=1e-9)
    # sphericity uses the mesh's own volume: never above 1, a voxelised sphere reads close to it
    smooth = math.pi ** (1 / 3) * (6 * 4 / 3 * math.pi * 18 * 11 * 14) ** (2 / 3) / _ellipsoid_area(18.0, 11.0, 14.0)
    assert smooth * 0.8 < row.sphericity < smooth
    sphere, _, _ = ellipsoid(7.0, 7.0, 7.0)
    assert 0.85 < measure(sphere).rows[0].sphericity <= 1.0
    tiny = sitk.Image(_grid((5, 5, 5)))
    tiny[2, 2, 2] = 1
    assert 0 < measure(tiny).rows[0].sphericity <= 1.0


def _two_label_map(flip: bool = True) -> sitk.Image:
    image = _grid((30, 24, 12), flip=flip)
    array = np.zeros((12, 24, 30), np.uint8)
    array[2:5, 3:9, 3:10] = 1        # label 1, big
    array[8:10, 15:18, 20:22] = 1    # label 1, small
    array[6, 18, 5] = array[7, 19, 6] = 1  # touching only at a corner: one lesion (26-connected)
    array[2:4, 15:20, 15:25] = 2
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    return labels


def test_lesions_are_26_connected_components_numbered_by_label_then_size():
    table = measure(_two_label_map(), segments=[SegmentInfo(1, "Tumor"), SegmentInfo(2, "Edema")])
    assert [(r.lesion_id, r.label, r.segment, r.voxels) for r in table] == [
        (1, 1, "Tumor", 3 * 6 * 7), (2, 1, "Tumor", 2 * 3 * 2), (3, 1, "Tumor", 2), (4, 2, "Edema", 2 * 5 * 10)]
    summaries = table.summaries()
    assert [(s.label, s.lesions) for s in summaries] == [(1, 3), (2, 1)]
    assert summaries[0].volume_ml == pytest.approx(sum(r.volume_ml for r in table.rows[:3]))
    assert [r.segment for r in measure(_two_label_map())] == ["label_1"] * 3 + ["label_2"]


def test_a_single_voxel_measures_its_own_diagonals_and_no_diameter_exceeds_the_3d_one():
    table = measure(_two_label_map())
    spacing = np.array(SPACING)
    single = sitk.Image(_grid((6, 6, 6)))
    single[2, 3, 4] = 1
    (row,) = measure(single).rows
    assert row.volume_mm3 == pytest.approx(float(np.prod(spacing)))
    assert row.recist_long_mm == pytest.approx(float(np.hypot(*spacing[:2])))
    assert row.max_diameter_3d_mm == pytest.approx(float(np.linalg.norm(spacing)))
    for lesion in (*table, row):
        assert lesion.recist_short_mm <= lesion.recist_long_mm + 1e-9
        assert lesion.recist_long_mm <= lesion.max_diameter_3d_mm + 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_diameters_equal_the_brute_force_largest_corner_distance(seed):
    rng = np.random.default_rng(seed)
    image = _grid((7, 6, 5), spacing=tuple(rng.uniform(0.5, 3.0, 3)), flip=bool(seed % 2))
    mask = ndimage.binary_dilation(rng.random((5, 6, 7)) > 0.93, iterations=1) & (rng.random((5, 6, 7)) > 0.2)
    labels = sitk.GetImageFromArray(mask.astype(np.uint8))
    labels.CopyInformation(image)
    rows = measure(labels).rows
    corners = np.array([[dx, dy, dz] for dx in (-0.5, 0.5) for dy in (-0.5, 0.5) for dz in (-0.5, 0.5)])
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    # the documented order: largest first, then by the first voxel in (z, y, x) order
    order = sorted(range(1, count + 1), key=lambda n: (-(components == n).sum(), tuple(np.argwhere(components == n)[0])))
    assert len(rows) == count >= 1
    for row, n in zip(rows, order):
        voxels = np.argwhere(components == n)
        assert row.voxels == len(voxels)
        points = np.array([labels.TransformContinuousIndexToPhysicalPoint((v[::-1] + c).tolist())
                           for v in voxels for c in corners])
        assert row.max_diameter_3d_mm == pytest.approx(np.linalg.norm(points[:, None] - points[None], axis=-1).max(),
                                                       rel=1e-9)
        slices = np.repeat(voxels[:, 0], len(corners))
        one_face = np.tile(corners[:, 2] < 0, len(voxels))  # in-plane distances: corners of one face
        per_slice = {}
        for z in np.unique(voxels[:, 0]):
            flat = points[(slices == z) & one_face]
            per_slice[int(z)] = np.linalg.norm(flat[:, None] - flat[None], axis=-1).max()
        assert row.recist_long_mm == pytest.approx(max(per_slice.values()), rel=1e-9)
        assert per_slice[row.recist_slice] == pytest.approx(row.recist_long_mm, rel=1e-9)
        assert row.recist_short_mm <= row.recist_long_mm + 1e-9 <= row.max_diameter_3d_mm + 2e-9


def test_segment_names_come_from_a_seg_nrrd_header(tmp_path):
    path = write_labelmap(_two_label_map(), tmp_path / "seg.seg.nrrd",
                          segments=[SegmentInfo(1, "Liver tumor"), SegmentInfo(2, "Cyst")])
    from tumorseg_core.dicom.labels import read_label_file

    assert {r.segment for r in measure(sitk.ReadImage(str(path)))} == {"Liver tumor", "Cyst"}  # the header
    labels, segments = read_label_file(path)  # the one reader: the segments, the header dropped
    assert {r.segment for r in measure(labels, segments=segments)} == {"Liver tumor", "Cyst"}


def test_intensity_statistics_on_the_image():
    labels = sitk.Image(_two_label_map())
    array = sitk.GetArrayFromImage(labels)
    values = np.zeros(array.shape)
    first = np.zeros(array.shape, bool)
    first[2:5, 3:9, 3:10] = True
    values[first] = np.arange(first.sum()) * 3.0 - 40.0  # -40, -37, ... in raster order
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(labels)
    row = measure(labels, image=image).rows[0]
    n = int(first.sum())
    assert row.intensity_mean == pytest.approx(-40.0 + 3.0 * (n - 1) / 2)
    assert row.intensity_min == -40.0 and row.intensity_max == pytest.approx(-40.0 + 3.0 * (n - 1))
    assert row.intensity_sd == pytest.approx(3.0 * math.sqrt((n * n - 1) / 12))
    for q in (5, 25, 50, 75, 95):  # linear interpolation between ranks: rank q/100 * (n - 1)
        assert getattr(row, f"intensity_p{q}") == pytest.approx(-40.0 + 3.0 * q / 100 * (n - 1))


# ----------------------------------------------------------------------------- PET


def _pet_case(seed=3):
    """A small oblique PET (SUV after factor 0.5) with a lesion touching the image border."""
    image = _grid((11, 9, 8), spacing=(2.0, 2.6, 3.2))
    rng = np.random.default_rng(seed)
    activity = rng.uniform(0.0, 12.0, size=(8, 9, 11))
    mask = np.zeros(activity.shape, bool)
    mask[0:4, 2:6, 0:5] = True
    mask[1, 3, 2] = False
    activity[mask] += 4.0
    pet = sitk.GetImageFromArray(activity)
    pet.CopyInformation(image)
    labels = sitk.GetImageFromArray(mask.astype(np.uint8))
    labels.CopyInformation(image)
    return labels, pet, mask, activity * 0.5


def test_suv_peak_mtv_and_tlg_equal_a_brute_force_reference():
    labels, pet, mask, suv = _pet_case()
    row = measure(labels, pet=pet, suv_factor=0.5).rows[0]
    points = _lps_of_every_voxel(pet)
    # SUVpeak: the largest mean over every voxel whose centre lies within the 1 mL sphere around a lesion voxel
    best = -np.inf
    for z, y, x in zip(*np.nonzero(mask)):
        inside = np.linalg.norm(points - points[z, y, x], axis=-1) <= SUVPEAK_RADIUS_MM
        best = max(best, suv[inside].mean())
    assert row.suv_peak == pytest.approx(best, rel=1e-9)
    assert SUVPEAK_RADIUS_MM == pytest.approx(10 * (3 / (4 * math.pi)) ** (1 / 3))
    voxel_ml = 2.0 * 2.6 * 3.2 / 1000
    lesion = [suv[z, y, x] for z, y, x in zip(*np.nonzero(mask))]
    suv_max = max(lesion)
    above41 = [v for v in lesion if v >= 0.41 * suv_max]
    above25 = [v for v in lesion if v >= 2.5]
    assert row.suv_max == pytest.approx(suv_max) and row.suv_mean == pytest.approx(np.mean(lesion))
    assert row.mtv41_ml == pytest.approx(len(above41) * voxel_ml)
    assert row.tlg41 == pytest.approx(len(above41) * voxel_ml * sum(above41) / len(above41))
    assert row.mtv25_ml == pytest.approx(len(above25) * voxel_ml)
    assert row.tlg25 == pytest.approx(len(above25) * voxel_ml * sum(above25) / len(above25))


def test_suv_peak_through_the_fft_path_equals_the_direct_one(monkeypatch):
    from tumorseg_core.measurement import pet as pet_module

    labels, pet, _mask, _suv = _pet_case(seed=5)
    direct = measure(labels, pet=pet, suv_factor=0.5).rows[0].suv_peak
    monkeypatch.setattr(pet_module, "_DIRECT_LIMIT", 0)
    assert measure(labels, pet=pet, suv_factor=0.5).rows[0].suv_peak == pytest.approx(direct, rel=1e-9)


# ----------------------------------------------------------------------------- grids, empty maps, files


def test_a_mask_on_another_grid_is_a_one_line_error_naming_both_grids():
    labels, _, _ = ellipsoid(8.0, 6.0, 7.0)
    image = sitk.Cast(labels, sitk.sitkFloat32) * 10.0
    other = sitk.Image(labels)
    other.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(InputError) as info:
        measure(other, image=image)
    message = str(info.value)
    assert "\n" not in message and "spacing (1, 1, 1)" in message and "spacing (0.8, 1.1, 2.5)" in message


def test_a_label_map_on_a_box_of_the_image_lattice_is_measured_on_the_full_grid():
    labels, _, _ = ellipsoid(8.0, 6.0, 7.0)
    image = sitk.Cast(labels, sitk.sitkFloat32) * 10.0 + 1.0
    cropped = labels[3:-2, 4:-1, 2:-2]  # how Slicer saves a cropped .seg.nrrd
    full, part = measure(labels, image=image).rows[0], measure(cropped, image=image).rows[0]
    assert part.volume_mm3 == full.volume_mm3 and part.recist_slice == full.recist_slice
    assert part.centroid_lps == pytest.approx(full.centroid_lps)
    larger = sitk.ConstantPad(labels, (2, 0, 1), (0, 3, 0))  # the same lattice, reaching past the image
    assert measure(larger, image=image).rows[0].volume_mm3 == full.volume_mm3
    larger[0, 0, 0] = 1  # a label outside the image cannot be measured there
    with pytest.raises(InputError, match="outside the image"):
        measure(larger, image=image)


def test_an_empty_mask_gives_an_empty_table(tmp_path):
    empty = _grid((10, 8, 6))
    table = measure(empty, image=sitk.Cast(empty, sitk.sitkFloat32) + 1.0)
    assert isinstance(table, MeasurementTable) and len(table) == 0
    table.to_csv(tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        assert "recist_long_mm" in header and list(reader) == []
    assert json.loads(table.to_json(tmp_path / "t.json").read_text())["lesions"] == []
    assert "no lesions" in table.to_text()


def test_csv_and_json_hold_every_value(tmp_path):
    labels, _, _ = ellipsoid(8.0, 6.0, 7.0, theta=0.3)
    image = sitk.Cast(labels, sitk.sitkFloat32) * 50.0 - 20.0
    table = measure(labels, image=image, segments=[SegmentInfo(1, "Tumor")])
    row = table.rows[0]
    assert measure_to_file(labels, image, tmp_path / "m.csv", segments=[SegmentInfo(1, "Tumor")]).is_file()
    with open(tmp_path / "m.csv", newline="") as handle:
        (read,) = list(csv.DictReader(handle))
    assert read["segment"] == "Tumor" and float(read["recist_long_mm"]) == pytest.approx(row.recist_long_mm)
    assert float(read["centroid_lps_S"]) == pytest.approx(row.centroid_lps[2])
    assert float(read["recist_short_ends_lps_2_P"]) == pytest.approx(row.recist_short_ends_lps[1][1])
    assert read["suv_max"] == ""
    document = json.loads(measure_to_file(labels, image, tmp_path / "m.json").read_text())
    assert document["lesions"][0]["intensity_p50"] == pytest.approx(row.intensity_p50)
    assert np.allclose(document["lesions"][0]["recist_long_ends_lps"], row.recist_long_ends_lps)
    assert document["segments"][0]["lesions"] == 1
    with pytest.raises(Exception, match="unknown extension"):
        measure_to_file(labels, image, tmp_path / "m.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.json"]  # no temp or probe file left


def test_picture_has_a_panel_per_lesion_with_both_diameters():
    import io

    from PIL import Image

    labels = _two_label_map()
    image = sitk.Cast(labels, sitk.sitkFloat32) * 30.0
    table = measure(labels, image=image)
    picture = Image.open(io.BytesIO(render_png(table, labels, image))).convert("RGB")
    pixels = np.asarray(picture).reshape(-1, 3)
    from tumorseg_core.measurement.picture import HEADER, LONG_RGB, PANEL, SHORT_RGB

    assert picture.size == (2 * (PANEL + 4) + 4, 2 * (PANEL + HEADER + 4) + 4)  # 4 lesions: 2 x 2
    for color in (LONG_RGB, SHORT_RGB):
        assert np.all(pixels == color, axis=1).sum() > 20
    empty = Image.open(io.BytesIO(render_png(measure(_grid((5, 5, 5))), _grid((5, 5, 5)))))
    assert empty.size[0] > 0


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def case_files(tmp_path):
    labels = _two_label_map()
    image = sitk.Cast(labels, sitk.sitkFloat32) * 40.0 + 5.0
    seg = write_labelmap(labels, tmp_path / "seg.seg.nrrd", segments=[SegmentInfo(1, "Tumor"), SegmentInfo(2, "Cyst")])
    return seg, write_image(image, tmp_path / "image.nrrd")


def test_cli_writes_csv_json_and_png(case_files, tmp_path, capsys):
    seg, image = case_files
    out = tmp_path / "out"
    out.mkdir()
    code = main(["measure", str(seg), "--image", str(image), "--csv", str(out / "m.csv"), "--json",
                 str(out / "m.json"), "--png", str(out / "m.png")])
    assert code == 0 and capsys.readouterr().out == ""
    assert sorted(p.name for p in out.iterdir()) == ["m.csv", "m.json", "m.png"]
    with open(out / "m.csv", newline="") as handle:
        assert [r["segment"] for r in csv.DictReader(handle)] == ["Tumor"] * 3 + ["Cyst"]
    assert len(json.loads((out / "m.json").read_text())["lesions"]) == 4
    assert (out / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_a_table_without_outputs(case_files, capsys):
    seg, image = case_files
    assert main(["measure", str(seg), "--image", str(image)]) == 0
    text = capsys.readouterr().out
    assert "long mm" in text and "Tumor" in text and "Cyst (label 2): 1 lesion(s)" in text


def test_cli_errors_exit_2_and_write_nothing(case_files, tmp_path):
    seg, _image = case_files
    other = sitk.Image((7, 7, 7), sitk.sitkFloat32)
    other[3, 3, 3] = 1.0
    wrong_grid = write_image(other, tmp_path / "other.nrrd")
    result = run_cli("measure", str(seg), "--image", str(wrong_grid), "--csv", str(tmp_path / "bad.csv"),
                     "--png", str(tmp_path / "bad.png"))
    assert "grid" in one_error_line(result)
    assert not (tmp_path / "bad.csv").exists() and not (tmp_path / "bad.png").exists()


def test_cli_pet_without_headers_names_the_tag(case_files, tmp_path, capsys):
    from pet_factory import SUV_HEADERS, write_pet_series

    labels = _two_label_map(flip=False)  # a DICOM series' grid is right-handed
    headers = {**SUV_HEADERS, "PatientWeight": None}
    activity = np.full(sitk.GetArrayViewFromImage(labels).shape, 5000.0)
    activity[0, 0, 0] = 9000.0
    folder = tmp_path / "pet"
    write_pet_series(folder, activity, labels.GetSpacing(), labels.GetOrigin(), labels.GetDirection(), headers)
    seg = write_labelmap(labels, tmp_path / "l.nii.gz")
    image = write_image(sitk.Cast(labels, sitk.sitkFloat32) + 1.0, tmp_path / "i.nii.gz")
    code = main(["measure", str(seg), "--image", str(image), "--pet", str(folder), "--json", str(tmp_path / "p.json")])
    assert code == 2 and not (tmp_path / "p.json").exists()
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "PatientWeight" in error and "--suv-factor" in error
    assert main(["measure", str(seg), "--image", str(image), "--pet", str(folder), "--suv-factor", "0.001",
                 "--json", str(tmp_path / "p.json")]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())["lesions"]
    assert rows[0]["suv_max"] == pytest.approx(5.0, rel=1e-3) and rows[0]["tlg41"] > 0
