"""The Tumor effect's Live mode (effect_live.LivePreviewLogic) on real slicer-core MRML and a real worker.

A tiny random ``unet25d`` package (live_package.py) runs in the shared warm worker (the
``logic`` fixture). The source volume is oblique (30 degrees about z, 10 about x) and
anisotropic; slice views are aligned with it the way Slicer does it (``RotateToVolumePlane``).
The preview and the segment are compared on the source grid after Slicer's own
``ExportSegmentsToLabelmapNode``; the expected labels come from ``SliceSegmenter`` run directly.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from effect_helpers import SET, TumorEffectLogic, add_segment, exported, regions  # noqa: E402
from live_package import write_live_package  # noqa: E402
from TumorSegmentationLib import geometry_bridge as gb  # noqa: E402
from TumorSegmentationLib.effect_live import AXIS_NAMES, LivePreviewLogic, slice_under_mouse  # noqa: E402

from tumorseg_core.errors import InputError  # noqa: E402

SHAPE = (14, 30, 34)
OPTIONS = {"backend": "torch"}  # the reference below runs torch too: labels must agree exactly


@pytest.fixture(scope="module")
def live_package(tmp_path_factory):
    return write_live_package(tmp_path_factory.mktemp("live") / "live25d")


@pytest.fixture(scope="module")
def reference_slices(live_package):
    from tumorseg_core.inference.slice_mode import SliceSegmenter
    from tumorseg_core.modelpkg.package import open_package

    return SliceSegmenter(open_package(live_package), backend="torch")


@pytest.fixture
def case(helpers, logic, live_package):
    """Scene (left open: closing it would stop the shared worker), oblique anisotropic source, two segments."""
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    matrix = helpers.ijk_to_ras(helpers.rotation("z", 30) @ helpers.rotation("x", 10), (1.0, 1.2, 2.0),
                                (5.0, -3.0, 2.0))
    source = helpers.make_volume(scene, helpers.phantom(SHAPE), matrix, "T1c")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    effect = TumorEffectLogic(scene, segmentationLogic=logic)
    sid = effect.setup(seg, source)
    before = np.zeros(SHAPE, dtype=bool)
    before[2:4, 10:20, 10:20] = True  # the Tumor segment already holds something on other slices
    effect.backend.logic.ModifySegmentByLabelmap(
        seg, sid, regions.mask_to_oriented(before, effect.backend.referenceGeometry()), SET, True, True)
    other_mask = np.zeros(SHAPE, dtype=bool)
    other_mask[4:9, 5:25, 5:30] = True
    other = add_segment(effect, seg, "Other", other_mask)
    effect.editorNode.SetSelectedSegmentID(sid)
    effect.editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    view = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    view.SetLayoutName("Red")
    live = LivePreviewLogic(effect)
    yield scene, effect, live, seg, sid, other, source, matrix, view
    live.stop()


def _aim(view, source, matrix, orientation: str, ijk) -> np.ndarray:
    """Point the view at voxel ``ijk`` in ``orientation``, rotated to the volume's planes; returns the RAS point."""
    view.SetOrientation(orientation)
    view.RotateToVolumePlane(source)
    point = (matrix @ np.r_[np.asarray(ijk, dtype=float), 1.0])[:3]
    view.JumpSlice(*point)
    return point


def _node_ids(scene) -> set:
    """IDs of every node in the scene (the preview adds a segmentation and its display node)."""
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _preview_on_grid(scene, live, source) -> np.ndarray:
    node = live.previewNode
    return exported(scene, node, node.GetSegmentation().GetSegmentIDs()[0], source)


