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

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from effect_helpers import (  # noqa: E402
    GEOMETRIES,
    REPO,
    SET,
    add_segment,
    dice,
    exported,
    gb,
    lesion_truth,
    load_volume,
    phantom_with_lesions,
    ras,
    ras_grid_points,
    regions,
    roi_node,
    setup_effect,
)

from tumorseg_core.synthetic import make_phantom  # noqa: E402

logger = logging.getLogger(__name__)
SegNode = slicer.vtkMRMLSegmentationNode
EditorNode = slicer.vtkMRMLSegmentEditorNode


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
    from tumorseg_core.interactive.seeds import segment_from_seeds

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
    from tumorseg_core.interactive.seeds import segment_from_seeds

    phantom = phantom_with_lesions(21, lesion_radius_mm=(8, 8), **GEOMETRIES[geometry])
    source = load_volume(scene, phantom.image, tmp_path, "fidelity")
    effect, seg, sid = setup_effect(scene, source)
    center = phantom.lesions[0].center_lps
    effect.seed_click(ras(center))
    core = sitk.GetArrayFromImage(segment_from_seeds(phantom.image, [center]).labels) > 0
    assert core.sum() > 0
    assert np.array_equal(exported(scene, seg, sid, source), core)


def test_effect_logic_imports_on_slicer_releases_without_the_segment_editor_vtk_logic():
    """Slicer 5.6-5.8 have no vtkSlicerSegmentEditorLogic: the effect (which routes edits
    through the Qt effect there) must still import its logic and map its modes."""
    code = (
        "import sys, slicer\n"
        f"sys.path.insert(0, {str(REPO / 'TumorSegmentation')!r})\n"
        "del slicer.vtkSlicerSegmentEditorLogic\n"
        "from TumorSegmentationLib import effect_logic as el\n"
        "assert (el.SET, el.ADD) == ('Set', 'Add')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Where the VTK logic exists, the names are its modes.
    from TumorSegmentationLib import effect_logic as el

    modes = slicer.vtkSlicerSegmentEditorLogic
    assert getattr(modes, "ModificationMode" + el.SET) == SET == modes.ModificationModeSet
    assert getattr(modes, "ModificationMode" + el.ADD) == modes.ModificationModeAdd
