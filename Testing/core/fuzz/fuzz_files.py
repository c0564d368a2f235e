"""Crafted input files for the fuzz suite and the adversarial corpus (deterministic, no randomness here).

``write_mha`` writes a MetaImage header by hand, so any size, spacing, direction, element
type or truncation can be expressed (SimpleITK refuses to make many of them);
``patch_nifti`` rewrites fields of a NIfTI-1 header written by SimpleITK (gzip or not).
``expect_one_line`` is the suite's invariant: a result, or a TumorSegError of one line.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import TumorSegError

# MetaImage element types and the numpy types of their bytes.
MET_TYPES = {
    "MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_SHORT": "<i2", "MET_USHORT": "<u2", "MET_INT": "<i4",
    "MET_UINT": "<u4", "MET_FLOAT": "<f4", "MET_DOUBLE": "<f8",
}
# NIfTI-1 header offsets (little endian as SimpleITK writes it).
NIFTI_DIM, NIFTI_DATATYPE, NIFTI_PIXDIM, NIFTI_VOX_OFFSET, NIFTI_SCL = 40, 70, 76, 108, 112


def sha256(path: Path) -> str:
    """The sha256 of a file, or of every file under a folder (sorted names), to prove it unchanged."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def write_mha(path: Path, size: Sequence[int], spacing: Sequence[Any], direction: Sequence[Any],
              data: bytes, element: str = "MET_FLOAT", channels: int = 1, origin: Sequence[Any] = (0, 0, 0),
              compressed: bool = False) -> Path:
    """A MetaImage file with exactly this header and these voxel bytes (truncate ``data`` to damage it)."""
    ndims = len(size)
    origin = list(origin)[:ndims] + [0] * max(0, ndims - len(origin))
    lines = [
        "ObjectType = Image", f"NDims = {ndims}", "BinaryData = True", "BinaryDataByteOrderMSB = False",
        f"CompressedData = {compressed}",
        f"TransformMatrix = {' '.join(str(d) for d in direction)}",
        f"Offset = {' '.join(str(o) for o in origin)}",
        f"ElementSpacing = {' '.join(str(s) for s in spacing)}",
        f"DimSize = {' '.join(str(int(s)) for s in size)}",
    ]
    if channels > 1:
        lines.append(f"ElementNumberOfChannels = {channels}")
    payload = zlib.compress(data) if compressed else data
    if compressed:
        lines.append(f"CompressedDataSize = {len(payload)}")
    lines += [f"ElementType = {element}", "ElementDataFile = LOCAL"]
    Path(path).write_bytes(("\n".join(lines) + "\n").encode() + payload)
    return Path(path)


def voxel_bytes(size: Sequence[int], element: str, channels: int = 1, pattern: str = "random",
                seed: int = 0) -> bytes:
    """Voxel bytes for ``size`` (x, y, z[, t]): random values, with a NaN/Inf ``pattern`` for floats."""
    count = int(np.prod([int(s) for s in size])) * channels
    dtype = np.dtype(MET_TYPES[element])
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        values = rng.normal(50.0, 20.0, count).astype(dtype)
        if pattern == "one_nan" and count:
            values[count // 2] = np.nan
        elif pattern == "one_inf" and count:
            values[0] = -np.inf
        elif pattern == "all_nan":
            values[:] = np.nan
        elif pattern == "half_nan":
            values[::2] = np.nan
        elif pattern == "constant":
            values[:] = 7.0
    else:
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, -1000), min(info.max, 1000), count, endpoint=True).astype(dtype)
        if pattern == "constant":
            values[:] = 3
        elif pattern == "bool":
            values = (values > 0).astype(dtype)
    return values.tobytes()


def write_sitk(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), direction=None, vector: bool = False) -> Path:
    """An image written by SimpleITK (so a well-formed file), from a (z, y, x[, c]) array."""
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing([float(s) for s in spacing])
    if direction is not None:
        image.SetDirection([float(d) for d in direction])
    sitk.WriteImage(image, str(path))
    return Path(path)


def patch_nifti(path: Path, patches: Sequence[tuple[int, str, Sequence[Any]]], truncate: Optional[int] = None) -> Path:
    """Overwrite NIfTI-1 header fields in place: ``(offset, struct format, values)``; optionally cut the file."""
    gz = str(path).endswith(".gz")
    raw = bytearray(gzip.decompress(Path(path).read_bytes()) if gz else Path(path).read_bytes())
    for offset, fmt, values in patches:
        struct.pack_into("<" + fmt, raw, offset, *values)
    if truncate is not None:
        raw = raw[:truncate]
    Path(path).write_bytes(gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw))
    return Path(path)


def expect_one_line(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or None after a TumorSegError whose message is one non-empty line.

    Any other exception type propagates (the fuzz test fails on it).
    """
    try:
        return call()
    except TumorSegError as error:
        message = str(error)
        assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
        assert "Traceback" not in message, message
        return None
