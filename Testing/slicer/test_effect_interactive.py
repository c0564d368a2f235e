"""The Tumor effect's Click / Box / Scribble logic (``effect_interactive``) on real slicer-core MRML, no mocks.

Volumes are written to disk and loaded by Slicer's own storage node; segments are compared
on the source grid after ``ExportSegmentsToLabelmapNode`` (independent of the effect's own
mask helpers). The lesion is made here: a ball whose two halves differ (bright and dim),
so one click in the bright half finds part of it and a second click must add the rest.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from effect_helpers import (  # noqa: E402
    OBLIQUE,
    add_segment,
    dice,
    exported,
    gb,
    load_volume,
    ras,
    ras_grid_points,
    regions,
    roi_node,
    setup_effect,
)

from tumorseg_core.errors import InputError  # noqa: E402

logger = logging.getLogger(__name__)
RADIUS_MM = 10.0
BRIGHT, DIM, TISSUE = 200.0, 90.0, 20.0
FLIP_RAS = np.diag([-1.0, -1.0, 1.0])  # an RAS-ordered file: LPS direction diag(-1, -1, 1)
GRIDS = {
    "lps": {"size": (48, 48, 40), "spacing": (1.0, 1.0, 1.0), "direction": np.eye(3)},
    "ras_flipped_anisotropic": {"size": (56, 56, 14), "spacing": (0.8, 0.8, 3.0), "direction": FLIP_RAS},
    "oblique_anisotropic": {"size": (48, 40, 24), "spacing": (1.0, 1.2, 2.0), "direction": OBLIQUE @ FLIP_RAS},
}


def lesion_image(grid: str, seed: int = 0) -> tuple:
    """(image, truth (z, y, x) bool, bright half (z, y, x) bool): a ball of radius 10 mm at LPS (0, 0, 0).

    Its L half (x > 0 in LPS) is BRIGHT, the R half DIM, in TISSUE with Gaussian noise.
    """
    spec = GRIDS[grid]
    size, spacing, direction = np.array(spec["size"]), np.array(spec["spacing"]), np.asarray(spec["direction"])
    origin = -direction @ ((size - 1) * spacing / 2.0)  # grid centre at (0, 0, 0)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    points = np.einsum("rc,zyxc->zyxr", direction * spacing, np.stack([i, j, k], -1)) + origin
    truth = np.linalg.norm(points, axis=-1) <= RADIUS_MM
    bright = truth & (points[..., 0] > 0)
    rng = np.random.default_rng(seed)
    array = np.where(bright, BRIGHT, np.where(truth, DIM, TISSUE)) + rng.normal(0.0, 4.0, truth.shape)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(tuple(map(float, spacing)))
    image.SetOrigin(tuple(map(float, origin)))
    image.SetDirection(tuple(map(float, direction.ravel())))
    return image, truth, bright


@pytest.fixture
def case(scene, tmp_path):
    """The lesion on an oblique anisotropic grid, loaded; the effect set up on a new segmentation."""
    image, truth, bright = lesion_image("oblique_anisotropic")
    source = load_volume(scene, image, tmp_path, "lesion")
    effect, seg, sid = setup_effect(scene, source)
    return source, effect, seg, sid, truth, bright


def deepest_miss(segment: np.ndarray, truth: np.ndarray, source) -> tuple:
    """RAS point of the missed lesion voxel farthest, in mm, from the segmentation (the simulated
    user's click in the middle of what was missed, as in ``benchmarks/interactive_vs_growcut.py``)."""
    from scipy import ndimage

    missed = truth & ~segment
    assert missed.any()
    spacing_zyx = np.array(source.GetSpacing())[::-1]
    depth = ndimage.distance_transform_edt(np.pad(missed, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    index = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return tuple(ras_grid_points(source)[index])


# ---------------------------------------------------------------------- clicks


def test_click_fills_segment_and_second_click_refines(case, scene):
    source, effect, seg, sid, truth, bright = case
    logic = effect.interactive
    result = logic.click(ras((RADIUS_MM / 2, 0.0, 0.0)))  # in the bright half
    first = exported(scene, seg, sid, source)
    assert result.changed and first.sum() > 0 and logic.interactions == 1
    first_dice = dice(first, truth)
    assert dice(first, bright) > 0.6
    result = logic.click(deepest_miss(first, truth, source))
    second = exported(scene, seg, sid, source)
    second_dice = dice(second, truth)
    logger.info("Dice after 1 click %.3f, after 2 clicks %.3f (%s)", first_dice, second_dice, result.message)
    assert logic.interactions == 2 and "2 clicks" in result.message
    assert second_dice > first_dice + 0.1 and second_dice >= 0.8
    assert (second & first).sum() >= 0.9 * first.sum()  # refined, not restarted
    # Oblique, anisotropic, RAS-flipped grid: the segment is the session's result voxel for voxel.
    session_result = logic._state.session.result
    assert np.allclose(gb.sitk_ijk_to_ras(session_result), gb.volume_ijk_to_frame(source), atol=1e-6)
    assert np.array_equal(second, sitk.GetArrayFromImage(session_result) > 0)


def test_background_click_removes_the_voxels_it_marks(case, scene):
    source, effect, seg, sid, truth, bright = case
    logic = effect.interactive
    logic.click(ras((0.2 * RADIUS_MM, 0.0, 0.0)))
    both = exported(scene, seg, sid, source)
    point = ras((0.8 * RADIUS_MM, 0.0, 0.0))  # inside the result, 6 mm from the foreground click
    ijk = np.linalg.solve(gb.volume_ijk_to_frame(source), [*point, 1.0])[:3]
    zyx = tuple(int(round(c)) for c in ijk[::-1])
    assert both[zyx]
    logic.press("Click", point, background=True)
    after = exported(scene, seg, sid, source)
    assert not after[zyx] and after.any()
    assert "1 background click" in logic.lastResult.message


# ---------------------------------------------------------------------- box and scribble


def test_box_from_roi_node(scene, tmp_path):
    image, truth, _ = lesion_image("lps")
    source = load_volume(scene, image, tmp_path, "lesion")
    effect, seg, sid = setup_effect(scene, source)
    roi = roi_node(scene, (0.0, 0.0, 0.0), (2.4 * RADIUS_MM,) * 3)
    result = effect.interactive.box_from_roi(roi)
    segment = exported(scene, seg, sid, source)
    inside = np.all(np.abs(ras_grid_points(source)) <= 1.2 * RADIUS_MM + 1e-6, axis=-1)
    logger.info("box from ROI: Dice %.3f (%s)", dice(segment, truth), result.message)
    precision = (segment & truth).sum() / max(segment.sum(), 1)
    logger.info("box from ROI: precision %.3f", precision)
    assert segment.sum() > 0 and not (segment & ~inside).any()
    assert precision >= 0.8 and "widened" not in result.message
    with pytest.raises(InputError, match="does not overlap"):
        effect.interactive.box_from_roi(roi_node(scene, (500.0, 0.0, 0.0), (10.0, 10.0, 10.0)))


def test_box_from_two_clicks_on_one_slice_and_rotated_roi_is_widened(case, scene):
    source, effect, seg, sid, truth, _ = case
    logic = effect.interactive
    noted = logic.press("Box", (-1.2 * RADIUS_MM, -1.2 * RADIUS_MM, 0.0))
    assert not noted.changed and logic.pendingCorner is not None and logic.interactions == 0
    assert not exported(scene, seg, sid, source).any()
    result = logic.press("Box", (1.2 * RADIUS_MM, 1.2 * RADIUS_MM, 0.0))  # same axial slice: depth is added
    segment = exported(scene, seg, sid, source)
    logger.info("two-click box: Dice %.3f (%s)", dice(segment, truth), result.message)
    assert logic.pendingCorner is None and logic.interactions == 1
    box = np.all(np.abs(ras_grid_points(source)[..., :2]) <= 1.2 * RADIUS_MM + 2.0, axis=-1)  # + widening
    assert segment.sum() > 0 and not (segment & ~box).any()
    assert (segment & truth).sum() >= 0.8 * segment.sum()
    assert "widened" in result.message  # a world-aligned box on an oblique volume
    with pytest.raises(InputError, match="no area"):
        logic.box((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))


def test_scribble_stroke_press_move_release(case, scene):
    source, effect, seg, sid, truth, _ = case
    logic = effect.interactive
    stroke = [ras((x, 0.0, 0.0)) for x in np.linspace(-0.7 * RADIUS_MM, 0.7 * RADIUS_MM, 8)]
    assert logic.press("Scribble", stroke[0]) is None
    for point in stroke[1:-1]:
        assert logic.move(point)
    result = logic.release(stroke[-1])
    segment = exported(scene, seg, sid, source)
    logger.info("scribble: Dice %.3f (%s)", dice(segment, truth), result.message)
    assert logic.strokeRas == [] and not logic.move(stroke[0])  # no stroke after release
    painted = [tuple(int(round(c)) for c in np.linalg.solve(gb.volume_ijk_to_frame(source), [*p, 1.0])[2::-1])
               for p in stroke]
    # The stroke's voxels are foreground: its RAS points reached the session at the right voxels.
    assert "1 scribble" in result.message and all(segment[zyx] for zyx in painted)
    assert (segment & truth).sum() >= 0.5 * segment.sum() and segment.sum() <= 3 * truth.sum()
    # A background stroke partly outside the volume: the outside part is dropped.
    logic.scribble([ras((0.0, 0.0, 500.0)), ras((0.0, 1.5 * RADIUS_MM, 0.0)), ras((0.0, 1.8 * RADIUS_MM, 0.0))],
                   foreground=False)
    assert logic.interactions == 2


# ---------------------------------------------------------------------- undo, other segments, sessions


def test_undo_restores_exactly_and_other_segments_are_untouched(case, scene):
    source, effect, seg, sid, truth, _ = case
    reference = effect.backend.referenceGeometry()
    mine = np.zeros(regions.segment_mask(seg, sid, reference).shape, dtype=bool)
    mine[1:3, 1:5, 1:5] = True  # what the user had in the selected segment: must survive
    effect.backend.logic.ModifySegmentByLabelmap(seg, sid, regions.mask_to_oriented(mine, reference),
                                                 slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet, True, True)
    other_mask = np.zeros_like(mine)
    other_mask[-4:-1, -8:-2, -8:-2] = True
    other = add_segment(effect, seg, "Other", other_mask)
    effect.editorNode.SetSelectedSegmentID(sid)
    before, other_before = exported(scene, seg, sid, source), exported(scene, seg, other, source)
    assert before.sum() > 0 and other_before.sum() > 0

    logic = effect.interactive
    logic.click(ras((RADIUS_MM / 2, 0.0, 0.0)))
    first = exported(scene, seg, sid, source)
    logic.click(ras((-RADIUS_MM / 2, 0.0, 0.0)))
    second = exported(scene, seg, sid, source)
    assert not np.array_equal(first, second) and (first & before).sum() == before.sum()
    assert (second & before).sum() == before.sum()

    logic.undo()
    assert np.array_equal(exported(scene, seg, sid, source), first) and logic.interactions == 1
    logic.click(ras((-RADIUS_MM / 2, 0.0, 0.0)))
    assert logic.interactions == 2
    effect.backend.undo()  # the editor's Undo: the session follows it on its next step
    assert np.array_equal(exported(scene, seg, sid, source), first)
    logic.undo()
    assert np.array_equal(exported(scene, seg, sid, source), before) and logic.interactions == 0
    assert not logic.undo().changed  # nothing left
    effect.backend.undo()  # Slicer's Undo takes back the last rewrite: the one-click result again
    assert np.array_equal(exported(scene, seg, sid, source), first)
    assert np.array_equal(exported(scene, seg, other, source), other_before)
    assert seg.GetSegmentation().GetNumberOfSegments() == 2


def test_roi_limits_clicks_box_and_undo(case, scene):
    """With an ROI selected (the one that limits Auto), Click / Box / Scribble change the segment
    only inside it: what the segment held outside stays, clicks outside it are refused."""
    source, effect, seg, sid, truth, bright = case
    reference = effect.backend.referenceGeometry()
    mine = np.zeros(regions.segment_mask(seg, sid, reference).shape, dtype=bool)
    mine[1:3, 1:5, 1:5] = True  # outside the ROI below: must survive
    effect.backend.logic.ModifySegmentByLabelmap(seg, sid, regions.mask_to_oriented(mine, reference),
                                                 slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet, True, True)
    before = exported(scene, seg, sid, source)
    roi = roi_node(scene, ras((0.6 * RADIUS_MM, 0.0, 0.0)), (1.2 * RADIUS_MM, 2.4 * RADIUS_MM, 2.4 * RADIUS_MM))
    effect.roiNode = roi  # the bright (L) half of the lesion: LPS x in [0, 12] mm
    inside = np.abs(ras_grid_points(source)[..., 0] + 0.6 * RADIUS_MM) <= 0.6 * RADIUS_MM + 1e-6
    inside &= np.all(np.abs(ras_grid_points(source)[..., 1:]) <= 1.2 * RADIUS_MM + 1e-6, axis=-1)
    assert not (before & inside).any()

    logic = effect.interactive
    with pytest.raises(InputError, match="outside the ROI"):
        logic.click(ras((-RADIUS_MM / 2, 0.0, 0.0)))  # the dim half, outside the ROI
    assert np.array_equal(exported(scene, seg, sid, source), before)
    logic.click(ras((RADIUS_MM / 2, 0.0, 0.0)))
    logic.box(ras((-1.2 * RADIUS_MM,) * 3), ras((1.2 * RADIUS_MM,) * 3))  # a box over the whole lesion
    after = exported(scene, seg, sid, source)
    assert (after & inside & truth).sum() > 0.5 * (inside & truth).sum()
    assert np.array_equal(after & ~inside, before & ~inside)  # nothing outside the ROI changed
    assert (logic._state.session.result is not None
            and (sitk.GetArrayFromImage(logic._state.session.result) > 0).sum() > after.sum())  # it was cut
    logic.undo()
    undone = exported(scene, seg, sid, source)
    assert np.array_equal(undone & ~inside, before & ~inside) and (undone & inside).any()


def test_new_segment_or_outside_edit_starts_a_new_session(case, scene):
    source, effect, seg, sid, truth, _ = case
    logic = effect.interactive
    logic.click(ras((RADIUS_MM / 2, 0.0, 0.0)))
    first = exported(scene, seg, sid, source)
    second_id = seg.GetSegmentation().AddEmptySegment("Second", "Second", (0.1, 0.9, 0.1))
    effect.editorNode.SetSelectedSegmentID(second_id)
    logic.click(ras((-RADIUS_MM / 2, 0.0, 0.0)))
    assert logic.interactions == 1  # a new session on the new segment
    second = exported(scene, seg, second_id, source)
    # The first segment only gives up what the second takes (the editor's "overwrite other segments").
    assert second.any() and np.array_equal(exported(scene, seg, sid, source), first & ~second)
    # Another tool edits the segment between two clicks: the edit is kept (it becomes the new base).
    effect.editorNode.SetSelectedSegmentID(sid)
    logic.click(ras((RADIUS_MM / 2, 0.0, 0.0)))
    reference = effect.backend.referenceGeometry()
    painted = regions.segment_mask(seg, sid, reference)
    painted[1:3, 1:4, 1:4] = True
    effect.backend.logic.ModifySegmentByLabelmap(seg, sid, regions.mask_to_oriented(painted, reference),
                                                 slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet, True, True)
    logic.click(ras((RADIUS_MM / 2, 2.0, 0.0)))
    assert logic.interactions == 1
    assert regions.segment_mask(seg, sid, reference)[1:3, 1:4, 1:4].all()


# ---------------------------------------------------------------------- geometry and bad input


@pytest.mark.parametrize("grid", ["lps", "ras_flipped_anisotropic"])  # oblique: test_click_fills_segment_...
def test_result_lands_exactly_on_the_source_voxels(scene, tmp_path, grid):
    image, truth, bright = lesion_image(grid)
    source = load_volume(scene, image, tmp_path, grid)
    effect, seg, sid = setup_effect(scene, source)
    logic = effect.interactive
    logic.click(ras((RADIUS_MM / 2, 0.0, 0.0)))
    session_image = logic._state.session.result
    assert np.allclose(gb.sitk_ijk_to_ras(session_image), gb.volume_ijk_to_frame(source), atol=1e-6)
    expected = sitk.GetArrayFromImage(session_image) > 0
    segment = exported(scene, seg, sid, source)
    logger.info("%s: Dice %.3f to the bright half", grid, dice(segment, bright))
    assert expected.sum() > 0 and np.array_equal(segment, expected)
    assert dice(segment, bright) >= 0.6


def test_bad_input_gives_one_line_and_leaves_the_segment(case, scene):
    source, effect, seg, sid, truth, _ = case
    logic = effect.interactive
    logic.click(ras((RADIUS_MM / 2, 0.0, 0.0)))
    before = exported(scene, seg, sid, source)
    for action in (lambda: logic.click((0.0, 0.0, 400.0)),
                   lambda: logic.scribble([(400.0, 0.0, 0.0), (401.0, 0.0, 0.0)]),
                   lambda: logic.click((float("nan"), 0.0, 0.0)),
                   lambda: logic.press("Lasso", (0.0, 0.0, 0.0)),
                   lambda: logic.box_from_roi(None)):
        with pytest.raises(InputError) as error:
            action()
        assert "\n" not in str(error.value) and str(error.value)
    assert logic.interactions == 1
    assert np.array_equal(exported(scene, seg, sid, source), before)
