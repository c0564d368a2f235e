"""Fuzz the command line in-process: random argv for ``segment``, ``info`` and ``models``.

Tokens are the commands' own flags (read from the parser) and values that are valid,
invalid or hostile (numbers, negative points, NaN, paths to a good image, a NaN image, a
zero-dimension NIfTI, an empty folder, a model package, missing paths, folders where a file
is expected). Each run must return 0, or 2 with exactly one ``error:`` line last on stderr
(argparse's exit included), never raise; a failed run leaves no output and no temporary
file; the inputs are unchanged; a successful ``segment`` writes a label map on the input's
exact grid.
"""

from __future__ import annotations

import contextlib
import io as text_io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fuzz_files import sha256, write_sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from package_files import tiny_package

from tumorseg_core import cli

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COMMANDS = ("segment", "info", "models")


def _flags(command: str) -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted({s for a in sub.choices[command]._actions for s in a.option_strings})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Input files (read-only for the runs) and an output folder."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(3)
    array = rng.normal(10, 2, (10, 12, 11)).astype(np.float32)
    array[3:7, 4:8, 4:8] += 60
    oblique = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    good = write_sitk(root / "good.mha", array, spacing=(1.7, 1.3, 2.6), direction=oblique)
    nan = array.copy()
    nan[0, 0, :3] = np.nan
    bad = write_sitk(root / "nan.nii.gz", nan)
    zero = write_sitk(root / "zero_dim.nii", array)
    raw = bytearray(zero.read_bytes())
    struct.pack_into("<h", raw, 42, 0)
    zero.write_bytes(bytes(raw))
    (root / "empty_folder").mkdir()
    model = tiny_package(root / "tiny_model")
    out = root / "out"
    out.mkdir()
    (out / "folder.nii.gz").mkdir()
    inputs = [good, bad, zero, root / "empty_folder", model]
    return {"root": root, "good": good, "inputs": inputs, "out": out, "model": model}


def _values(world) -> list[str]:
    out = world["out"]
    paths = [str(p) for p in world["inputs"]] + [str(world["root"] / "missing.nii.gz")]
    outputs = [str(out / n) for n in ("labels.nii.gz", "labels.seg.nrrd", "labels.txt", "folder.nii.gz",
                                      "no_such_dir/labels.nii.gz", "labels.mha")]
    points = ["0,0,0", "-5,3,2", "1e9,0,0", "nan,0,0", "1,2", "a,b,c", "", "-1,-1,-1"]
    numbers = ["0", "-1", "0.5", "1", "2", "257", "nan", "inf", "x", "1e400"]
    words = ["cpu", "cuda", "auto", "fast", "normal", "best", "torch", "openvino", "default", "--", "-", "\x00x"]
    return paths + outputs + points + numbers + words


@st.composite
def argvs(draw, world):
    command = draw(st.sampled_from(COMMANDS))
    tokens = st.sampled_from(_flags(command)) | st.sampled_from(_values(world))
    argv = [command] + draw(st.lists(tokens, max_size=7))
    if command == "segment" and draw(st.booleans()):
        # Often a well-formed core so the runs get past argparse: image, output, a model.
        argv += [str(world["good"]), "-o", str(world["out"] / "labels.nii.gz"), "--model", str(world["model"])]
    return argv


def _run(argv: list[str]) -> tuple[int, str]:
    err = text_io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(text_io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, err.getvalue()


@SETTINGS
@given(data=st.data())
def test_fuzz_cli(world, fuzz_cases, data):
    argv = data.draw(argvs(world))
    hashes = {str(p): sha256(p) for p in world["inputs"]}
    out = world["out"]
    before = {p.name for p in out.iterdir()}
    code, err = _run(argv)
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, err
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("error:"), (argv, err)
        assert sum(ln.startswith("error:") for ln in lines) == 1, (argv, err)
        assert {p.name for p in out.iterdir()} == before, f"a failed run wrote a file: {argv} {err}"
    assert not [p for p in out.iterdir() if ".tmp" in p.name], "a temporary file was left behind"
    if code == 0 and argv[0] == "segment":
        written = [out / n for n in {p.name for p in out.iterdir()} - before]
        for path in written:
            labels = sitk.ReadImage(str(path))
            good = sitk.ReadImage(str(world["good"]))
            assert labels.GetSize() == good.GetSize()
            np.testing.assert_allclose(labels.GetSpacing(), good.GetSpacing(), rtol=1e-6)
            np.testing.assert_allclose(labels.GetDirection(), good.GetDirection(), atol=1e-6)
            np.testing.assert_allclose(labels.GetOrigin(), good.GetOrigin(), atol=1e-5)
            os.remove(path)
    assert {str(p): sha256(p) for p in world["inputs"]} == hashes, "an input changed"
    fuzz_cases.add("cli")


def test_fuzz_cli_flags_are_found(world):
    """The vocabulary really holds each command's flags (else the fuzzing would be shallow)."""
    assert {"--seed", "--model", "--output"} <= set(_flags("segment"))
    assert "--install" in _flags("models")
    assert Path(world["good"]).is_file()