def test_preview_is_the_slice_models_labels_on_the_exact_voxels(case, live_package, reference_slices):
    scene, effect, live, seg, sid, other, source, matrix, view = case
    image = gb.volume_to_sitk(source)[0]
    user_before = (exported(scene, seg, sid, source), exported(scene, seg, other, source))
    live.start(str(live_package), "cpu", options=OPTIONS)
    voxel = (21, 11, 6)  # (i, j, k)
    seen = set()
    for orientation in ("Axial", "Coronal", "Sagittal"):
        point = _aim(view, source, matrix, orientation, voxel)
        assert live.request(view, point + 0.3)  # anywhere inside the voxel
        assert live.wait(120), live.message
        axis, index = live.preview
        seen.add(axis)
        numpy_axis = AXIS_NAMES.index(axis)
        assert index == voxel[::-1][numpy_axis]
        expected_labels = reference_slices.segment_slice(image, index, axis)
        np.testing.assert_array_equal(live.previewLabels, expected_labels)
        expected = np.zeros(SHAPE, dtype=bool)
        np.moveaxis(expected, numpy_axis, 0)[index] = expected_labels == 1
        assert 0 < expected.sum() < expected_labels.size, "the random network should give both labels here"
        np.testing.assert_array_equal(_preview_on_grid(scene, live, source), expected)
        assert "slice" in live.message and "\n" not in live.message
    assert seen == set(AXIS_NAMES)  # the three views show the three grid planes
    # The user's segments were never touched while previewing.
    assert np.array_equal(exported(scene, seg, sid, source), user_before[0])
    assert np.array_equal(exported(scene, seg, other, source), user_before[1])


def test_oblique_view_and_off_volume_are_refused(case, live_package):
    scene, effect, live, seg, sid, other, source, matrix, view = case
    live.start(str(live_package), "cpu", options=OPTIONS)
    view.SetOrientation("Axial")  # RAS axial: oblique to this rotated volume
    view.JumpSlice(*(matrix @ np.array([10.0, 10.0, 5.0, 1.0]))[:3])
    with pytest.raises(InputError, match="oblique"):
        live.request(view)
    assert "Rotate to volume plane" in live.message and not live.sentRequests
    point = _aim(view, source, matrix, "Axial", (10, 10, 5))
    assert not live.request(view, point + matrix[:3, 2] * 20)  # 20 slices above the volume
    assert live.preview is None and not live.sentRequests


def test_scrolling_sends_only_the_latest_request(case, live_package, reference_slices):
    scene, effect, live, seg, sid, other, source, matrix, view = case
    live.start(str(live_package), "cpu", options=OPTIONS)
    for k in (2, 3, 4, 5, 6):  # faster than the worker answers: one in flight, the latest pending
        point = _aim(view, source, matrix, "Axial", (10, 10, k))
        assert live.request(view, point)
    assert live.sentRequests == [("axial", 2)]
    assert live.wait(120), live.message
    assert live.sentRequests == [("axial", 2), ("axial", 6)]
    assert live.preview == ("axial", 6)
    assert not live.request(view, point)  # already shown: nothing sent
    assert len(live.sentRequests) == 2
    np.testing.assert_array_equal(live.previewLabels,
                                  reference_slices.segment_slice(gb.volume_to_sitk(source)[0], 6, "axial"))


def test_accept_adds_only_that_slice_and_undo_restores(case, live_package):
    scene, effect, live, seg, sid, other, source, matrix, view = case
    tumor_before, other_before = exported(scene, seg, sid, source), exported(scene, seg, other, source)
    live.start(str(live_package), "cpu", options=OPTIONS)
    with pytest.raises(InputError, match="nothing to accept"):
        live.accept()
    point = _aim(view, source, matrix, "Coronal", (12, 17, 6))
    live.request(view, point)
    assert live.wait(120), live.message
    assert live.preview == ("coronal", 17)
    preview = _preview_on_grid(scene, live, source)
    result = live.accept()
    assert result.changed and result.voxels == int(preview.sum()), result.message  # before masking
    tumor = exported(scene, seg, sid, source)
    # Overwrite "none": segments may overlap; the Other segment keeps all its voxels.
    assert (preview & other_before).any() and (preview & ~tumor_before).any()
    assert np.array_equal(tumor, tumor_before | preview)
    assert (tumor != tumor_before).any() and not (tumor != tumor_before)[:, :17].any()
    assert not (tumor != tumor_before)[:, 18:].any()
    assert np.array_equal(exported(scene, seg, other, source), other_before)
    effect.undo()
    assert np.array_equal(exported(scene, seg, sid, source), tumor_before)


