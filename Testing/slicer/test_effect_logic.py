"""The Tumor effect's logic on real slicer-core MRML (segment editor logic, no mocks).

Volumes are written to disk and read back by Slicer's own ``vtkMRMLVolumeArchetypeStorageNode``;
results are compared on the source grid after ``ExportSegmentsToLabelmapNode``, which is
independent of the effect's own mask helpers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from tumorseg_core.synthetic import make_phantom  # noqa: E402

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
SLICER_DIR = REPO / "TumorSegmentation"
if str(SLICER_DIR) not in sys.path:
    sys.path.insert(0, str(SLICER_DIR))

from TumorSegmentationLib import effect_regions as regions  # noqa: E402
from TumorSegmentationLib import geometry_bridge as gb  # noqa: E402
from TumorSegmentationLib.effect_logic import SET, TumorEffectLogic  # noqa: E402

SegNode = slicer.vtkMRMLSegmentationNode
EditorNode = slicer.vtkMRMLSegmentEditorNode


# ---------------------------------------------------------------------- helpers

def load_volume(scene, image: sitk.Image, folder: Path, name: str, ext: str = ".nrrd"):
    """Write ``image`` and load it the way Slicer loads files."""
    path = folder / f"{name}{ext}"
    sitk.WriteImage(image, str(path))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    assert storage.ReadData(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def exported(scene, seg, segment_id: str, source) -> np.ndarray:
    """The segment as a boolean (z, y, x) array on the source volume's grid."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg, ids, labelmap, source)
    image, matrix = gb.volume_to_sitk(labelmap)
    source_image, source_matrix = gb.volume_to_sitk(source)
    assert np.allclose(matrix, source_matrix, atol=1e-4)
    scene.RemoveNode(labelmap)
    return sitk.GetArrayFromImage(image) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def ras(point_lps) -> tuple:
    return (-point_lps[0], -point_lps[1], point_lps[2])


def lesion_truth(phantom) -> np.ndarray:
    """Truth of the phantom's first lesion (its connected component)."""
    from scipy import ndimage

    truth = sitk.GetArrayFromImage(phantom.truth) > 0
    index = phantom.truth.TransformPhysicalPointToIndex(phantom.lesions[0].center_lps)
    components, _ = ndimage.label(truth)
    value = components[index[2], index[1], index[0]]
    assert value, "the lesion centre must be inside its truth"
    return components == value


def phantom_with_lesions(seed: int, n_lesions: int = 1, **options):
    """``make_phantom`` with exactly ``n_lesions`` placed (the generator drops lesions that do not fit)."""
    for attempt in range(40):
        phantom = make_phantom(seed + 1000 * attempt, n_lesions=n_lesions, **options)
        if len(phantom.lesions) == n_lesions:
            return phantom
    raise AssertionError(f"no phantom with {n_lesions} lesion(s) near seed {seed}")


def setup_effect(scene, source, name: str = "Tumor"):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    effect = TumorEffectLogic(scene)
    sid = effect.setup(seg, source)
    return effect, seg, sid


def add_segment(effect, seg, name: str, mask: np.ndarray) -> str:
    """A second segment holding ``mask`` (reference grid), written by the editor logic itself."""
    sid = seg.GetSegmentation().AddEmptySegment(name, name, (0.2, 0.5, 0.9))
    reference = effect.backend.referenceGeometry()
    effect.backend.logic.ModifySegmentByLabelmap(seg, sid, regions.mask_to_oriented(mask, reference), SET, True, True)
    return sid


OBLIQUE = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(np.pi / 6), -np.sin(np.pi / 6)],
                    [0.0, np.sin(np.pi / 6), np.cos(np.pi / 6)]])  # 30 degrees about x
GEOMETRIES = {
    "lps": {"size_xyz": (80, 80, 64), "spacing_xyz": (1.5, 1.5, 1.5)},
    "oblique30": {"size_xyz": (80, 80, 64), "spacing_xyz": (1.5, 1.5, 1.5), "direction": OBLIQUE.ravel()},
    "anisotropic": {"size_xyz": (128, 128, 40), "spacing_xyz": (0.9, 0.9, 3.0)},
}


@pytest.fixture
def lesion_case(scene, tmp_path):
    """An oblique phantom with one 12 mm-radius lesion, loaded, with the effect set up."""
    phantom = phantom_with_lesions(4, lesion_radius_mm=(12, 12), **GEOMETRIES["oblique30"])
    source = load_volume(scene, phantom.image, tmp_path, "phantom")
    effect, seg, sid = setup_effect(scene, source)
    return phantom, source, effect, seg, sid


