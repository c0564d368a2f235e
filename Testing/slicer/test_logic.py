"""TumorSegmentationLogic on real slicer-core MRML scenes with a real (tiny) model in the worker.

The test network is an exact intensity threshold (see conftest), so every segment can
be compared voxel by voxel with the expected labelling, on the input's exact grid.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
import slow_worker  # noqa: E402
import vtk  # noqa: E402
from TumorSegmentationLib import TumorSegmentationLogic, geometry_bridge, terminology  # noqa: E402
from TumorSegmentationLib.logic import MODEL_TAG  # noqa: E402

from tumorseg_core.errors import CancelledError, InputError, TumorSegError  # noqa: E402

logger = logging.getLogger(__name__)
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _geometry_case(name, helpers, scene):
    """(volume node, IJK-to-world matrix, model spacing) for one of the geometry cases."""
    array = helpers.phantom()
    if name == "lps_identity":  # IJK->LPS is the identity, so IJK->RAS flips x and y
        matrix = FLIP @ np.eye(4)
        spacing = (1.0, 1.0, 1.0)
    elif name == "oblique":
        matrix = helpers.ijk_to_ras(helpers.rotation("z", 30) @ helpers.rotation("x", 10), (1, 1, 1), (12.5, -40, 7))
        spacing = (1.0, 1.0, 1.0)
    elif name == "anisotropic":
        matrix = helpers.ijk_to_ras(np.diag([-1.0, 1.0, 1.0]), (0.7, 0.7, 3.0), (5, -3, -20))
        spacing = (0.7, 0.7, 3.0)
    elif name == "transformed":
        matrix = helpers.ijk_to_ras(np.eye(3), (1, 1, 1), (0, 0, 0))
        spacing = (1.0, 1.0, 1.0)
    else:
        raise ValueError(name)
    volume = helpers.make_volume(scene, array, matrix, name)
    world = matrix
    if name == "transformed":
        transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
        to_parent = np.eye(4)
        to_parent[:3, :3] = helpers.rotation("y", 25)
        to_parent[:3, 3] = (10, -5, 30)
        transform.SetMatrixTransformToParent(geometry_bridge.numpy_to_matrix(to_parent))
        volume.SetAndObserveTransformNodeID(transform.GetID())
        world = to_parent @ matrix
    return volume, world, spacing


def _segment_ids(node):
    return list(node.GetSegmentation().GetSegmentIDs())


def _scene_snapshot(scene):
    """IDs of all nodes plus, per segmentation, its segment IDs, names and labelmap checksums."""
    nodes = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    segs = {}
    for node in scene.GetNodesByClass("vtkMRMLSegmentationNode"):
        seg = node.GetSegmentation()
        segs[node.GetID()] = [
            (sid, seg.GetSegment(sid).GetName(),
             int(geometry_bridge.segment_labelmap_array(seg.GetSegment(sid)).sum()))
            for sid in seg.GetSegmentIDs()
        ]
    return nodes, segs


def _check_result(node, world, expected, helpers):
    """Two segments with manifest names/colors/terminology, on exactly the input grid, voxel-exact."""
    seg = node.GetSegmentation()
    ids = _segment_ids(node)
    assert [seg.GetSegment(i).GetName() for i in ids[-2:]] == ["Edema", "Enhancing tumor"]
    for sid, label in zip(ids[-2:], helpers.LABELS):
        segment = seg.GetSegment(sid)
        assert np.allclose(segment.GetColor(), label["color"], atol=1e-6)
        entry = segment.GetTerminology()
        parsed = terminology.parse_terminology_entry(entry)
        assert parsed["type"] == label["terminology"]["type"]
        assert parsed["context"] == terminology.CONTEXT_NAME
        tag = vtk.reference("")
        assert segment.GetTag(MODEL_TAG, tag) and tag.get() == "test-threshold"
        image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
        assert np.allclose(geometry_bridge.oriented_image_to_world(image), world, atol=1e-9)
        assert image.GetExtent() == (0, expected.shape[2] - 1, 0, expected.shape[1] - 1, 0, expected.shape[0] - 1)
        mask = geometry_bridge.segment_labelmap_array(segment)
        assert np.array_equal(mask, expected == label["value"]), label["name"]
        assert mask.any()


@pytest.mark.parametrize("case", ["lps_identity", "oblique", "anisotropic", "transformed"])
def test_process_keeps_input_grid(case, scene, logic, threshold_package, helpers):
    volume, world, spacing = _geometry_case(case, helpers, scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Out")
    progress = []
    assert logic.process([volume], node, model=str(threshold_package(spacing)), device="cpu",
                         progressCallback=lambda f, m: progress.append((f, m)))
    assert logic.status == "done" and not logic.isRunning
    expected = helpers.expected_labels(helpers.phantom())
    _check_result(node, world, expected, helpers)
    assert progress and all(0.0 <= f <= 1.0 for f, _ in progress)
    # The reference geometry is the input's (what DICOM SEG export needs).
    geometry = node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    ref = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, ref)
    assert np.allclose(geometry_bridge.oriented_image_to_world(ref), world, atol=1e-6)
    if case != "transformed":
        # Independent path: Slicer's own export onto the input volume's grid.
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ids = vtk.vtkStringArray()
        for sid in _segment_ids(node):
            ids.InsertNextValue(sid)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap, volume)
        exported = geometry_bridge.volume_array(labelmap)
        assert np.array_equal(exported, expected)


@pytest.mark.parametrize("case", ["oblique", "transformed"])
def test_process_with_uncertainty_adds_a_volume_on_the_input_grid(case, scene, logic, threshold_package, helpers):
    from TumorSegmentationLib.uncertainty_volume import UNCERTAINTY_ATTRIBUTE

    volume, world, spacing = _geometry_case(case, helpers, scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Out")
    assert logic.process([volume], node, model=str(threshold_package(spacing)), device="cpu", uncertainty=True)
    _check_result(node, world, helpers.expected_labels(helpers.phantom()), helpers)  # labels as without it
    uncertainty = scene.GetNodeByID(logic.lastResult["uncertaintyVolumeID"])
    assert uncertainty.GetName() == "Out uncertainty" and uncertainty.GetAttribute(UNCERTAINTY_ATTRIBUTE) == node.GetID()
    matrix = vtk.vtkMatrix4x4()
    uncertainty.GetIJKToRASMatrix(matrix)
    assert np.allclose(geometry_bridge.matrix_to_numpy(matrix), world, atol=1e-6)
    assert uncertainty.GetTransformNodeID() == node.GetTransformNodeID()
    values = geometry_bridge.volume_array(uncertainty)
    assert values.shape == helpers.phantom().shape and values.dtype == np.float32
    assert 0.0 <= values.min() and values.max() <= 1.0
    # Running again with replaceExisting refills the same volume instead of adding one.
    assert logic.process([volume], node, model=str(threshold_package(spacing)), device="cpu", uncertainty=True,
                         replaceExisting=True)
    assert logic.lastResult["uncertaintyVolumeID"] == uncertainty.GetID()


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
@pytest.mark.parametrize("case", ["lps_identity", "oblique", "transformed"])
def test_written_file_is_lps(case, ext, scene, helpers, tmp_path):
    """The one RAS->LPS conversion: each voxel of the written file sits at the LPS point of its RAS position."""
    volume, world, _ = _geometry_case(case, helpers, scene)
    path = tmp_path / f"v{ext}"
    matrix = geometry_bridge.write_volume(volume, path)  # frame = world
    assert np.allclose(matrix, world)
    image = sitk.ReadImage(str(path))
    for ijk in [(0, 0, 0), (19, 0, 0), (0, 17, 9), (7, 5, 3)]:
        ras = world @ np.array([*ijk, 1.0])
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        assert np.allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(image), helpers.phantom())
    if ext == ".mha":  # what the logic writes for the worker: exact geometry, read in slabs
        from tumorseg_core.imaging import stream_resample
        from tumorseg_core.imaging.geometry import GridGeometry

        expected = geometry_bridge.volume_to_sitk(volume)[0]
        assert GridGeometry.of(image) == GridGeometry.of(expected)
        assert stream_resample.file_grid(path) == GridGeometry.of(expected)


def test_terminology_context_loads_in_slicer():
    tl = slicer.vtkSlicerTerminologiesModuleLogic()
    assert tl.LoadTerminologyFromFile(str(terminology.TERMINOLOGY_FILE)) == terminology.CONTEXT_NAME
    for term in (terminology.NEOPLASM, terminology.ENHANCING_TUMOR, terminology.NON_ENHANCING_TUMOR,
                 terminology.NECROSIS, terminology.EDEMA):
        entry_string = terminology.terminology_entry(term)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert tl.DeserializeTerminologyEntry(entry_string, entry)
        assert entry.GetTerminologyContextName() == terminology.CONTEXT_NAME
        assert entry.GetTypeObject().GetCodeValue() == term["type"][1]
        # Found in our context => Slicer fills in our recommended color (127 gray means not found).
        assert tl.UpdateEntryFromLoadedTerminologies(entry, [terminology.CONTEXT_NAME], [])
        found = entry.GetTypeModifierObject() if term.get("modifier") else entry.GetTypeObject()
        assert tuple(found.GetRecommendedDisplayRGBValue()) != (127, 127, 127), term
    unknown = {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "12738006", "Brain"]}
    assert terminology.terminology_entry(unknown).startswith(terminology.DICOM_MASTER_CONTEXT + "~")


def test_seg_nrrd_roundtrip_with_slicerio(scene, logic, threshold_package, helpers, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    volume, _, spacing = _geometry_case("oblique", helpers, scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Out")
    logic.process([volume], node, model=str(threshold_package(spacing)), device="cpu")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    path = tmp_path / "result.seg.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    seg = slicerio.read_segmentation(str(path))
    by_name = {s["name"]: s for s in seg["segments"]}
    for label in helpers.LABELS:
        assert np.allclose(by_name[label["name"]]["color"], label["color"], atol=1e-3)
        assert by_name[label["name"]]["terminology"]["type"] == label["terminology"]["type"]
        assert by_name[label["name"]]["terminology"]["contextName"] == terminology.CONTEXT_NAME
    assert by_name["Enhancing tumor"]["terminology"]["typeModifier"] == ["NCIt", "C113842", "Enhancing Lesion"]
    assert by_name["Edema"]["layer"] == by_name["Enhancing tumor"]["layer"]  # one shared labelmap layer


def test_nonblocking_poll_and_replace(scene, logic, threshold_package, helpers):
    volume, world, spacing = _geometry_case("anisotropic", helpers, scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Out")
    # A user's own segment, drawn before, and a user segment that happens to be called "Edema".
    user = slicer.vtkSegment()
    user.SetName("My lesion")
    user_array = np.zeros(helpers.phantom().shape, dtype=np.uint8)
    user_array[2:5, 3:9, 4:12] = 1
    user.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
                           geometry_bridge.oriented_image(user_array, world))
    node.GetSegmentation().AddSegment(user, "user1")
    node.GetSegmentation().AddEmptySegment("user2", "Edema")
    done = []
    model = str(threshold_package(spacing))
    assert logic.process([volume], node, model=model, device="cpu", waitForCompletion=False,
                         completionCallback=lambda ok, msg: done.append((ok, msg)))
    assert logic.isRunning and logic.status == "running"
    deadline = time.monotonic() + 120
    while logic.poll():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert done == [(True, "added 2 segment(s)")]
    expected = helpers.expected_labels(helpers.phantom())
    _check_result(node, world, expected, helpers)
    first_ids = _segment_ids(node)
    assert first_ids[:2] == ["user1", "user2"] and len(first_ids) == 4
    # Again with replaceExisting: only TumorSeg's own segments are replaced, in place.
    logic.process([volume], node, model=model, device="cpu", replaceExisting=True)
    ids = _segment_ids(node)
    assert len(ids) == 4 and ids[:2] == ["user1", "user2"] and not set(ids[2:]) & set(first_ids[2:])
    _check_result(node, world, expected, helpers)
    assert np.array_equal(geometry_bridge.segment_labelmap_array(node.GetSegmentation().GetSegment("user1")),
                          user_array.astype(bool))
    assert node.GetSegmentation().GetSegment("user2").GetName() == "Edema"
    # Without replaceExisting the results are added next to the old ones.
    logic.process([volume], node, model=model, device="cpu")
    assert len(_segment_ids(node)) == 6
    # replaceExisting replaces every earlier TumorSeg segment of the same name, never the user's.
    logic.process([volume], node, model=model, device="cpu", replaceExisting=True)
    ids = _segment_ids(node)
    assert len(ids) == 4 and ids[:2] == ["user1", "user2"]
    _check_result(node, world, expected, helpers)


def test_warm_worker_is_reused(scene, threshold_package, helpers):
    volume, _, spacing = _geometry_case("lps_identity", helpers, scene)
    lg = TumorSegmentationLogic(idleTimeout=120)
    try:
        timings = []
        for _ in range(2):
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            started = time.perf_counter()
            lg.process([volume], node, model=str(threshold_package(spacing)), device="cpu")
            timings.append((time.perf_counter() - started, lg.lastResult))
        (cold_s, cold), (warm_s, warm) = timings
        assert cold["warm"] is False and warm["warm"] is True
        assert cold["workerPid"] == warm["workerPid"] and lg.runner.is_alive
        logger.warning("process() cold %.2f s (worker %.2f s), warm %.2f s (worker %.2f s)",
                       cold_s, cold["seconds"], warm_s, warm["seconds"])
        assert warm_s < cold_s
    finally:
        lg.shutdown()
    assert not lg.runner.is_alive


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def test_cancel_leaves_scene_unchanged(scene, threshold_package, helpers, monkeypatch):
    volume, _, spacing = _geometry_case("oblique", helpers, scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Out")
    node.GetSegmentation().AddEmptySegment("keep", "Keep me")
    before = _scene_snapshot(scene)
    lg = TumorSegmentationLogic(runner=slow_worker.runner_class()(idle_timeout=120))  # sleeps at each progress report
    try:
        progress = []
        lg.process([volume], node, model=str(threshold_package(spacing)), device="cpu", waitForCompletion=False,
                   progressCallback=lambda f, m: progress.append(f))
        temp_dir = lg._job.temp_dir
        deadline = time.monotonic() + 120
        while not progress:
            assert lg.poll() and time.monotonic() < deadline
            time.sleep(0.02)
        pid = lg.runner.pid
        lg.cancel()
        assert lg.status == "cancelled" and not lg.isRunning and not lg.poll()
        assert not _pid_alive(pid) and not temp_dir.exists()
        assert _scene_snapshot(scene) == before
        # Blocking mode: cancel from the progress callback (as a Cancel button would) raises.
        with pytest.raises(CancelledError):
            lg.process([volume], node, model=str(threshold_package(spacing)), device="cpu",
                       progressCallback=lambda f, m: lg.cancel())
        assert _scene_snapshot(scene) == before and not lg.runner.is_alive
    finally:
        lg.shutdown()


def test_failures_leave_scene_unchanged(scene, logic, threshold_package, helpers, tmp_path):
    volume, _, spacing = _geometry_case("lps_identity", helpers, scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Out")
    node.GetSegmentation().AddEmptySegment("keep", "Keep me")
    before = _scene_snapshot(scene)
    model = str(threshold_package(spacing))
    with pytest.raises(TumorSegError, match="no model package"):
        logic.process([volume], node, model=str(tmp_path / "missing"))
    # A package tampered with on disk is refused by the worker's hash check before the model runs
    # (the UI process reads only the manifest); the run ends as an error, the scene unchanged.
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(model, bad)
    weights = bad / "fold0.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(TumorSegError, match="(?i)sha256|changed|tamper|hash"):
        logic.process([volume], node, model=str(bad))
    assert logic.status == "error" and "sha256" in logic.lastError and logic.runner.is_alive
    with pytest.raises(TumorSegError, match="needs 1 input volume"):
        logic.process([volume, volume], node, model=model)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")
    with pytest.raises(InputError, match="no image data"):
        logic.process([empty], node, model=model)
    warped = scene.AddNewNodeByClass("vtkMRMLTransformNode", "Warp")
    tps = vtk.vtkThinPlateSplineTransform()
    src, dst = vtk.vtkPoints(), vtk.vtkPoints()
    for p, q in [((0, 0, 0), (1, 0, 0)), ((50, 0, 0), (50, 2, 0)), ((0, 50, 0), (0, 50, 3)), ((0, 0, 50), (2, 0, 50))]:
        src.InsertNextPoint(p)
        dst.InsertNextPoint(q)
    tps.SetSourceLandmarks(src)
    tps.SetTargetLandmarks(dst)
    warped.SetAndObserveTransformToParent(tps)
    volume.SetAndObserveTransformNodeID(warped.GetID())
    with pytest.raises(InputError, match="non-linear transform"):
        logic.process([volume], node, model=model)
    volume.SetAndObserveTransformNodeID(None)
    after_setup = _scene_snapshot(scene)
    # An unknown option is refused in the UI process by the engine's own SegmentOptions, before
    # anything starts; the worker stays warm.
    with pytest.raises(TumorSegError, match="unknown segment option.*bogus"):
        logic.process([volume], node, model=model, options={"bogus": 1})
    assert not logic.isRunning and logic.runner.is_alive
    assert _scene_snapshot(scene) == after_setup
    assert [n for n in before[0] if n in after_setup[0]] == before[0]
    assert after_setup[1][node.GetID()] == before[1][node.GetID()]


def test_worker_crash_is_reported(scene, threshold_package, helpers, monkeypatch):
    volume, _, spacing = _geometry_case("lps_identity", helpers, scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Out")
    before = _scene_snapshot(scene)
    lg = TumorSegmentationLogic(runner=slow_worker.runner_class()(idle_timeout=120))
    try:
        def kill_worker(fraction, message):
            os.kill(lg.runner.pid, 9)  # the worker dies mid-run (as an out-of-memory kill would)

        with pytest.raises(TumorSegError, match="worker process (was killed|exited unexpectedly)"):
            lg.process([volume], node, model=str(threshold_package(spacing)), device="cpu",
                       progressCallback=kill_worker)
        assert _scene_snapshot(scene) == before
    finally:
        lg.shutdown()


def test_scene_close_stops_worker(scene, threshold_package, helpers):
    volume, _, spacing = _geometry_case("lps_identity", helpers, scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Out")
    lg = TumorSegmentationLogic(idleTimeout=120)
    try:
        lg.process([volume], node, model=str(threshold_package(spacing)), device="cpu")
        assert lg.runner.is_alive
        scene.Clear(0)
        assert not lg.runner.is_alive
    finally:
        lg.shutdown()
