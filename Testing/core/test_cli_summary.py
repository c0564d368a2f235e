"""`tumorseg segment` / `demo` say what happened: one summary line on stderr, a bar that fits the terminal.

Issue #21: the output path, lesion count and volume were not printed; piped to a log a
successful run wrote 0 bytes; with -v the "wrote" line came twice; a 40-column terminal
made the bar wrap.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli
from scipy import ndimage

from tumorseg_core.cli import main
from tumorseg_core.commands.progress import TerminalProgress, fit_line

SUMMARY = re.compile(r"^(\d+) (lesion|lesions), (\d+\.\d\d) mL in total -> (.+) \((\d+\.\d) s\)$")


def _oblique_case(folder) -> tuple:
    """A two-blob image on an anisotropic, flipped and rotated grid, and a click (LPS mm) inside blob 1."""
    array = np.full((14, 20, 24), 10.0, np.float32)  # (z, y, x)
    array[4:10, 5:12, 5:12] = 200.0
    array[5:9, 14:18, 16:21] = 200.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((30.0, -12.0, 50.0))
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    image.SetDirection((-c, -s, 0.0, s, -c, 0.0, 0.0, 0.0, 1.0))
    path = folder / "case.nrrd"
    sitk.WriteImage(image, str(path))
    click = image.TransformContinuousIndexToPhysicalPoint((8.0, 8.0, 7.0))  # (x, y, z) index in blob 1
    return path, image, ",".join(f"{v:.3f}" for v in click)


def _independent_summary(path) -> tuple[int, float]:
    """Lesions (26-connected) and volume (mL) of a written label map, computed here without the engine."""
    labels = sitk.ReadImage(str(path))
    mask = sitk.GetArrayFromImage(labels) != 0
    _, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    return count, mask.sum() * float(np.prod(labels.GetSpacing())) / 1000.0


def _check_summary(line: str, output) -> None:
    match = SUMMARY.match(line)
    assert match, line
    lesions, volume = _independent_summary(output)
    assert int(match[1]) == lesions
    assert float(match[3]) == pytest.approx(volume, abs=0.006)
    assert match[4] == str(output)


def test_segment_piped_prints_one_summary_line_with_path_lesions_volume_time(tmp_path):
    path, image, click = _oblique_case(tmp_path)
    out = tmp_path / "seeded.seg.nrrd"
    result = run_cli("segment", str(path), "--seed", click, "-o", str(out))  # stderr is a pipe
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no progress bar when piped, no other chatter
    _check_summary(lines[0], out)
    assert not lines[0].startswith("0 ")  # the click grew a lesion
    written = sitk.ReadImage(str(out))  # the result keeps its input's grid
    assert written.GetSize() == image.GetSize()
    assert np.allclose(written.GetDirection(), image.GetDirection())
    assert np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)


def test_quiet_silences_the_summary_and_verbose_says_wrote_once(tmp_path):
    path, _, click = _oblique_case(tmp_path)
    quiet = run_cli("segment", str(path), "--seed", click, "-o", str(tmp_path / "q.nii.gz"), "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and (tmp_path / "q.nii.gz").is_file()
    verbose = run_cli("-v", "segment", str(path), "--seed", click, "-o", str(tmp_path / "v.nii.gz"))
    assert verbose.returncode == 0, verbose.stderr
    assert sum("wrote" in line for line in verbose.stderr.splitlines()) == 1, verbose.stderr
    _check_summary(verbose.stderr.splitlines()[-1], tmp_path / "v.nii.gz")


def test_segment_with_a_model_prints_the_summary(tmp_path, capsys):
    from model_factory import make_tiny_package

    package = make_tiny_package(tmp_path / "tiny")
    path, _, _ = _oblique_case(tmp_path)
    out = tmp_path / "model.seg.nrrd"
    assert main(["segment", str(path), "-o", str(out), "--model", str(package), "--device", "cpu"]) == 0
    err = capsys.readouterr().err  # not a terminal: no bar
    assert len(err.splitlines()) == 1, err
    match = SUMMARY.match(err.strip())
    assert match and match[4] == str(out)
    lesions, volume = _independent_summary(out)
    assert int(match[1]) == lesions and float(match[3]) == pytest.approx(volume, abs=0.006)


@pytest.mark.parametrize("columns", [1, 8, 20, 40, 60, 80, 250])
def test_progress_bar_never_wraps(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))  # what shutil.get_terminal_size reads first
    stream = io.StringIO()
    bar = TerminalProgress(stream=stream, enabled=True)
    for i, message in enumerate(["reading case_000123_0000.nii.gz and its three other channels",
                                 "window 17/412", "x" * 300, "done"]):
        bar._last_draw = 0.0  # draw every call, not ~10 per second
        bar(i / 3, message)
    drawn = stream.getvalue().split("\r")[1:]
    assert len(drawn) == 4
    assert all(len(line) <= max(1, columns - 1) for line in drawn), [len(line) for line in drawn]
    assert "100.0%" in drawn[-1] or columns < 8
    if columns >= 40:
        assert "[" in drawn[0]  # a bar, not only the numbers
    bar.close()
    assert stream.getvalue().endswith("\r") and "\n" not in stream.getvalue()  # erased, not scrolled


def test_fit_line_keeps_the_percentage_and_cuts_the_message():
    line = fit_line(0.5, 3.0, "segmenting a long file name", 40)
    assert len(line) <= 39 and "50.0%" in line and line.startswith("[")
    assert fit_line(0.5, 3.0, "m", 200).count("#") == 15  # the bar stops at 30 wide


def test_demo_phantom_seed_summary_and_quiet(tmp_path, capsys):
    from model_factory import make_tiny_package

    package = make_tiny_package(tmp_path / "tiny")
    argv = ["demo", str(tmp_path / "demo"), "--model", str(package), "--device", "cpu", "--phantom-seed", "5"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "phantom seed 5 " in captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    _check_summary(lines[0], tmp_path / "demo" / "result.seg.nrrd")
    # The demo also measures its result: a table and the RECIST picture (issue #22).
    table = (tmp_path / "demo" / "measurements.csv").read_text().splitlines()
    assert table[0].startswith("lesion_id,") and "recist_long_mm" in table[0]
    assert (tmp_path / "demo" / "measurements.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv + ["-q"]) == 0
    assert capsys.readouterr().err == ""
