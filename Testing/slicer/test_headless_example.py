"""Runs Testing/slicer/headless_example.py with this Python (slicer-core), as a user would.

The model is the conftest's real threshold package (exact expected labels), so the test
needs no trained weights; it checks the written .seg.nrrd: segment names, voxel counts
per label and the geometry copied from the input file.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "Testing" / "slicer" / "headless_example.py"
LOGIC = ROOT / "TumorSegmentation" / "TumorSegmentationLib" / "logic.py"

pytestmark = pytest.mark.skipif(
    not LOGIC.is_file(), reason="TumorSegmentation/TumorSegmentationLib/logic.py is not written yet")


def _run(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, encoding="utf-8",
                          timeout=timeout, env=env, cwd=str(ROOT))


def test_headless_example_writes_seg_nrrd(tmp_path, threshold_package, helpers):
    sitk = pytest.importorskip("SimpleITK")
    slicerio = pytest.importorskip("slicerio")
    array = helpers.phantom((12, 20, 22))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))  # the threshold package's grid: exact labels expected
    image.SetOrigin((-11.0, 7.5, 3.0))
    source = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(source))
    output = tmp_path / "out" / "case.seg.nrrd"

    result = _run("--", source, output, "--model", threshold_package((1.0, 1.0, 1.0)), "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.is_file()
    assert "wrote" in result.stderr and "Enhancing tumor" in result.stderr

    segmentation = slicerio.read_segmentation(str(output))
    segments = {s["name"]: s for s in segmentation["segments"]}
    assert set(segments) == {label["name"] for label in helpers.LABELS}
    voxels = segmentation["voxels"]
    expected = helpers.expected_labels(array)
    for label in helpers.LABELS:
        segment = segments[label["name"]]
        layer = voxels if voxels.ndim == 3 else voxels[..., segment.get("layer", 0)]
        assert int(np.count_nonzero(layer == segment["labelValue"])) == int(np.count_nonzero(expected == label["value"]))
    # ijkToLPS of the file: unit spacing, identity axes, and voxels on the input grid
    # (any cropped extent shifts the origin by whole voxels only).
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    np.testing.assert_allclose(ijk_to_lps[:3, :3], np.eye(3), atol=1e-5)
    offset = ijk_to_lps[:3, 3] - np.array(image.GetOrigin())
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-4)


def test_headless_example_user_errors(tmp_path):
    result = _run(tmp_path / "missing.nii.gz", tmp_path / "out.seg.nrrd", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: input image not found")
    assert not (tmp_path / "out.seg.nrrd").exists()
    result = _run(tmp_path / "a.nii.gz", tmp_path / "out.nii.gz", timeout=120)
    assert result.returncode == 2 and "must be a .seg.nrrd" in result.stderr
