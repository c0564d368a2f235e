"""The Tumor effect's Auto mode (model run through the Logic's worker) on real slicer-core MRML.

Volumes are written to disk and read back by Slicer's own ``vtkMRMLVolumeArchetypeStorageNode``;
results are compared on the source grid after ``ExportSegmentsToLabelmapNode``, which is
independent of the effect's own mask helpers.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from effect_helpers import (  # noqa: E402
    SET,
    TumorEffectLogic,
    add_segment,
    exported,
    ras_grid_points,
    regions,
    roi_node,
)

EditorNode = slicer.vtkMRMLSegmentEditorNode


# ---------------------------------------------------------------------- Auto mode

@pytest.fixture
def auto_scene():
    """A scene for the Auto tests, left open at teardown.

    Closing a scene shuts the shared Logic's worker down; these tests keep it warm across
    tests instead (the scene-close shutdown path is covered in test_logic.py).
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
