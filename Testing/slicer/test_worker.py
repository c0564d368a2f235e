"""The background worker's JSON-lines protocol (``python -m tumorseg_core.worker``) and WorkerRunner.

These run real worker processes with the tiny threshold model package from conftest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slow_worker
from TumorSegmentationLib.runner import WorkerRunner, engine_search_path

ROOT = Path(__file__).resolve().parents[2]


def _worker_env(**extra):
    env = dict(os.environ, PYTHONPATH=engine_search_path(), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _start(*args, **env):
    return subprocess.Popen(
        [sys.executable, "-m", "tumorseg_core.worker", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_worker_env(**env),
        encoding="utf-8", cwd=str(ROOT),
    )


def _phantom_file(helpers, tmp_path, spacing=(1.0, 1.0, 1.0)):
    array = helpers.phantom()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((3.0, -7.0, 11.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / "input.nrrd"
    sitk.WriteImage(image, str(path))
    return path, image, array


def test_protocol_session(helpers, threshold_package, tmp_path):
    """ready, pong, errors for bad requests, cold then warm segment, shutdown: stdout is only JSON lines."""
    path, image, array = _phantom_file(helpers, tmp_path)
    model = str(threshold_package((1.0, 1.0, 1.0)))
    requests = [
        {"id": 1, "cmd": "ping"},
        "this is not json",
        {"id": 2, "cmd": "dance"},
        {"id": 3, "cmd": "segment", "images": [str(path)], "output": str(tmp_path / "a.nrrd"), "model": model,
         "device": "cpu"},
        {"id": 4, "cmd": "segment", "images": [str(path)], "output": str(tmp_path / "b.seg.nrrd"), "model": model,
         "device": "cpu", "options": {"overlap": 0.5}},
        {"id": 5, "cmd": "segment", "images": [str(tmp_path / "missing.nrrd")], "output": str(tmp_path / "c.nrrd"),
         "model": model, "device": "cpu"},
        {"cmd": "shutdown"},
    ]
    stdin = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    proc = _start("--idle-timeout", "120")
    stdout, stderr = proc.communicate(stdin, timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    events = [json.loads(line) for line in stdout.splitlines()]  # every stdout line is JSON
    assert events[0]["event"] == "ready" and events[0]["pid"] == proc.pid
    assert {"event": "pong", "id": 1, "pid": proc.pid} in events
    errors = {e.get("id"): e["message"] for e in events if e["event"] == "error"}
    assert "not valid JSON" in errors[None] and "unknown command" in errors[2]
    assert "does not exist" in errors[5] and "\n" not in errors[5]
    done = {e["id"]: e for e in events if e["event"] == "done"}
    assert done[3]["warm"] is False and done[4]["warm"] is True
    assert [lab["name"] for lab in done[3]["labels"]] == ["Edema", "Enhancing tumor"]
    progress = [e for e in events if e["event"] == "progress" and e["id"] == 3]
    assert progress and progress[-1]["fraction"] == 1.0
    assert all(b["fraction"] >= a["fraction"] for a, b in zip(progress, progress[1:]))
    result = sitk.ReadImage(str(tmp_path / "a.nrrd"))
    assert result.GetSize() == image.GetSize() and result.GetOrigin() == image.GetOrigin()
    assert result.GetDirection() == image.GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(result), helpers.expected_labels(array))
    seg = sitk.ReadImage(str(tmp_path / "b.seg.nrrd"))
    assert seg.GetMetaData("Segment1_Name") == "Enhancing tumor"
    assert "INFO" in stderr  # the log went to stderr
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes left no temporary files


def test_stray_output_goes_to_stderr():
    """After take_over_stdout, print() and C-level writes to fd 1 land on stderr, not in the protocol."""
    code = (
        "import os\n"
        "from tumorseg_core.worker import Protocol, take_over_stdout\n"
        "p = Protocol(take_over_stdout())\n"
        "print('stray print')\n"
        "os.write(1, b'raw fd write\\n')\n"
        "p.send('hello', n=1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", env=_worker_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '{"event": "hello", "n": 1}\n'
    assert "stray print" in proc.stderr and "raw fd write" in proc.stderr


def test_idle_timeout_and_closed_stdin():
    proc = _start("--idle-timeout", "1")
    assert json.loads(proc.stdout.readline())["event"] == "ready"
    started = time.monotonic()
    assert proc.wait(timeout=60) == 0
    assert time.monotonic() - started < 30
    assert "idle" in proc.stderr.read()

    proc = _start()  # no idle timeout: exits when its parent's end of stdin closes
    assert json.loads(proc.stdout.readline())["event"] == "ready"
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    assert "stdin closed" in proc.stderr.read()


def test_runner_cancel_kills_process(helpers, threshold_package, tmp_path):
    path, _, _ = _phantom_file(helpers, tmp_path)
    runner = slow_worker.runner_class()(idle_timeout=60)  # sleeps at each progress report
    try:
        rid = runner.submit({"cmd": "segment", "images": [str(path)], "output": str(tmp_path / "o.nrrd"),
                             "model": str(threshold_package((1.0, 1.0, 1.0))), "device": "cpu"})
        with pytest.raises(RuntimeError, match="busy"):
            runner.submit({"cmd": "ping"})
        deadline = time.monotonic() + 120
        seen = []
        while not any(e["event"] == "progress" for e in seen):
            assert time.monotonic() < deadline
            seen += runner.poll()
            time.sleep(0.02)
        pid = runner.pid
        runner.cancel()
        assert not runner.is_alive and not runner.busy
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not (tmp_path / "o.nrrd").exists()
        # The next request starts a fresh worker.
        rid = runner.submit({"cmd": "ping"})
        started = time.monotonic()
        events = runner.wait_for(rid, timeout=60)
        assert time.monotonic() - started < 30
        assert runner.pid != pid and any(e["event"] == "pong" and e["id"] == rid for e in events)
        assert not runner.busy  # a pong ends the ping request
    finally:
        runner.shutdown()
    assert not runner.is_alive


def test_runner_restarts_after_idle_exit():
    runner = WorkerRunner(idle_timeout=1)
    try:
        rid = runner.submit({"cmd": "ping"})
        assert any(e["event"] == "pong" for e in runner.wait_for(rid, timeout=60))
        first = runner.pid
        deadline = time.monotonic() + 30
        while runner.is_alive:  # the idle worker exits by itself
            assert time.monotonic() < deadline
            time.sleep(0.1)
        rid = runner.submit({"cmd": "ping"})
        events = runner.wait_for(rid, timeout=60)
        assert runner.pid != first and any(e["event"] == "pong" and e["id"] == rid for e in events)
    finally:
        runner.shutdown()
