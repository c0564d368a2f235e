"""``distributed.main_first`` with two real gloo processes: order, results and rank 0 failing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tumorseg_core.training import distributed

    info = distributed.init_distributed("cpu")
    marker = Path(sys.argv[1])
    fail = sys.argv[2] == "fail"

    def work():
        if info.is_main:
            time.sleep(0.5)  # the other rank must still wait for this
            if fail:
                raise ValueError("rank 0 broke")
            marker.write_text("cached")
        return f"rank {info.rank} saw {marker.read_text()}"

    try:
        print(distributed.main_first(info, work), flush=True)
    except Exception as exc:
        print(f"rank {info.rank} raised {type(exc).__name__}: {exc}", flush=True)
    # Leave the group cleanly: a gloo process exiting while its peer still talks may abort.
    distributed.shutdown(info)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(tmp_path: Path, mode: str) -> list[str]:
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "marker"), mode],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", env=env))
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # the bug this guards against: a rank waiting forever
            for p in procs:
                p.kill()
            pytest.fail("a rank hung waiting for rank 0")
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out.strip())
    return outputs


def test_other_ranks_run_after_rank_0_and_see_its_files(tmp_path):
    assert _run_two_ranks(tmp_path, "ok") == ["rank 0 saw cached", "rank 1 saw cached"]


def test_rank_0_failing_makes_the_other_ranks_fail_instead_of_hanging(tmp_path):
    rank0, rank1 = _run_two_ranks(tmp_path, "fail")
    assert rank0 == "rank 0 raised ValueError: rank 0 broke"
    assert rank1.startswith("rank 1 raised TumorSegError: rank 0 failed while preparing the data")
