"""The worker's ``slice`` command (Live mode of the Tumor effect, issue #23 part 5) on a real worker process.

A tiny random ``unet25d`` package (live_package.py); the image is oblique, flipped and
anisotropic. The answer must be exactly ``SliceSegmenter.segment_slice`` of that slice.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from live_package import write_live_package
from TumorSegmentationLib.runner import WorkerRunner, engine_search_path

from tumorseg_core.inference.slice_mode import SliceSegmenter
from tumorseg_core.modelpkg.package import open_package

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live_package(tmp_path_factory) -> Path:
    return write_live_package(tmp_path_factory.mktemp("live") / "live25d")


def _image(helpers, folder: Path) -> tuple:
    image = sitk.GetImageFromArray(helpers.phantom((14, 30, 34)))
    image.SetSpacing((1.0, 1.2, 2.0))
    image.SetOrigin((3.0, -7.0, 11.0))
    c, s = np.cos(np.radians(25.0)), np.sin(np.radians(25.0))
    image.SetDirection(tuple((np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, 1.0]))
                             .ravel()))
    path = folder / "input.mha"
    sitk.WriteImage(image, str(path))
    return path, image


def _labels(event: dict) -> np.ndarray:
    assert event["encoding"] == "zlib+base64"
    raw = zlib.decompress(base64.b64decode(event["data"]))
    return np.frombuffer(raw, dtype=np.uint8).reshape(event["shape"])


def _run(requests: list, timeout: float = 240.0) -> list:
    env = dict(os.environ, PYTHONPATH=engine_search_path(), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "tumorseg_core.worker", "--idle-timeout", "120"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            encoding="utf-8", cwd=str(ROOT))
    stdin = "".join(json.dumps(r) + "\n" for r in [*requests, {"cmd": "shutdown"}])
    stdout, stderr = proc.communicate(stdin, timeout=timeout)
    assert proc.returncode == 0, stderr[-2000:]
    return [json.loads(line) for line in stdout.splitlines()]


def test_slice_command_answers_the_slices_labels(helpers, live_package, threshold_package, tmp_path):
    """One request at a time through WorkerRunner (as the effect sends them): ``slice`` ends each request."""
    path, image = _image(helpers, tmp_path)
    base = {"cmd": "slice", "images": [str(path)], "model": str(live_package), "device": "cpu",
            "options": {"backend": "torch"}}
    cases = {1: ("axial", 5), 2: ("axial", 6), 3: ("coronal", 0), 4: ("sagittal", 33), 5: (2, 3)}
    requests = [dict(base, axis=axis, index=index) for axis, index in cases.values()]
    requests += [
        dict(base, axis="axial", index=14),  # one past the last axial slice
        dict(base, axis="oblique", index=1),
        dict(base, axis="axial", index=2, model=str(threshold_package((1.0, 1.0, 1.0)))),  # a 3D model
    ]
    runner = WorkerRunner(idle_timeout=60, env={"OMP_NUM_THREADS": "1"})
    answers = []
    try:
        for request in requests:
            rid = runner.submit(request)
            final = [e for e in runner.wait_for(rid, timeout=180) if e.get("id") == rid]
            assert final and final[-1]["event"] in ("slice", "error"), runner.stderr_tail()
            assert not runner.busy
            answers.append(final[-1])
    finally:
        runner.shutdown()
    reference = SliceSegmenter(open_package(live_package), backend="torch")
    names = {2: "sagittal"}
    for event, (axis, index) in zip(answers, cases.values()):
        assert event["event"] == "slice" and (event["axis"], event["index"]) == (names.get(axis, axis), index)
        np.testing.assert_array_equal(_labels(event), reference.segment_slice(image, index, axis))
    assert _labels(answers[2]).shape == (14, 34)
    assert 0 < _labels(answers[0]).mean() < 1, "the random network should give both labels on this slice"
    assert answers[0]["cached"] is False and answers[0]["warm"] is False
    assert all(event["cached"] and event["warm"] for event in answers[1:5])  # normalized once
    assert [lab["name"] for lab in answers[0]["labels"]] == ["Tumor"]
    errors = [event["message"] for event in answers[5:]]
    assert all(event["event"] == "error" for event in answers[5:])
    assert "outside the image" in errors[0] and "0..13" in errors[0]
    assert "unknown slice axis" in errors[1]
    assert "2.5D" in errors[2] and "unet3d" in errors[2]
    assert all("\n" not in message for message in errors)


def test_newer_slice_requests_supersede_queued_ones(helpers, live_package, threshold_package, tmp_path):
    """While a (slower) segment request runs, three slice requests queue up: only the newest runs."""
    path, image = _image(helpers, tmp_path)
    base = {"cmd": "slice", "images": [str(path)], "model": str(live_package), "device": "cpu",
            "options": {"backend": "torch"}}
    threshold = str(threshold_package((1.0, 1.0, 1.0)))
    requests = [{"id": 1, "cmd": "segment", "images": [str(path)], "output": str(tmp_path / "labels.nrrd"),
                 "model": threshold, "device": "cpu"}]
    requests += [dict(base, id=rid, axis="axial", index=index) for rid, index in ((2, 3), (3, 4), (4, 9))]
    requests.append({"id": 5, "cmd": "ping"})
    events = _run(requests)
    finals = [e for e in events if e["event"] in ("done", "slice", "pong", "error")]
    assert [e["id"] for e in finals] == [1, 2, 3, 4, 5], finals
    assert finals[0]["event"] == "done"
    assert finals[1] == {"event": "slice", "id": 2, "superseded": True}
    assert finals[2] == {"event": "slice", "id": 3, "superseded": True}
    np.testing.assert_array_equal(_labels(finals[3]), SliceSegmenter(open_package(live_package), backend="torch")
                                  .segment_slice(image, 9, "axial"))
