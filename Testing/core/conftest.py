"""Shared fixtures for the tumorseg_core tests.

Fixtures (all factories, so a test can make several images):

- ``make_image(array_zyx=None, size_xyz=(32, 32, 32), spacing=(1, 1, 1), origin=(0, 0, 0),
  direction=None, pixel_type=sitk.sitkFloat32)`` -> ``SimpleITK.Image`` with that geometry;
  ``array_zyx`` (z, y, x) gives the voxels (else zeros).
- ``make_sphere_image(radius_mm=8, center_lps=None, inside=100, outside=10, noise=0,
  seed=0, **geometry)`` -> ``(image, center_lps)``: a bright ball at a physical
  point (default: the grid centre), values computed from each voxel's LPS position.
- ``rotation_direction(axis, degrees)`` (a fixture; the plain function is in ``directions.py``) ->
  9-tuple direction cosines of a rotation about x/y/z.

The machine is shared: torch and SimpleITK are limited to one/two threads here.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional, Sequence

import numpy as np
import pytest
import SimpleITK as sitk
from directions import rotation_direction

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
if importlib.util.find_spec("torch") is not None:
    import torch

    torch.set_num_threads(1)




def _make_image(
    array_zyx: Optional[np.ndarray] = None,
    size_xyz: Sequence[int] = (32, 32, 32),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Optional[Sequence[float]] = None,
    pixel_type: int = sitk.sitkFloat32,
) -> sitk.Image:
    if array_zyx is None:
        image = sitk.Image([int(s) for s in size_xyz], pixel_type)
    else:
        image = sitk.Cast(sitk.GetImageFromArray(np.asarray(array_zyx)), pixel_type)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in direction])
    return image


def physical_grid(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS coordinates of every voxel centre of ``image``."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1)
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index * spacing) @ direction.T


def _make_sphere_image(
    radius_mm: float = 8.0,
    center_lps: Optional[Sequence[float]] = None,
    inside: float = 100.0,
    outside: float = 10.0,
    noise: float = 0.0,
    seed: int = 0,
    **geometry,
) -> tuple[sitk.Image, np.ndarray]:
    image = _make_image(**geometry)
    size = np.asarray(image.GetSize(), dtype=float)
    if center_lps is None:
        center = np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0)))
    else:
        center = np.asarray(center_lps, dtype=float)
    distance = np.linalg.norm(physical_grid(image) - center, axis=-1)
    array = np.where(distance <= radius_mm, inside, outside).astype(np.float32)
    if noise:
        array += np.random.default_rng(seed).normal(0.0, noise, array.shape).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return sitk.Cast(out, image.GetPixelID()), center


@pytest.fixture
def make_image():
    """Factory: ``make_image(array_zyx=None, size_xyz=..., spacing=..., origin=..., direction=..., pixel_type=...)``."""
    return _make_image


@pytest.fixture
def make_sphere_image():
    """Factory: ``make_sphere_image(radius_mm, center_lps, inside, outside, noise, seed, **geometry)``."""
    return _make_sphere_image


@pytest.fixture(name="rotation_direction")
def rotation_direction_fixture():
    """The :func:`rotation_direction` helper as a fixture."""
    return rotation_direction


@pytest.fixture(autouse=True, scope="session")
def _private_tumorseg_folders(tmp_path_factory):
    """Keep exported-model caches and installed models of the tests out of the user's ~/.tumorseg."""
    import os

    saved = {key: os.environ.get(key) for key in ("TUMORSEG_CACHE", "TUMORSEG_MODELS")}
    os.environ["TUMORSEG_CACHE"] = str(tmp_path_factory.mktemp("tumorseg-cache"))
    os.environ["TUMORSEG_MODELS"] = str(tmp_path_factory.mktemp("tumorseg-models"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def real_anatomy_sources():
    """The real scans of the real-anatomy set (``benchmarks/real_anatomy``), fetched once per machine.

    A test that uses them FAILS with the reason when they cannot be fetched: it never passes or
    skips without the real sources.
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.real_anatomy import fetch_sources

    try:
        return fetch_sources.ensure_sources()
    except fetch_sources.FetchError as exc:
        pytest.fail(f"the real-anatomy sources could not be fetched ({exc}); run "
                    "`python -m benchmarks.real_anatomy.fetch_sources` on a machine that reaches Debian and PyPI")