# ---------------------------------------------------------------------- seed mode

def test_seed_click_dice_over_ten_phantoms(scene, tmp_path):
    """One click per lesion (8-40 mm diameter) on LPS, 30-degree oblique and anisotropic grids."""
    radii = np.geomspace(4.0, 20.0, 10)
    scores = []
    for i, radius in enumerate(radii):
        geometry = list(GEOMETRIES)[i % 3]
        phantom = phantom_with_lesions(100 + i, lesion_radius_mm=(radius, radius), **GEOMETRIES[geometry])
        source = load_volume(scene, phantom.image, tmp_path, f"phantom{i}")
        effect, seg, sid = setup_effect(scene, source)
        result = effect.seed_click(ras(phantom.lesions[0].center_lps))
        score = dice(exported(scene, seg, sid, source), lesion_truth(phantom))
        scores.append(score)
        logger.info("phantom %d %s radius %.1f mm %s: Dice %.3f (%s)", i, geometry, radius,
                    phantom.lesions[0].kind, score, result.message)
    logger.info("seed click Dice min %.3f median %.3f max %.3f", min(scores), float(np.median(scores)), max(scores))
    assert min(scores) >= 0.85, [round(s, 3) for s in scores]


def test_cli_seed_gives_the_same_voxels(scene, tmp_path):
    phantom = phantom_with_lesions(7, lesion_radius_mm=(9, 9), **GEOMETRIES["oblique30"])
    image_path = tmp_path / "case.nii.gz"
    sitk.WriteImage(phantom.image, str(image_path))
    source = load_volume(scene, phantom.image, tmp_path, "case_loaded", ext=".nii.gz")
    effect, seg, sid = setup_effect(scene, source)
    center = phantom.lesions[0].center_lps
    effect.seed_click(ras(center))

    out = tmp_path / "cli.nii.gz"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    seed = ",".join(f"{c:.6f}" for c in center)
    proc = subprocess.run([sys.executable, "-m", "tumorseg_core", "segment", str(image_path), f"--seed={seed}",
                           "-o", str(out)], cwd=REPO, env=env, capture_output=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr
    cli = sitk.ReadImage(str(out))
    assert np.allclose(gb.sitk_ijk_to_ras(cli), gb.volume_ijk_to_frame(source), atol=1e-4)
    ours = exported(scene, seg, sid, source)
    assert ours.sum() > 0
    assert np.array_equal(ours, sitk.GetArrayFromImage(cli) > 0)


def test_click_outside_lesion_is_bounded(scene, tmp_path):
    phantom = make_phantom(0, size_xyz=(80, 80, 64), lesion_free=True)
    source = load_volume(scene, phantom.image, tmp_path, "organ")
    effect, seg, sid = setup_effect(scene, source)
    result = effect.seed_click((0.0, 0.0, 0.0))
    assert result.bounded and "not look like a distinct lesion" in result.message
    volume_mm3 = exported(scene, seg, sid, source).sum() * np.prod(phantom.image.GetSpacing())
    assert 0 < volume_mm3 <= 4.0 / 3.0 * np.pi * 17.0 ** 3  # the 15 mm limit ball, plus a voxel


def test_shift_and_ctrl_clicks_and_undo_restore_exactly(lesion_case, scene):
    phantom, source, effect, seg, sid = lesion_case
    reference = effect.backend.referenceGeometry()
    far = np.zeros(regions.segment_mask(seg, sid, reference).shape, dtype=bool)
    far[2:6, 2:8, 2:8] = True  # content the user had before: must survive every click
    effect.backend.logic.ModifySegmentByLabelmap(seg, sid, regions.mask_to_oriented(far, reference), SET, True, True)
    before = exported(scene, seg, sid, source)
    center = np.array(phantom.lesions[0].center_lps)

    effect.seed_click(ras(center))
    first = exported(scene, seg, sid, source)
    assert (first & before).sum() == before.sum() and first.sum() > before.sum()
    effect.seed_click(ras(center + [2.0, 0.0, 0.0]), add=True)
    assert len(effect.seedsRas) == 2
    second = exported(scene, seg, sid, source)
    assert (second & before).sum() == before.sum()
    assert dice(second & ~before, lesion_truth(phantom)) >= 0.85

    effect.undo()
    assert np.array_equal(exported(scene, seg, sid, source), first)
    assert len(effect.seedsRas) == 1
    effect.undo()
    assert np.array_equal(exported(scene, seg, sid, source), before)
    assert effect.seedsRas == []


def test_background_click_removes_voxels_and_new_click_starts_over(lesion_case, scene):
    phantom, source, effect, seg, sid = lesion_case
    center = np.array(phantom.lesions[0].center_lps)
    effect.seed_click(ras(center))
    lesion = exported(scene, seg, sid, source)
    # Background on the lesion's own edge: the grown region must not get bigger.
    effect.seed_click(ras(center + [0.0, 0.0, 30.0]), background=True)
    assert len(effect.backgroundRas) == 1
    assert exported(scene, seg, sid, source).sum() <= lesion.sum()
    effect.seed_click(ras(center))
    assert effect.backgroundRas == [] and len(effect.seedsRas) == 1
    assert np.array_equal(exported(scene, seg, sid, source), lesion)


# ---------------------------------------------------------------------- masking

@pytest.mark.parametrize("setting", ["outside_all", "inside_other", "overwrite_all", "overwrite_none", "intensity"])
def test_masking_settings_are_honoured(lesion_case, scene, setting):
    """The editor's masking rules apply to the seeded result exactly as for any other effect."""
    from tumorseg_core.interactive import segment_from_seeds

    phantom, source, effect, seg, sid = lesion_case
    center = phantom.lesions[0].center_lps
    core = sitk.GetArrayFromImage(segment_from_seeds(phantom.image, [center]).labels) > 0
    reference = effect.backend.referenceGeometry()
    other_mask = regions.sitk_to_reference_mask(phantom.truth, reference)
    other_mask[:, :, : int(np.nonzero(other_mask)[2].mean())] = False  # half of the lesion
    other = add_segment(effect, seg, "Other", other_mask)
    other_before = exported(scene, seg, other, source)
    assert other_before.sum() > 100 and (core & other_before).any() and (core & ~other_before).any()
    editor = effect.editorNode
    editor.SetSelectedSegmentID(sid)
    intensity = sitk.GetArrayFromImage(phantom.image)
    low, high = np.percentile(intensity[core], [30, 100])
    if setting == "outside_all":
        editor.SetMaskMode(SegNode.EditAllowedOutsideAllSegments)
    elif setting == "inside_other":
        editor.SetMaskMode(SegNode.EditAllowedInsideSingleSegment)
        editor.SetMaskSegmentID(other)
    elif setting == "overwrite_none":
        editor.SetOverwriteMode(EditorNode.OverwriteNone)
    elif setting == "intensity":
        editor.SetSourceVolumeIntensityMask(True)
        editor.SetSourceVolumeIntensityMaskRange(float(low), float(high))
    effect.seed_click(ras(center))
    tumor = exported(scene, seg, sid, source)
    other_after = exported(scene, seg, other, source)
    expected_tumor = {
        "outside_all": core & ~other_before,
        "inside_other": core & other_before,
        "overwrite_all": core,
        "overwrite_none": core,
        "intensity": core & (intensity >= low) & (intensity <= high),
    }[setting]
    assert expected_tumor.sum() > 0
    assert np.array_equal(tumor, expected_tumor)
    if setting == "overwrite_none" or setting == "outside_all":
        assert np.array_equal(other_after, other_before)
    else:  # the editor's default "overwrite all segments": Other gives up exactly the tumor's voxels
        assert np.array_equal(other_after, other_before & ~tumor)


# ---------------------------------------------------------------------- ROI

def roi_node(scene, center_ras, size):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
    roi.SetXYZ(*center_ras)
    roi.SetSize(*size)
    return roi


def ras_grid_points(source) -> np.ndarray:
    """RAS centres of the source voxels, (z, y, x, 3)."""
    matrix = gb.volume_ijk_to_frame(source)
    dims = source.GetImageData().GetDimensions()
    k, j, i = np.meshgrid(*(np.arange(n) for n in dims[::-1]), indexing="ij")
    return np.einsum("rc,zyxc->zyxr", matrix[:3, :3], np.stack([i, j, k], -1)) + matrix[:3, 3]


def test_roi_limits_the_seeded_result(lesion_case, scene):
    phantom, source, effect, seg, sid = lesion_case
    center = np.array(ras(phantom.lesions[0].center_lps))
    effect.roiNode = roi_node(scene, center + [0, 0, 5.0], (60.0, 60.0, 10.0))  # a slab through the lesion
    effect.seed_click(tuple(center))
    tumor = exported(scene, seg, sid, source)
    points = ras_grid_points(source)
    inside = np.all(np.abs(points - (center + [0, 0, 5.0])) <= [30.0, 30.0, 5.0 + 1e-6], axis=-1)
    assert tumor.sum() > 0 and not (tumor & ~inside).any()
    truth = lesion_truth(phantom) & inside
    assert dice(tumor, truth) >= 0.7
    with pytest.raises(Exception, match="outside the ROI"):
        effect.seed_click(tuple(center + [0, 0, 40.0]))


# ---------------------------------------------------------------------- refine

def test_refine_keeps_clicked_lesions(scene, tmp_path):
    phantom = phantom_with_lesions(11, 2, lesion_radius_mm=(7, 9), size_xyz=(80, 80, 64))
    source = load_volume(scene, phantom.image, tmp_path, "two")
    effect, seg, sid = setup_effect(scene, source)
    reference = effect.backend.referenceGeometry()
    both = regions.sitk_to_reference_mask(phantom.truth, reference)
    effect.backend.logic.ModifySegmentByLabelmap(seg, sid, regions.mask_to_oriented(both, reference), SET, True, True)
    from scipy import ndimage

    truth = sitk.GetArrayFromImage(phantom.truth) > 0
    components, _ = ndimage.label(truth)
    first, second = (components == components[tuple(reversed(phantom.truth.TransformPhysicalPointToIndex(
        lesion.center_lps)))] for lesion in phantom.lesions)
    a, b = (ras(lesion.center_lps) for lesion in phantom.lesions)

    effect.refine_click(a)
    assert np.array_equal(exported(scene, seg, sid, source), first)
    effect.refine_click(b, add=True)
    assert np.array_equal(exported(scene, seg, sid, source), truth)
    effect.refine_click(a, background=True)
    assert np.array_equal(exported(scene, seg, sid, source), second)
    effect.undo()
    assert np.array_equal(exported(scene, seg, sid, source), truth)
    result = effect.refine(background_ras=[b])
    assert result.changed and np.array_equal(exported(scene, seg, sid, source), first)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_effect_writes_exactly_what_the_core_computes(scene, tmp_path, geometry):
    """RAS click -> LPS -> core -> editor -> segment loses nothing, on every geometry."""
    from tumorseg_core.interactive import segment_from_seeds

    phantom = phantom_with_lesions(21, lesion_radius_mm=(8, 8), **GEOMETRIES[geometry])
    source = load_volume(scene, phantom.image, tmp_path, "fidelity")
    effect, seg, sid = setup_effect(scene, source)
    center = phantom.lesions[0].center_lps
    effect.seed_click(ras(center))
    core = sitk.GetArrayFromImage(segment_from_seeds(phantom.image, [center]).labels) > 0
    assert core.sum() > 0
    assert np.array_equal(exported(scene, seg, sid, source), core)


# ---------------------------------------------------------------------- Auto mode

@pytest.fixture
def auto_scene():
    """A scene for the Auto tests that is not closed at teardown.

    Closing a scene makes the shared Logic shut its worker down, and
    ``WorkerRunner._reap`` can then block closing the pipes its reader threads are
    still reading (reported); the Auto tests do not need the close, so they avoid it.
    """
    return slicer.vtkMRMLScene()


@pytest.fixture
def auto_case(auto_scene, helpers, threshold_package, logic):
    scene = auto_scene
    """A 30-degree oblique, anisotropic volume; segments Tumor (selected, empty) and Other."""
    spacing = (1.0, 1.2, 2.0)
    array = helpers.phantom((10, 18, 20))
    matrix = helpers.ijk_to_ras(helpers.rotation("z", 30) @ helpers.rotation("x", 10), spacing, (5.0, -3.0, 2.0))
    source = helpers.make_volume(scene, array, matrix, "T1c")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    effect = TumorEffectLogic(scene, segmentationLogic=logic)
    sid = effect.setup(seg, source)
    reference = effect.backend.referenceGeometry()
    other_mask = np.zeros(array.shape, dtype=bool)
    other_mask[3:7, 5:12, 4:15] = True  # overlaps the ball and its core
    other = add_segment(effect, seg, "Other", other_mask)
    effect.editorNode.SetSelectedSegmentID(sid)
    assert reference.GetExtent() == (0, 19, 0, 17, 0, 9)
    expected = helpers.expected_labels(array)
    return effect, seg, sid, other, source, str(threshold_package(spacing)), expected


def node_count(scene) -> int:
    """Segmentations and scalar volumes in the scene (the effect's temporary nodes are of these kinds)."""
    return sum(scene.GetNodesByClass(name).GetNumberOfItems()
               for name in ("vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode"))


def test_auto_writes_only_the_selected_segment(auto_case, auto_scene):
    scene = auto_scene
    effect, seg, sid, other, source, package, expected = auto_case
    effect.editorNode.SetOverwriteMode(EditorNode.OverwriteNone)
    other_before = exported(scene, seg, other, source)
    nodes_before, segments_before = node_count(scene), seg.GetSegmentation().GetNumberOfSegments()
    result = effect.run_auto(package, "cpu", output_label="Enhancing tumor")
    assert result.changed, result.message
    assert np.array_equal(exported(scene, seg, sid, source), expected == 2)
    assert np.array_equal(exported(scene, seg, other, source), other_before)
    assert seg.GetSegmentation().GetNumberOfSegments() == segments_before
    assert node_count(scene) == nodes_before  # the temporary result segmentation is gone
    effect.undo()
    assert not exported(scene, seg, sid, source).any()


def test_auto_default_label_and_overwrite(auto_case, auto_scene):
    scene = auto_scene
    effect, seg, sid, other, source, package, expected = auto_case
    other_before = exported(scene, seg, other, source)
    effect.run_auto(package, "cpu")  # the first label of the model: "Edema"
    tumor = exported(scene, seg, sid, source)
    assert np.array_equal(tumor, expected == 1)
    # Default editor setting "overwrite all segments": Other lost exactly the tumor voxels.
    assert np.array_equal(exported(scene, seg, other, source), other_before & ~tumor)


def test_auto_with_roi_changes_only_inside(auto_case, auto_scene):
    scene = auto_scene
    effect, seg, sid, other, source, package, expected = auto_case
    reference = effect.backend.referenceGeometry()
    points = ras_grid_points(source)
    roi = roi_node(scene, points[5, 9, 10], (3.0, 40.0, 40.0))  # a slab, axis-aligned in RAS, oblique to the grid
    inside = regions.roi_mask(reference, roi, seg)
    box = (np.abs(points - points[5, 9, 10]) <= [1.5, 20.0, 20.0]).all(axis=-1)
    assert np.array_equal(inside, box) and 0 < inside.sum() < inside.size
    outside_content = ~inside
    outside_content[:, 6:, :] = False  # some content outside the ROI, which must survive
    assert outside_content.any() and (expected == 2)[~inside].any()
    effect.backend.logic.ModifySegmentByLabelmap(seg, sid, regions.mask_to_oriented(outside_content, reference),
                                                 SET, True, True)
    effect.run_auto(package, "cpu", output_label=2, roi=roi)
    tumor = exported(scene, seg, sid, source)
    assert np.array_equal(tumor, ((expected == 2) & inside) | outside_content)


def test_auto_async_poll_and_cancel(auto_case, auto_scene):
    scene = auto_scene
    effect, seg, sid, other, source, package, expected = auto_case
    nodes_before = node_count(scene)
    finished = []
    assert effect.run_auto(package, "cpu", output_label=2, waitForCompletion=False,
                           completionCallback=finished.append) is None
    assert effect.isRunning
    effect.cancel()
    assert not effect.poll() and not effect.isRunning
    assert finished and not finished[0].changed
    assert not exported(scene, seg, sid, source).any() and node_count(scene) == nodes_before

    progress = []
    effect.run_auto(package, "cpu", output_label=2, waitForCompletion=False,
                    progressCallback=lambda f, m: progress.append(f), completionCallback=finished.append)
    import time

    deadline = time.monotonic() + 240
    while effect.poll():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert finished[-1].changed, finished[-1].message
    assert np.array_equal(exported(scene, seg, sid, source), expected == 2)
    assert node_count(scene) == nodes_before


def test_auto_unknown_label_leaves_segment(auto_case, auto_scene):
    scene = auto_scene
    effect, seg, sid, other, source, package, expected = auto_case
    result = effect.run_auto(package, "cpu", output_label="Necrosis")
    assert not result.changed and "no output label 'Necrosis'" in result.message
    assert not exported(scene, seg, sid, source).any()
