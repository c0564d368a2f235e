"""The worker's ``click`` command and the UI side's ``WorkerClickNet``, on a real worker process.

The network is the architecture's seeded initial weights in a folder the real exporter wrote
(clicknet_folder.py); the answer must be ``ClickNet(folder).forward`` of the same inputs, run here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from clicknet_folder import tamper, write_click_network
from TumorSegmentationLib.click_estimator import ClickNetworkUnavailable, WorkerClickNet
from TumorSegmentationLib.runner import FINAL_EVENTS, WorkerRunner

from tumorseg_core.clicknet.cube import cube_inputs
from tumorseg_core.clicknet.grid import SIZE
from tumorseg_core.clicknet.predict import ClickNet
from tumorseg_core.worker import pack_array, unpack_array


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> Path:
    return write_click_network(tmp_path_factory.mktemp("clicknet") / "net", seed=3)


@pytest.fixture(scope="module")
def runner():
    worker = WorkerRunner(idle_timeout=120, env={"OMP_NUM_THREADS": "1"})
    yield worker
    worker.shutdown()


def _image() -> tuple:
    """An oblique, anisotropic image with a bright ball; (image, foreground click, background click) LPS."""
    k, j, i = np.meshgrid(np.arange(16), np.arange(40), np.arange(48), indexing="ij")
    array = np.where((i - 24) ** 2 + ((j - 20) * 1.2) ** 2 + ((k - 8) * 2.5) ** 2 < 100, 180.0, 30.0)
    image = sitk.GetImageFromArray(array.astype(np.float32) + np.float32(np.sin(i + 2.0 * j)))
    image.SetSpacing((1.0, 1.2, 2.5))
    image.SetOrigin((4.0, -9.0, 20.0))
    c, s = np.cos(np.radians(20.0)), np.sin(np.radians(20.0))
    image.SetDirection((c, 0.0, s, 0.0, -1.0, 0.0, s, 0.0, -c))
    fg = image.TransformContinuousIndexToPhysicalPoint((24.0, 20.0, 8.0))
    bg = image.TransformContinuousIndexToPhysicalPoint((10.0, 5.0, 8.0))
    return image, fg, bg


def _ask(runner: WorkerRunner, request: dict) -> dict:
    rid = runner.submit(request)
    final = [e for e in runner.wait_for(rid, timeout=240) if e.get("id") == rid and e.get("event") in FINAL_EVENTS]
    assert len(final) == 1, runner.stderr_tail()
    return final[0]


def _request(array: np.ndarray, network: Path, **changes) -> dict:
    return {"cmd": "click", "inputs": pack_array(array), "shape": list(array.shape), "network": str(network),
            **changes}


def test_click_answers_the_networks_probability(runner, network):
    image, fg, bg = _image()
    _, inputs = cube_inputs(image, [fg], [bg])
    here = ClickNet(network)
    answers = [_ask(runner, _request(inputs, network)) for _ in range(2)]
    for event in answers:
        assert event["event"] == "click", event
        assert (event["shape"], event["encoding"], event["dtype"]) == ([SIZE] * 3, "zlib+base64", "float32")
        prob = unpack_array(event["probability"], event["shape"], "float32")
        assert np.all((prob >= 0.0) & (prob <= 1.0)) and prob.std() > 1e-3  # depends on the inputs
        np.testing.assert_allclose(prob, here.forward(inputs), atol=1e-5)
    assert [e["warm"] for e in answers] == [False, True]  # loaded once

    # The UI side's estimator: the same cube and answer as the network run in this process.
    crop, prob = WorkerClickNet(runner, network).probability(image, [fg], [bg])
    crop_here, prob_here = here.probability(image, [fg], [bg])
    assert crop.grid.GetOrigin() == crop_here.grid.GetOrigin() and np.array_equal(crop.lo, crop_here.lo)
    np.testing.assert_allclose(prob, prob_here, atol=1e-5)


def test_bad_click_requests_are_answered_with_one_line_errors(runner, network, tmp_path):
    image, fg, bg = _image()
    _, inputs = cube_inputs(image, [fg], [bg])
    copy = Path(shutil.copytree(network, tmp_path / "copy"))
    assert _ask(runner, _request(inputs, copy))["event"] == "click"  # loaded and warm, then modified on disk
    tamper(copy)
    short = np.zeros((5, SIZE, SIZE, SIZE - 1), np.float32)
    bad = {
        "shape": _request(short, network),
        "data": _request(inputs, network, inputs="not base64 at all!"),
        "length": _request(inputs, network, inputs=pack_array(short)),
        "missing": _request(inputs, tmp_path / "none"),
        "tampered": _request(inputs, copy),
    }
    answers = {name: _ask(runner, request) for name, request in bad.items()}
    for name, event in answers.items():
        assert event["event"] == "error" and event["message"] and "\n" not in event["message"], (name, event)
    assert "shape" in answers["shape"]["message"]
    assert "no manifest.json" in answers["missing"]["message"]
    assert "sha256" in answers["tampered"]["message"] and answers["tampered"]["kind"] == "ModelPackageError"
    assert _ask(runner, _request(inputs, network))["event"] == "click"  # the worker lives on
    with pytest.raises(ClickNetworkUnavailable, match="sha256"):
        WorkerClickNet(runner, copy).probability(image, [fg], [bg])
