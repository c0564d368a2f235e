"""Click mode of the Tumor effect answered by the click network through the worker (real MRML, real worker).

The network's head is set so that P(lesion) is sigmoid(6) on its whole 80 mm cube: the lesion
estimate a click grows is the cube (cut to the image) instead of the 10 mm lesion, so which session
answered is plain, and the segment must be, voxel for voxel, what the same session with the same
network run in this process gives on the effect's image. When the worker cannot answer, the session
goes on without the network.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from clicknet_folder import tamper, write_click_network  # noqa: E402
from effect_helpers import OBLIQUE, exported, gb, load_volume, ras  # noqa: E402
from TumorSegmentationLib.click_estimator import WorkerClickNet  # noqa: E402
from TumorSegmentationLib.effect_logic import TumorEffectLogic  # noqa: E402
from TumorSegmentationLib.logic import TumorSegmentationLogic  # noqa: E402
from TumorSegmentationLib.runner import WorkerRunner  # noqa: E402

from tumorseg_core.clicknet.predict import ClickNet  # noqa: E402
from tumorseg_core.interactive.session import InteractiveSession  # noqa: E402

FLIP_RAS = np.diag([-1.0, -1.0, 1.0])
CLICK_LPS = (-20.0, 0.0, 0.0)  # in the ball, off the image's centre: the cube is cut by the image on one side


def _source(scene, folder):
    """A ball of radius 10 mm at LPS (-20, 0, 0) in a 100 mm long, oblique, anisotropic, RAS-flipped volume."""
    size, spacing, direction = np.array([100, 40, 16]), np.array([1.0, 1.2, 3.0]), OBLIQUE @ FLIP_RAS
    origin = -direction @ ((size - 1) * spacing / 2.0)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    points = np.einsum("rc,zyxc->zyxr", direction * spacing, np.stack([i, j, k], -1)) + origin
    truth = np.linalg.norm(points - np.array(CLICK_LPS), axis=-1) <= 10.0
    noise = np.random.default_rng(0).normal(0.0, 4.0, truth.shape)
    image = sitk.GetImageFromArray((np.where(truth, 200.0, 20.0) + noise).astype(np.float32))
    image.SetSpacing(tuple(map(float, spacing)))
    image.SetOrigin(tuple(map(float, origin)))
    image.SetDirection(tuple(map(float, direction.ravel())))
    return load_volume(scene, image, folder, "lesion"), truth


def _effect(scene, source, segmentation_logic):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    effect = TumorEffectLogic(scene, segmentationLogic=segmentation_logic)
    sid = effect.setup(seg, source)
    return effect, seg, sid


def test_click_with_the_network_writes_its_answer_on_the_source_grid(scene, tmp_path, logic):
    network = write_click_network(tmp_path / "net", logit=6.0)
    source, truth = _source(scene, tmp_path)
    effect, seg, sid = _effect(scene, source, logic)
    interactive = effect.interactive
    interactive.clickNetwork = network
    result = interactive.click(ras(CLICK_LPS))
    segment = exported(scene, seg, sid, source)
    state = interactive._state
    assert isinstance(state.session.estimator, WorkerClickNet) and "without" not in result.message
    assert np.allclose(gb.sitk_ijk_to_ras(state.session.result), gb.volume_ijk_to_frame(source), atol=1e-6)
    expected = InteractiveSession(state.image, estimator=ClickNet(network)).add_click(CLICK_LPS)
    assert np.array_equal(segment, sitk.GetArrayFromImage(expected) > 0)
    free = sitk.GetArrayFromImage(InteractiveSession(state.image).add_click(CLICK_LPS)) > 0
    assert segment[truth].all() and segment.sum() > 1.5 * free.sum()  # grown from the cube, not the ball
    interactive.undo()
    assert not exported(scene, seg, sid, source).any()


def test_a_network_that_fails_leaves_the_session_model_free(scene, tmp_path, logic):
    """First click by the network; then its weights are modified: a box (which asks the network again)
    replays the click and the box without it."""
    network = write_click_network(tmp_path / "net", logit=6.0)
    source, _ = _source(scene, tmp_path)
    effect, seg, sid = _effect(scene, source, logic)
    interactive = effect.interactive
    interactive.clickNetwork = network
    interactive.click(ras(CLICK_LPS))
    first = exported(scene, seg, sid, source)
    tamper(network)
    box_lps = (np.array(CLICK_LPS) - 14.0, np.array(CLICK_LPS) + 14.0)
    result = interactive.box(ras(tuple(box_lps[0])), ras(tuple(box_lps[1])))
    assert "without the click network" in result.message and "sha256" in result.message
    state = interactive._state
    assert state.session.estimator is None and interactive.interactions == 2
    assert exported(scene, seg, sid, source).any()
    after_first = InteractiveSession(state.image).add_click(CLICK_LPS)
    assert not np.array_equal(first, sitk.GetArrayFromImage(after_first) > 0)  # the first click was the network's
    interactive.undo()  # back to the first click, as the model-free session answers it
    assert np.array_equal(exported(scene, seg, sid, source), sitk.GetArrayFromImage(after_first) > 0)


def test_a_worker_that_cannot_start_leaves_the_session_model_free(scene, tmp_path):
    network = write_click_network(tmp_path / "net", logit=6.0)
    source, truth = _source(scene, tmp_path)
    broken = TumorSegmentationLogic(runner=WorkerRunner(python_executable=str(tmp_path / "no-python")))
    effect, seg, sid = _effect(scene, source, broken)
    interactive = effect.interactive
    interactive.clickNetwork = network
    result = interactive.click(ras(CLICK_LPS))
    assert "could not start the segmentation worker" in result.message
    expected = InteractiveSession(interactive._state.image).add_click(CLICK_LPS)
    segment = exported(scene, seg, sid, source)
    assert np.array_equal(segment, sitk.GetArrayFromImage(expected) > 0) and segment.sum() < 2 * truth.sum()


def test_no_network_folder_means_the_model_free_session(scene, tmp_path, logic):
    source, _ = _source(scene, tmp_path)
    effect, seg, sid = _effect(scene, source, logic)
    effect.interactive.clickNetwork = tmp_path / "none"
    effect.interactive.click(ras(CLICK_LPS))
    assert effect.interactive._state.session.estimator is None and exported(scene, seg, sid, source).any()
