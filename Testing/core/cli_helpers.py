"""Running ``python -m tumorseg_core`` in a subprocess, as a user would, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env_extra=None) -> subprocess.CompletedProcess:
    """``python -m tumorseg_core ARGS`` from the repository root; ``env_extra`` adds environment variables."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tumorseg_core", *args], capture_output=True, encoding="utf-8",
                          cwd=ROOT, env=env, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a run that failed as a user error (exit 2)."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]
