"""Fixtures for the Slicer-side tests: real slicer-core MRML scenes, never mocks.

- ``scene``: a fresh ``vtkMRMLScene`` (segmentation conversion rules registered once).
- ``threshold_package(spacing_xyz)``: factory for a tiny *real* model package whose
  network (a 2-level ``unet3d`` with hand-set weights, ``norm="none"``) computes an
  exact intensity threshold: label 0 below :data:`T1`, 1 ("Edema") between :data:`T1`
  and :data:`T2`, 2 ("Enhancing tumor") above :data:`T2`. With the model spacing equal
  to the input spacing and ``orientation: null`` the model grid is the input grid, so
  the expected result is exactly :func:`expected_labels` of the input voxels.
- ``make_volume(scene, array_zyx, ijk_to_ras, name)``: a scalar volume node.
- ``phantom(shape_zyx)``: a deterministic, asymmetric test volume (a ball with a core
  plus a gradient), far from the thresholds everywhere.
- ``logic``: one TumorSegmentationLogic (and warm worker) shared by the session.

Torch is kept to one thread in the worker: the machine is shared.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

try:
    import slicer
    import vtk
except ImportError:  # other tests in this folder (widget decisions) need neither
    slicer = vtk = None

MODULE_DIR = Path(__file__).resolve().parents[2] / "TumorSegmentation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

T1, T2 = 30.0, 80.0  # thresholds of the test network (input intensity units)
LABELS = [
    {"value": 1, "name": "Edema", "color": [0.4, 0.8, 0.4],
     "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                     "type": ["SCT", "79654002", "Edema"]}},
    {"value": 2, "name": "Enhancing tumor", "color": [1.0, 0.84, 0.04],
     "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                     "type": ["SCT", "108369006", "Neoplasm"],
                     "modifier": ["NCIt", "C113842", "Enhancing Lesion"]}},
]


def expected_labels(array: np.ndarray) -> np.ndarray:
    """What the threshold network must return for ``array`` (same shape, uint8)."""
    return np.where(array > T2, 2, np.where(array > T1, 1, 0)).astype(np.uint8)


def threshold_state_dict() -> Dict[str, "object"]:
    """unet3d(features=(1, 1), norm="none") weights computing the two-threshold labelling.

    Encoder level 0 and decoder pass the intensity through (centre tap 1, ReLU keeps
    the non-negative test intensities); level 1 and the up-convolution are zero. The
    1x1x1 head gives logits (0, x - T1, 2x - T1 - T2), whose argmax is the labelling.
    """
    import torch

    from tumorseg_core.models.registry import build_network

    net = build_network("unet3d", {"in_channels": 1, "out_channels": 3, "features": [1, 1], "norm": "none"})
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    for key in ("encoders.0.block.0.weight", "encoders.0.block.4.weight", "decoders.0.block.4.weight"):
        state[key][0, 0, 1, 1, 1] = 1.0
    state["decoders.0.block.0.weight"][0, 0, 1, 1, 1] = 1.0  # channel 0 of the concat is the skip
    state["head.weight"][:, 0, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0])
    state["head.bias"][:] = torch.tensor([0.0, -T1, -T1 - T2])
    return state


def threshold_manifest(spacing_xyz: Sequence[float]) -> dict:
    return {
        "name": "test-threshold", "version": "1.0.0", "license": "Apache-2.0",
        "description": "Test network: exact two-level intensity threshold (hand-set unet3d weights).",
        "architecture": "unet3d",
        "kwargs": {"in_channels": 1, "out_channels": 3, "features": [1, 1], "norm": "none"},
        "inputs": [{"modality": "T1c", "normalization": {"type": "none"}}],
        "spacing": [float(s) for s in spacing_xyz], "orientation": None, "patch_size": [16, 16, 8],
        "output": {"type": "softmax", "labels": LABELS},
        "inference": {"overlap": 0.25},
    }


@pytest.fixture(scope="session", autouse=True)
def conversion_rules() -> None:
    """Segmentation conversions need their rules registered once per process."""
    if slicer is None:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


@pytest.fixture
def scene():
    """A fresh MRML scene, cleared after the test."""
    if slicer is None:
        pytest.skip("slicer-core is not installed")
    s = slicer.vtkMRMLScene()
    yield s
    s.Clear(1)


@pytest.fixture(scope="session")
def threshold_package(tmp_path_factory) -> Callable[[Sequence[float]], Path]:
    """Factory: path of the threshold test package for a model spacing (built once per spacing)."""
    from tumorseg_core.modelpkg.package import write_package

    root = tmp_path_factory.mktemp("packages")
    built: Dict[Tuple[float, ...], Path] = {}

    def make(spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
        key = tuple(round(float(s), 6) for s in spacing_xyz)
        if key not in built:
            out = root / ("threshold_" + "_".join(f"{s:g}" for s in key))
            built[key] = write_package(out, threshold_manifest(key), [threshold_state_dict()],
                                       readme="Test package: intensity threshold.")
        return built[key]

    return make


def phantom(shape_zyx: Tuple[int, int, int] = (10, 18, 20)) -> np.ndarray:
    """float32 (z, y, x) volume: background ~10, a ball ~60 (label 1) with a core ~120 (label 2).

    A gentle gradient along x makes it asymmetric; no voxel is within 5 of a threshold.
    """
    z, y, x = np.indices(shape_zyx, dtype=np.float32)
    centre = (np.array(shape_zyx, dtype=np.float32) - 1) / 2 + np.array([0, 1, 2], dtype=np.float32)
    r = np.sqrt(((z - centre[0]) / (shape_zyx[0] / 2.2)) ** 2 + ((y - centre[1]) / (shape_zyx[1] / 2.5)) ** 2
                + ((x - centre[2]) / (shape_zyx[2] / 2.5)) ** 2)
    array = np.full(shape_zyx, 10.0, dtype=np.float32) + 0.2 * x
    array[r < 1.0] = 60.0 + 0.2 * x[r < 1.0]
    array[r < 0.45] = 120.0
    return array


def make_volume(scene, array_zyx: np.ndarray, ijk_to_ras: np.ndarray, name: str = "Volume"):
    """Add a scalar volume node holding ``array_zyx`` with the given IJK-to-RAS matrix."""
    from vtkmodules.util import numpy_support

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    nz, ny, nx = array_zyx.shape
    image.SetDimensions(nx, ny, nz)
    data = np.ascontiguousarray(array_zyx)
    scalars = numpy_support.numpy_to_vtk(data.ravel(), deep=True,
                                         array_type=numpy_support.get_vtk_array_type(data.dtype))
    image.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
    node.SetIJKToRASMatrix(matrix)
    return node


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation matrix about x, y or z."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def ijk_to_ras(direction_ras: np.ndarray, spacing: Sequence[float], origin_ras: Sequence[float]) -> np.ndarray:
    """4x4 IJK-to-RAS from RAS direction columns, spacing and origin."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction_ras, dtype=float) * np.asarray(spacing, dtype=float)
    m[:3, 3] = origin_ras
    return m


@pytest.fixture(scope="session")
def logic():
    """One Logic (and warm worker) shared by the tests that do not stop the worker."""
    if slicer is None:
        pytest.skip("slicer-core is not installed")
    from TumorSegmentationLib import TumorSegmentationLogic

    lg = TumorSegmentationLogic(idleTimeout=300)
    yield lg
    lg.shutdown()


@pytest.fixture(scope="session")
def helpers():
    """The helper functions and constants above, for tests (conftest is not importable by name)."""
    import types

    return types.SimpleNamespace(
        T1=T1, T2=T2, LABELS=LABELS, expected_labels=expected_labels, phantom=phantom,
        make_volume=make_volume, rotation=rotation, ijk_to_ras=ijk_to_ras,
    )
