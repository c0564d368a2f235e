"""Read a gzip-compressed NIfTI-1 file's voxels slab by slab, decompressing it once.

ITK's NIfTI reader can read a region of a ``.nii.gz`` (``ImageFileReader.SetExtractIndex``),
but gzip cannot seek, so every region decompresses the file from its start: reading a
600-slice CT in 10 slabs took 6.2 s instead of 1.6 s for the whole image. Here one gzip
stream is read forward while the slabs advance (``stream_resample`` asks for them in
increasing z), keeping only the slices the next slab may need again.

Only the voxel bytes are read here; the grid (size, spacing, origin, direction) always
comes from ITK's header reading, so there is one definition of a NIfTI file's geometry.
The values equal ITK's: no scaling is applied, so files with a ``scl_slope``/``scl_inter``
that ITK would apply are not handled here (:func:`open_slabs` returns None), and NaN/Inf
become 0 as ITK's NIfTI reader makes them. Because that hides them, the NaN and Inf voxels
read are counted first (``GzipNiftiSlabs.n_nan``/``n_inf``), and :func:`count_nonfinite`
counts those of any NIfTI-1 file (``.nii`` or ``.nii.gz``) for the readers that go through ITK.
"""

from __future__ import annotations

import gzip
import struct
import sys
import zlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

# NIfTI-1 datatype codes -> numpy type names, for the scalar types ITK reads as they are.
_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
_HEADER_BYTES = 348
# Float datatypes (NIfTI-1 codes) whose NaN/Inf ITK's reader zeroes: float32, float64, complex64/128.
_FLOAT_DTYPES = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}
_COMPLEX = {32: 2, 1792: 2}  # values per voxel
_COUNT_CHUNK = 4 * 1024 * 1024  # values per chunk while counting
#: What a damaged gzip stream raises while it is read.
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)
_NATIVE = "<" if sys.byteorder == "little" else ">"


class GzipNiftiSlabs:
    """Slices z0..z1-1 of a ``.nii.gz`` as numpy (z, y, x) arrays, for increasing z0 and z1.

    Args:
        path: the file.
        size_xyz: the image size ITK reports (checked against the header).
        dtype: the header's voxel type (with its byte order).
        offset: byte offset of the voxels in the decompressed stream (``vox_offset``).
        on_skipped: called as ``on_skipped(z, slice)`` for each slice read but skipped over
            (a gap between slabs), so a caller checking every voxel need not read it again.
    """

    def __init__(self, path: Path, size_xyz: tuple[int, int, int], dtype: np.dtype, offset: int,
                 on_skipped: Optional[Callable[[int, np.ndarray], None]] = None) -> None:
        self.path = Path(path)
        self.size_xyz = size_xyz
        self.dtype = dtype
        self.on_skipped = on_skipped
        self._stream = gzip.open(self.path, "rb")
        try:
            self._stream.seek(offset)  # forward seek of a fresh stream: inflates the header only
        except BaseException:
            self._stream.close()
            raise
        self.n_nan = self.n_inf = 0  # NaN/Inf voxels read so far (stored as 0 in the slabs, as ITK does)
        self._next = 0  # the next slice the stream will deliver
        self._kept = np.empty((0, size_xyz[1], size_xyz[0]), dtype=dtype.newbyteorder("="))
        self._kept_start = 0

    def slab(self, z0: int, z1: int) -> np.ndarray:
        """Slices z0..z1-1 (native byte order); z0 may not move back past an earlier slab's start."""
        if z0 < self._kept_start or z1 < z0 or z1 > self.size_xyz[2]:
            raise ValueError(f"slab {z0}..{z1} is not ahead of the stream (at {self._kept_start}..{self._next})")
        # Drop what no later slab can ask for (they start at z0 or later), skip a gap if any.
        self._kept = self._kept[max(0, z0 - self._kept_start):]
        if z0 > self._next:
            self._read_slices(z0 - self._next)
            self._next = z0
        self._kept_start = z0
        if z1 > self._next:
            kept, count = len(self._kept), z1 - self._next
            nx, ny, _ = self.size_xyz
            # One new array: the kept slices, then the fresh ones inflated straight into it.
            grown = np.empty((kept + count, ny, nx), dtype=self._kept.dtype)
            grown[:kept] = self._kept
            self._read_into(grown[kept:])
            self._kept, self._next = grown, z1
        return self._kept[: z1 - z0]

    def skip_to_end(self) -> None:
        """Read the slices after the last slab (each goes to ``on_skipped``)."""
        self._kept = self._kept[:0]
        self._kept_start = self.size_xyz[2]
        self._read_slices(self.size_xyz[2] - self._next)
        self._next = self.size_xyz[2]

    def _read_slices(self, count: int) -> None:
        """Read ``count`` slices of a gap between slabs, handing each to ``on_skipped``."""
        nx, ny, _ = self.size_xyz
        for z in range(self._next, self._next + count):
            one = np.empty((1, ny, nx), dtype=self._kept.dtype)
            self._read_into(one)
            if self.on_skipped is not None:
                self.on_skipped(z, one)

    def _read_into(self, out: np.ndarray) -> None:
        """Fill ``out`` (native order, C-contiguous) with the stream's next voxels, as ITK reads them."""
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            n = self._stream.readinto(view[done:])
            if not n:
                raise OSError(f"{self.path} ends {len(view) - done} bytes early (truncated file?)")
            done += n
        if self.dtype.byteorder not in ("=", "|") and self.dtype.byteorder != _NATIVE:
            out.byteswap(inplace=True)
        if out.dtype.kind == "f":
            bad = ~np.isfinite(out)
            if bad.any():
                n_nan = int(np.isnan(out).sum())
                self.n_nan += n_nan
                self.n_inf += int(bad.sum()) - n_nan
                out[bad] = 0  # as ITK's NIfTI reader does

    def close(self) -> None:
        self._stream.close()


