"""Preprocess each training case once and keep it as ``.npy`` files.

A case is read (4D/vector files split into channels), the first channel is resampled to
the model grid with :func:`tumorseg_core.imaging.geometry.to_model_grid`, the other channels
(linear) and the label (nearest neighbour) are resampled onto exactly that grid, and each
channel is normalised with :func:`tumorseg_core.imaging.preprocess.normalize`. Results::

    <cache_dir>/<key>.image.npy   float32 (C, z, y, x)
    <cache_dir>/<key>.label.npy   uint8   (1, z, y, x)
    <cache_dir>/<key>.json        {"id", "shape_zyx", "spacing_xyz", "labels_present"}

``key`` is a sha256 of the case's files (absolute path, size, mtime) and the
preprocessing settings, so an edited file or a changed spacing/normalisation gives a
new entry and stale entries are never used. Files are written to a temporary name
and renamed, so concurrent writers (several DDP ranks) cannot leave a torn file.
Arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.training.datasets import Case

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the preprocessing code changes what it produces


@dataclass(frozen=True)
class PreprocessConfig:
    """What the preprocessing depends on (part of the cache key).

    Attributes:
        spacing_xyz: model spacing in mm (x, y, z).
        orientation: 3-letter code for ``DICOMOrient`` or None to keep the axes.
        normalizations: one normalization scheme per input channel.
        max_label: largest label value the model has a channel for.
    """

    spacing_xyz: tuple[float, float, float]
    orientation: str | None
    normalizations: tuple[dict[str, Any], ...]
    max_label: int

    def as_json(self) -> dict[str, Any]:
        return {
            "spacing_xyz": list(self.spacing_xyz),
            "orientation": self.orientation,
            "normalizations": list(self.normalizations),
            "max_label": self.max_label,
        }


@dataclass(frozen=True)
class CachedCase:
    """Paths of one preprocessed case."""

    id: str
    image: Path
    label: Path

    def load(self, mmap: bool = True) -> dict[str, np.ndarray]:
        """``{"image": float32 (C,z,y,x), "label": uint8 (1,z,y,x)}`` (memory-mapped, read-only by default)."""
        mode = "r" if mmap else None
        return {
            "image": np.load(self.image, mmap_mode=mode, allow_pickle=False),
            "label": np.load(self.label, mmap_mode=mode, allow_pickle=False),
        }


def case_key(case: Case, config: PreprocessConfig) -> str:
    """Hex sha256 identifying ``case``'s current files and ``config``."""
    files = []
    for p in case.files():
        try:
            st = Path(p).stat()
        except OSError as exc:
            raise InputError(f"training file {p} is not readable ({exc}); fix the dataset") from exc
        files.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {"v": CACHE_VERSION, "id": case.id, "files": files, "config": config.as_json()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def read_label(path: Path) -> sitk.Image:
    """Read a label map as a 3D integer image (a lesion-free, all-zero label is valid)."""
    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[-1]
        raise InputError(f"could not read label {path} ({first}); give a NIfTI/NRRD/MHA label map") from exc
    if label.GetDimension() == 4 and label.GetSize()[3] == 1:
        size = list(label.GetSize())
        size[3] = 0
        label = sitk.Extract(label, size, [0, 0, 0, 0])
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"label {path} is not a 3D scalar image (size {label.GetSize()}); give a 3D label map")
    return label


def preprocess_case(case: Case, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read and preprocess one case.

    Returns:
        ``(image float32 (C, z, y, x), label uint8 (1, z, y, x), spacing_xyz)`` on the model grid.
    """
    from tumorseg_core.imaging.geometry import to_model_grid
    from tumorseg_core.imaging.io import read_channels
    from tumorseg_core.imaging.preprocess import normalize

    channels: list[sitk.Image] = []
    for path in case.images:
        channels.extend(read_channels(path))
    if len(channels) != len(config.normalizations):
        raise InputError(
            f"case {case.id} has {len(channels)} image channel(s) but the model takes "
            f"{len(config.normalizations)}; fix 'inputs' in the config or the dataset"
        )
    reference = to_model_grid(channels[0], config.spacing_xyz, config.orientation, "linear")
    identity = sitk.Transform()
    grid = [reference] + [
        sitk.Resample(sitk.Cast(ch, sitk.sitkFloat32), reference, identity, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        for ch in channels[1:]
    ]
    label_img = read_label(case.label)
    # The label lives in physical space like the images; resampling onto the reference
    # grid (nearest neighbour) also fixes small header differences between the two.
    label_on_grid = sitk.Resample(label_img, reference, identity, sitk.sitkNearestNeighbor, 0)
    label = sitk.GetArrayFromImage(label_on_grid)
    if label.min() < 0 or label.max() > config.max_label:
        raise InputError(
            f"label {case.label} has values {int(label.min())}..{int(label.max())} but the model has labels "
            f"1..{config.max_label}; list every label value in the config's output labels"
        )
    image = np.stack(
        [normalize(sitk.GetArrayViewFromImage(ch), scheme) for ch, scheme in zip(grid, config.normalizations)]
    ).astype(np.float32, copy=False)
    return image, label.astype(np.uint8)[None], tuple(reference.GetSpacing())


def atomic_save(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_case(case: Case, config: PreprocessConfig, cache_dir: Path) -> CachedCase:
    """Preprocess ``case`` into ``cache_dir`` unless an up-to-date entry exists; return its paths."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = case_key(case, config)
    cached = CachedCase(case.id, cache_dir / f"{key}.image.npy", cache_dir / f"{key}.label.npy")
    meta_path = cache_dir / f"{key}.json"
    if meta_path.is_file() and cached.image.is_file() and cached.label.is_file():
        logger.debug("cache hit for %s (%s)", case.id, key)
        return cached
    logger.info("preprocessing %s", case.id)
    image, label, spacing = preprocess_case(case, config)
    atomic_save(cached.image, image)
    atomic_save(cached.label, label)
    meta = {
        "id": case.id,
        "shape_zyx": list(image.shape[1:]),
        "spacing_xyz": list(spacing),
        "labels_present": sorted(int(v) for v in np.unique(label)),
    }
    # The metadata file is written last: its presence marks a complete entry.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=meta_path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    os.replace(tmp, meta_path)
    return cached


def cache_cases(
    cases: Sequence[Case],
    config: PreprocessConfig,
    cache_dir: Path,
    progress: Callable[[float, str], None] | None = None,
) -> list[CachedCase]:
    """:func:`cache_case` for every case, in order (in parallel processes when there are many)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(len(cases), os.cpu_count() or 1)
    if workers > 1 and len(cases) >= 8:
        # Resampling is CPU-bound and cases are independent; each result lands in its own cache file.
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(cache_case, case, config, cache_dir) for case in cases]
            out = []
            for i, (case, future) in enumerate(zip(cases, futures)):
                out.append(future.result())
                if progress is not None:
                    progress((i + 1) / len(cases), f"preprocessed {case.id}")
            return out
    out = []
    for i, case in enumerate(cases):
        out.append(cache_case(case, config, cache_dir))
        if progress is not None:
            progress((i + 1) / max(1, len(cases)), f"preprocessed {case.id}")
    return out