def test_stop_leaves_the_scene_as_before(case, live_package):
    scene, effect, live, seg, sid, other, source, matrix, view = case
    nodes, segments = _node_ids(scene), seg.GetSegmentation().GetNumberOfSegments()
    live.start(str(live_package), "cpu", options=OPTIONS)
    live.request(view, _aim(view, source, matrix, "Sagittal", (9, 12, 4)))
    assert live.wait(120), live.message
    assert live.previewNode.GetID() in _node_ids(scene) - nodes
    temp = live._session["temp"]
    assert temp.is_dir()
    live.request(view, _aim(view, source, matrix, "Sagittal", (10, 12, 4)))  # in flight while stopping
    live.stop()
    assert not live.isActive and live.preview is None and not live.isBusy
    assert _node_ids(scene) == nodes and seg.GetSegmentation().GetNumberOfSegments() == segments
    assert not temp.exists()
    assert not effect.segmentationLogic.runner.busy  # the shared worker is free for Auto
    with pytest.raises(InputError, match="Live is off"):
        live.request(view)


def test_worker_error_is_one_line_and_changes_nothing(case, live_package, tmp_path):
    import shutil

    scene, effect, live, seg, sid, other, source, matrix, view = case
    tampered = tmp_path / "tampered25d"
    shutil.copytree(live_package, tampered)
    weights = next(p for p in tampered.iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    tumor_before = exported(scene, seg, sid, source)
    nodes = _node_ids(scene)
    live.start(str(tampered), "cpu", options=OPTIONS)  # the UI reads the manifest only; the worker checks hashes
    assert live.request(view, _aim(view, source, matrix, "Axial", (10, 10, 5)))
    assert live.wait(120)
    assert not live.isActive and live.preview is None
    assert live.message and "\n" not in live.message and "sha256" in live.message.lower(), live.message
    assert _node_ids(scene) == nodes
    assert np.array_equal(exported(scene, seg, sid, source), tumor_before)


def test_a_3d_model_is_refused_at_start(case, threshold_package):
    scene, effect, live, seg, sid, other, source, matrix, view = case
    with pytest.raises(InputError, match="2.5D"):
        live.start(str(threshold_package((1.0, 1.0, 1.0))), "cpu")
    assert not live.isActive


def test_slice_under_mouse_geometry():
    """Pure geometry: a flipped, anisotropic grid; views parallel to each plane; rounding to the nearest slice."""
    ijk_to_world = np.diag([-0.8, 1.5, 3.0, 1.0])
    ijk_to_world[:3, 3] = (10.0, -20.0, 5.0)
    shape = (6, 8, 9)
    axial = np.eye(4)
    axial[:3, 3] = (ijk_to_world @ [4.0, 2.0, 3.4, 1.0])[:3]
    assert slice_under_mouse(axial, ijk_to_world, shape) == ("axial", 3)
    sagittal = np.eye(4)
    sagittal[:3, :3] = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert slice_under_mouse(sagittal, ijk_to_world, shape, (ijk_to_world @ [7.6, 1, 1, 1])[:3]) == ("sagittal", 8)
    assert slice_under_mouse(sagittal, ijk_to_world, shape, (ijk_to_world @ [8.6, 1, 1, 1])[:3]) is None
    tilted = np.eye(4)
    c, s = np.cos(0.05), np.sin(0.05)
    tilted[:3, :3] = [[1, 0, 0], [0, c, -s], [0, s, c]]
    with pytest.raises(InputError, match="oblique"):
        slice_under_mouse(tilted, ijk_to_world, shape)


def test_live_runs_the_selected_2_5d_model_else_the_shipped_realtime_one(live_package, threshold_package, tmp_path):
    """``live_model_for`` reads real manifests: a 2.5D selection is kept; a 3D model, no selection
    or an unreadable one fall back to the shipped ``realtime`` model (which must exist)."""
    from TumorSegmentationLib.effect_live import LIVE_DEFAULT_MODEL, live_model_for

    from tumorseg_core.modelpkg.package import open_package, read_manifest

    def manifest_of(model: str):
        return read_manifest(model)

    assert live_model_for(str(live_package), manifest_of) == str(live_package)
    assert live_model_for(str(threshold_package((1.0, 1.0, 1.0))), manifest_of) == LIVE_DEFAULT_MODEL
    assert live_model_for(None, manifest_of) == LIVE_DEFAULT_MODEL
    assert live_model_for(str(tmp_path / "missing"), manifest_of) == LIVE_DEFAULT_MODEL
    assert open_package(LIVE_DEFAULT_MODEL).manifest.architecture == "unet25d"