def _header(path: Path) -> Optional[tuple[str, bytes]]:
    """(byte order, the 348 header bytes) of a NIfTI-1 file (gzip or not), else None."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(_HEADER_BYTES)
    except READ_ERRORS:
        return None
    if len(header) != _HEADER_BYTES:
        return None
    for order in ("<", ">"):
        if struct.unpack(order + "i", header[:4])[0] == _HEADER_BYTES:
            return order, header
    return None  # NIfTI-2 or not NIfTI


def missing_bytes(path: Path) -> int:
    """How many voxel bytes an uncompressed NIfTI-1 file lacks (0 if complete or not such a file).

    ITK's reader fills the voxels past a short ``.nii`` file's end with 0 without a word
    (a file cut off in a copy reads as a mostly empty image). A ``.nii.gz`` ends in a
    gzip error instead, which ITK reports.
    """
    if not str(path).lower().endswith(".nii"):
        return 0
    found = _header(Path(path))
    if found is None:
        return 0
    order, header = found
    dims = struct.unpack(order + "8h", header[40:56])
    bitpix = struct.unpack(order + "h", header[72:74])[0]
    vox_offset = struct.unpack(order + "f", header[108:112])[0]
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or not np.isfinite(vox_offset):
        return 0
    count = int(np.prod([max(1, int(d)) for d in dims[1:dims[0] + 1]], dtype=object))
    end = max(int(vox_offset), _HEADER_BYTES + 4) + count * bitpix // 8
    return max(0, end - Path(path).stat().st_size)


def count_nonfinite(path: Path) -> tuple[int, int]:
    """(NaN, Inf) values among a NIfTI-1 file's float voxels as stored (before ITK zeroes them).

    (0, 0) for a file that is not NIfTI-1 or has no float voxels. Reads the voxels once
    in chunks (a ``.nii.gz`` is inflated once more). A file that ends early is counted up
    to its end (ITK's reader reports the truncation). Complex voxels count each part.
    """
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        return 0, 0
    found = _header(Path(path))
    if found is None:
        return 0, 0
    order, header = found
    dims = struct.unpack(order + "8h", header[40:56])
    datatype = struct.unpack(order + "h", header[70:72])[0]
    vox_offset = struct.unpack(order + "f", header[108:112])[0]
    if datatype not in _FLOAT_DTYPES or not 1 <= dims[0] <= 7 or not np.isfinite(vox_offset):
        return 0, 0
    count = int(np.prod([max(1, int(d)) for d in dims[1:dims[0] + 1]], dtype=np.int64)) * _COMPLEX.get(datatype, 1)
    dtype = np.dtype(order + _FLOAT_DTYPES[datatype])
    n_nan = n_inf = 0
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        stream.seek(max(int(vox_offset), _HEADER_BYTES))
        while count > 0:
            raw = stream.read(min(count, _COUNT_CHUNK) * dtype.itemsize)
            values = np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype=dtype)
            if not values.size:
                break
            if not np.isfinite(values.min()) or not np.isfinite(values.max()):
                nan = int(np.isnan(values).sum())
                n_nan += nan
                n_inf += int(values.size - np.isfinite(values).sum()) - nan
            count -= values.size
    return n_nan, n_inf


def open_slabs(path: Path, reader: sitk.ImageFileReader,
               on_skipped: Optional[Callable[[int, np.ndarray], None]] = None) -> Optional[GzipNiftiSlabs]:
    """A slab reader for a gzip NIfTI-1 file whose values ITK reads unscaled, else None.

    ``reader`` has read the file's information; the header must agree with it (3D, or 4D
    with one volume, the same size and a voxel type of the same kind). Anything unusual
    (scaling, NIfTI-2, a ``vox_offset`` inside the header, a stream that fails to open) is
    left to ITK's reader: None.
    """
    if not str(path).lower().endswith(".nii.gz"):
        return None
    found = _header(Path(path))
    if found is None:
        return None  # NIfTI-2 or not NIfTI: ITK's reader handles it
    order, header = found
    dims = struct.unpack(order + "8h", header[40:56])
    datatype = struct.unpack(order + "h", header[70:72])[0]
    vox_offset = struct.unpack(order + "f", header[108:112])[0]
    slope, inter = struct.unpack(order + "2f", header[112:120])
    if datatype not in _DTYPES or not (slope in (0.0, 1.0) and inter == 0.0):
        return None  # scaled or unusual voxels: ITK's reader converts them
    if vox_offset < _HEADER_BYTES:
        return None  # ITK reads such (mis-written) files from the end of the header instead
    if dims[0] not in (3, 4) or (dims[0] == 4 and dims[4] != 1) or tuple(dims[1:4]) != tuple(reader.GetSize()):
        return None
    dtype = np.dtype(order + _DTYPES[datatype])
    itk_dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).dtype
    if dtype.newbyteorder("=") != itk_dtype:
        return None
    try:
        return GzipNiftiSlabs(Path(path), tuple(int(d) for d in dims[1:4]), dtype, int(vox_offset), on_skipped)
    except READ_ERRORS:
        return None  # e.g. truncated inside the header extensions: ITK's reader reports it
