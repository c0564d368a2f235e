"""`tumorseg segment` end to end from a shell: outputs, .seg.nrrd metadata, bad inputs leave no file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from model_factory import make_tiny_package


def tumorseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tumorseg_core", *args], capture_output=True, encoding="utf-8", timeout=300)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "tiny")


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory):
    rng = np.random.default_rng(3)
    array = rng.normal(10, 2, (24, 36, 40)).astype(np.float32)
    array[8:16, 12:24, 14:26] += 80
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((-40.0, 25.0, -300.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    path = tmp_path_factory.mktemp("img") / "case.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def test_segment_writes_seg_nrrd_readable_by_slicerio(tmp_path, package, phantom_path):
    out = tmp_path / "result.seg.nrrd"
    result = tumorseg("segment", str(phantom_path), "-o", str(out), "--model", str(package), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # piped: no progress bar, no chatter; only the summary line on stderr
    assert len(result.stderr.splitlines()) == 1 and f" mL in total -> {out} (" in result.stderr
    segmentation = slicerio.read_segmentation(str(out))
    segments = segmentation["segments"]
    assert [s["name"] for s in segments] == ["Tumor"]
    assert np.allclose(segments[0]["color"], [0.9, 0.3, 0.2])
    written = sitk.ReadImage(str(out))
    reference = sitk.ReadImage(str(phantom_path))
    assert written.GetSize() == reference.GetSize()
    assert np.allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetDirection(), reference.GetDirection())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".nii"])
def test_segment_other_formats_keep_the_grid(tmp_path, package, phantom_path, suffix):
    out = tmp_path / f"labels{suffix}"
    result = tumorseg("segment", str(phantom_path), "-o", str(out), "--model", str(package), "--overlap", "0.25")
    assert result.returncode == 0, result.stderr
    written, reference = sitk.ReadImage(str(out)), sitk.ReadImage(str(phantom_path))
    assert written.GetSize() == reference.GetSize()
    assert np.allclose(written.GetSpacing(), reference.GetSpacing())


def _bad_image(kind: str, folder):
    path = folder / f"{kind}.nrrd"  # NIfTI writing drops NaN; NRRD keeps it
    if kind == "unreadable":
        path.write_bytes(b"this is not an image")
        return path
    if kind == "2d":
        image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(30, 30)).astype(np.float32))
    else:
        array = np.random.default_rng(0).normal(size=(12, 14, 16)).astype(np.float32)
        if kind == "nan":
            array[2, 3, 4] = np.nan
        elif kind == "inf":
            array[1, 1, 1] = np.inf
        elif kind == "empty":
            array[:] = 0
        image = sitk.GetImageFromArray(array)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("kind,expected", [
    ("2d", "2D"), ("nan", "NaN"), ("inf", "Inf"), ("empty", "constant"), ("unreadable", "read"), ("missing", "exist"),
])
def test_bad_inputs_give_one_error_line_and_no_file(tmp_path, package, kind, expected):
    path = tmp_path / "absent.nii.gz" if kind == "missing" else _bad_image(kind, tmp_path)
    out = tmp_path / "out.seg.nrrd"
    result = tumorseg("segment", str(path), "-o", str(out), "--model", str(package))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected.lower() in lines[0].lower()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "out" in p.name] == []


def test_wrong_channel_count_and_tampered_model_are_refused(tmp_path, package, phantom_path):
    out = tmp_path / "out.nii.gz"
    result = tumorseg("segment", str(phantom_path), str(phantom_path), "-o", str(out), "--model", str(package))
    assert result.returncode == 2 and "expects 1 input" in result.stderr and not out.exists()

    tampered = make_tiny_package(tmp_path / "tampered")
    weights = tampered / "fold0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = tumorseg("segment", str(phantom_path), "-o", str(out), "--model", str(tampered))
    assert result.returncode == 2 and "sha256" in result.stderr.lower() and not out.exists()
