"""Read an image file straight onto the model grid, one z slab at a time.

``read_image`` + ``to_model_grid`` holds the whole input twice at its peak (ITK's file
buffer and the image) although the model-grid result is often 6x smaller (a 512x512x300
CT at 1.5 mm). :func:`read_to_model_grid` gives the same result while holding only a slab
of input slices: it splits the model grid into chunks along the axis that follows the
file's slowest (z) axis, reads the input slices each chunk needs with
``ImageFileReader.SetExtractIndex/SetExtractSize`` and resamples them onto that chunk.
The input checks of ``io.check_image`` run slab by slab over every input voxel.

Exactness: the grids are identical and every input voxel an interpolation reads lies in
the slab, so the voxels differ from the whole-image path only by floating-point rounding:
ITK maps a chunk's voxels to input indices from the chunk's and the slab's origins instead
of the model grid's and the file's, which moves an index by ~1e-15. That shows only where
the whole path's value is (within ~1e-15 of) a float32 rounding tie or an exact 0, which
round spacing ratios make common: one float32 ulp apart, or ~1e-10 instead of 0.
Measured: 512x512x300 float32 at (0.7, 0.7, 1.0) mm, 0 of 11.4 M voxels differ;
512x512x600 int16 at (0.68, 0.68, 0.625) mm, 6 of 13.6 M (|diff| <= 2.3e-10); 40x36x30
random images with round ratios, up to ~1 % by one ulp. One chunk (``slab_voxels`` >=
the file) is bit-identical.

Cost: ITK cannot seek in gzip, so each slab of a compressed ``.mha`` would inflate the
file from its start (600-slice CT: 1.6 s whole, 6.2 s in 16 Mi-voxel slabs); a ``.nii.gz``
is therefore inflated once, forward, by ``nifti_slabs`` (its slabs come in increasing z).

Streamed: NIfTI (``.nii``, ``.nii.gz``) and MetaImage (``.mha``, ``.mhd``), 3D scalar,
``linear``. Anything else (NRRD, DICOM folders, 4D or vector images, ``nearest``,
``bspline``, ``spacing_xyz=None``) takes the whole-image path. No torch import here.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import CancelledError, InputError, TumorSegError
from tumorseg_core.imaging import geometry, io, nifti_slabs
from tumorseg_core.imaging.geometry import GridGeometry

logger = logging.getLogger(__name__)

#: Input voxels per slab (16 Mi: 64 MB of float32; ITK's NIfTI reader holds about twice that).
DEFAULT_SLAB_VOXELS = 16 * 1024 * 1024

# Readers that read an extract region without the whole file, with the values of a full
# read (measured with SimpleITK 2.5: NIfTI holds ~2x the region, .nii.gz included, though
# it reports CanStreamRead() False; a raw .mha ~1x, a compressed one ~3x). NRRD reads the
# whole file for any region; other formats are not verified.
_STREAMING_IOS = ("NiftiImageIO", "MetaImageIO")
# Interpolators streamed. B-spline prefilters the whole image. Nearest neighbour meets
# ties (an output voxel centre half-way between two input centres) systematically with
# round spacing ratios, where the rounding of the module docstring would pick the other
# neighbour: a whole voxel's value, not an ulp. Both take the whole-image path.
_STREAMED_INTERPOLATORS = ("linear",)
# Extra input slices on each side of a slab beyond the ones a chunk's corners map to, so
# every neighbour an interpolator reads lies inside the slab and ITK's inside-the-buffer
# test ([start - 0.5, end + 0.5] in index) never sees a slab edge that is not an image edge.
_MARGIN = 2
_REAL_PIXEL_TYPES = (
    sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt32,
    sitk.sitkInt64, sitk.sitkUInt64, sitk.sitkFloat32, sitk.sitkFloat64,
)

PathLike = Union[str, "os.PathLike[str]"]


def _stream_reader(path: PathLike) -> Optional[sitk.ImageFileReader]:
    """A reader with the header of ``path`` read, or None if the file cannot be streamed."""
    p = Path(path)
    if not p.is_file():
        return None  # missing path or DICOM folder: the whole-image path reads or reports it
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    with io.native_stderr_captured():  # niftilib prints "** ERROR: ..." for a bad header
        try:
            reader.ReadImageInformation()
            io_name = reader.GetImageIOFromFileName(str(p))
        except RuntimeError:
            return None  # unreadable: io._read_raw gives the InputError
    if io_name not in _STREAMING_IOS:
        return None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None  # 4D, 2D, vector: read_image squeezes or reports them
    if reader.GetPixelID() not in _REAL_PIXEL_TYPES:
        return None
    if min(reader.GetSize()) < 2:
        return None  # empty or single slice: check_image reports it
    try:
        io.check_grid(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), str(p))
    except InputError:
        return None  # a grid no resampling can use: the whole-image path reports it
    return reader


def can_stream(path: PathLike) -> bool:
    """True if :func:`read_to_model_grid` can read ``path`` slab by slab (a 3D scalar NIfTI/MetaImage file)."""
    return _stream_reader(path) is not None


def file_grid(path: PathLike) -> Optional[GridGeometry]:
    """The grid of a file :func:`read_to_model_grid` streams (from its header alone), else None."""
    reader = _stream_reader(path)
    return None if reader is None else _grid_of(reader)


def header_grid(path: PathLike) -> Optional[GridGeometry]:
    """The 3D grid of any image file from its header alone (a 4D file's first three axes), else None.

    None for folders (DICOM), unreadable headers and grids that are not 3D or 4D.
    """
    p = Path(path)
    if not p.is_file():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    with io.native_stderr_captured():
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return None
    dim = reader.GetDimension()
    if dim not in (3, 4):
        return None
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    return GridGeometry(tuple(reader.GetSize()[:3]), tuple(reader.GetSpacing()[:3]), tuple(reader.GetOrigin()[:3]),
                        tuple(float(d) for d in direction.ravel()))


def check_model_grid_size(grid: GridGeometry, spacing_xyz: Optional[Sequence[float]], name: str) -> None:
    """InputError if ``grid`` resampled to ``spacing_xyz`` would exceed ``io.MAX_VOXELS``.

    Computed in floating point from the physical extent (size x spacing per axis; a
    reorientation only permutes the axes, which leaves the product unchanged), so an
    absurd header spacing (1e30 mm) is refused before the grid arithmetic overflows or
    the model-grid array exhausts memory.
    """
    if spacing_xyz is None:
        return
    extent = np.asarray(grid.size, dtype=float) * np.asarray(grid.spacing, dtype=float)
    counts = np.maximum(1.0, np.round(np.sort(extent) / np.sort(np.asarray(spacing_xyz, dtype=float))))
    if not np.all(np.isfinite(counts)) or float(np.prod(counts)) > io.MAX_VOXELS:
        raise InputError(f"{name} spans {tuple(float(f'{e:.4g}') for e in extent)} mm: too many voxels at the "
                         f"model's spacing {tuple(spacing_xyz)} mm; check the spacing in its header")


def _grid_of(reader: sitk.ImageFileReader) -> GridGeometry:
    return GridGeometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                        tuple(reader.GetDirection()))


def _whole_image_path(path: PathLike, spacing_xyz: Optional[Sequence[float]], orientation: Optional[str],
                      interpolator: str) -> tuple[np.ndarray, GridGeometry, GridGeometry]:
    image = io.read_image(path)
    check_model_grid_size(GridGeometry.of(image), spacing_xyz, str(path))
    model = geometry.to_model_grid(image, spacing_xyz, orientation, interpolator)
    return sitk.GetArrayFromImage(model), GridGeometry.of(model), GridGeometry.of(image)


def _index_matrix(grid: GridGeometry) -> np.ndarray:
    """Direction @ diag(spacing): maps a grid's index to a physical offset from its origin."""
    return np.asarray(grid.direction, dtype=float).reshape(3, 3) * np.asarray(grid.spacing, dtype=float)


def _chunks(model: GridGeometry, source: GridGeometry, slab_voxels: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(axis, first, stop, z0, z1): model-grid slices [first, stop) along ``axis`` need input z0..z1-1.

    The axis is the model axis along which the input z index moves most; a chunk holds as
    many slices as keep its input slab near ``slab_voxels`` (at least one). z0 >= z1: outside.
    """
    to_input = np.linalg.solve(_index_matrix(source), _index_matrix(model))  # model index -> input index
    offset = np.linalg.solve(_index_matrix(source), np.subtract(model.origin, source.origin))
    # Not by direction cosines: with a non-unit direction column (hand-made MetaImage) the
    # most parallel axis can move the input z index by 0 per slice.
    axis = int(np.argmax(np.abs(to_input[2])))
    step = abs(to_input[2, axis])  # input slices per model slice along the axis (> 0: invertible)
    # The map is affine, so one model slice spans the same input z extent wherever it is,
    # and c slices span extent + (c - 1) * step input slices (plus margins and rounding).
    extent = sum(abs(to_input[2, a]) * (model.size[a] - 1) for a in range(3) if a != axis)
    budget = max(1, slab_voxels // (source.size[0] * source.size[1]))
    per_chunk = max(1, int((budget - extent - 2 * _MARGIN - 2) // step) + 1)
    for first in range(0, model.size[axis], per_chunk):
        stop = min(first + per_chunk, model.size[axis])
        ends = [[0, n - 1] for n in model.size]
        ends[axis] = [first, stop - 1]
        corners = np.array(list(itertools.product(*ends)), dtype=float).T  # (3, 8) model indices
        # An affine map takes the chunk's box to a parallelepiped: its corners bound it.
        z = offset[2] + to_input[2] @ corners
        z0 = max(0, int(np.floor(z.min())) - _MARGIN)
        z1 = min(source.size[2], int(np.ceil(z.max())) + _MARGIN + 1)
        yield axis, first, stop, z0, z1


class _Checks:
    """``io.check_image``'s NaN/Inf and constant checks, accumulated over disjoint z slabs."""

    def __init__(self, depth: int) -> None:
        self.done = np.zeros(depth, dtype=bool)  # input z slices already checked
        self.n_nan = self.n_inf = 0
        self.first = None  # voxel (0, 0, 0), named in the constant-image message
        self.value = None  # the value every voxel has while the image looks constant
        self.constant = True

    def add(self, z0: int, array: np.ndarray) -> None:
        """Check the not yet checked slices of ``array`` (input slices z0, z0 + 1, ...)."""
        todo = np.flatnonzero(~self.done[z0:z0 + len(array)])
        for run in np.split(todo, np.flatnonzero(np.diff(todo) > 1) + 1) if todo.size else ():
            part = array[run[0]:run[-1] + 1]
            if z0 + run[0] == 0:
                self.first = part.flat[0]
            # min/max need no temporary array; NaN or Inf shows in one of them.
            low, high = part.min(), part.max()
            if np.issubdtype(part.dtype, np.floating) and not (np.isfinite(low) and np.isfinite(high)):
                n_nan = int(np.isnan(part).sum())
                self.n_nan += n_nan
                self.n_inf += int(part.size - np.isfinite(part).sum()) - n_nan
            if self.value is None:
                self.value = low
            self.constant = self.constant and bool(low == high == self.value)
        self.done[z0:z0 + len(array)] = True

    @property
    def failed(self) -> bool:
        return bool(self.n_nan or self.n_inf)

    def add_hidden(self, n_nan: int, n_inf: int) -> None:
        """NaN/Inf voxels the reader handed over as 0 (NIfTI): they count, and the zeros do not make a constant."""
        self.n_nan += n_nan
        self.n_inf += n_inf

    def raise_errors(self, name: str, total: int) -> None:
        """The InputError check_image would raise (same order and wording), if any; ``total``: voxel count."""
        if self.failed:
            raise io.nonfinite_error(name, self.n_nan, self.n_inf, total)
        if self.constant:
            raise io.constant_error(name, self.first)


def read_to_model_grid(
    path: PathLike,
    spacing_xyz: Optional[Sequence[float]],
    orientation: Optional[str] = None,
    interpolator: str = "linear",
    slab_voxels: int = DEFAULT_SLAB_VOXELS,
    cancel: Optional[Callable[[], bool]] = None,
) -> tuple[np.ndarray, GridGeometry, GridGeometry]:
    """Read ``path`` onto the model grid without holding the whole input.

    Returns ``(voxels (z, y, x), model grid, input grid)`` like ``read_image`` +
    ``to_model_grid``: ``GetArrayFromImage(model)`` (C-contiguous; float32, or the input's
    pixel type for ``"nearest"``), ``GridGeometry.of(model)``, ``GridGeometry.of(image)``.
    The grids are equal; the voxels equal up to the rounding described in the module
    docstring. Raises the same InputErrors (after reading the whole file). ``slab_voxels``
    bounds the input voxels read at once (roughly: a chunk needs at least one model
    slice's input slices plus margins). Files :func:`can_stream` rejects, ``spacing_xyz=None``
    (reorient only), ``"nearest"`` and ``"bspline"`` take the whole-image path.
    ``cancel()`` returning True between slabs raises :class:`CancelledError`.
    """
    if int(slab_voxels) < 1:
        raise TumorSegError(f"slab_voxels {slab_voxels} is invalid; give a positive number of voxels")
    reader = _stream_reader(path) if interpolator in _STREAMED_INTERPOLATORS and spacing_xyz is not None else None
    if reader is None:
        return _whole_image_path(path, spacing_xyz, orientation, interpolator)
    source = _grid_of(reader)
    check_model_grid_size(source, spacing_xyz, str(path))
    try:
        model = geometry.model_grid(source, spacing_xyz, orientation)
    except TumorSegError:
        # The whole-image path reports a bad input before a bad spacing: keep that order.
        return _whole_image_path(path, spacing_xyz, orientation, interpolator)

    if int(np.prod(model.size, dtype=object)) > io.MAX_VOXELS:
        raise InputError(f"{path} would be {'x'.join(str(n) for n in model.size)} voxels on the model grid; "
                         "check its spacing in the file's header")
    out = np.zeros(model.size[::-1], dtype=np.float32)  # to_model_grid interpolates into float32
    checks = _Checks(source.size[2])
    matrix = _index_matrix(model)
    slabs = 0
    read_slab, finish, close, hidden = _slab_source(path, reader, source, checks.add)
    # In increasing input z (a flipped model axis runs backwards), so a gzip stream only goes forward.
    try:
        for axis, first, stop, z0, z1 in sorted(_chunks(model, source, int(slab_voxels)), key=lambda c: (c[3], c[4])):
            if cancel is not None and cancel():
                raise CancelledError()
            if z0 >= z1:
                continue  # the chunk lies beyond the input's z extent: zeros, like ITK's default
            slab = read_slab(z0, z1)  # kept alive while its array view is used
            checks.add(z0, sitk.GetArrayViewFromImage(slab))
            slabs += 1
            if checks.failed:
                continue  # it will raise: only count the rest
            size = list(model.size)
            size[axis] = stop - first
            origin = np.asarray(model.origin) + matrix[:, axis] * first
            chunk = sitk.Resample(slab, size, sitk.Transform(), geometry._INTERPOLATORS[interpolator],
                                  [float(o) for o in origin], model.spacing, model.direction, 0, sitk.sitkFloat32)
            del slab
            index: list[slice] = [slice(None)] * 3
            index[2 - axis] = slice(first, stop)  # numpy order is (z, y, x)
            out[tuple(index)] = sitk.GetArrayViewFromImage(chunk)
        finish()
        checks.add_hidden(*hidden())
    finally:
        close()
    # Slices no chunk needed still count for the checks: read them in disjoint slabs.
    budget = max(1, int(slab_voxels) // (source.size[0] * source.size[1]))
    for z0 in np.flatnonzero(~checks.done):
        if not checks.done[z0]:
            slab = _read_slab(reader, source, int(z0), min(int(z0) + budget, source.size[2]))
            checks.add(int(z0), sitk.GetArrayViewFromImage(slab))
            slabs += 1
    checks.raise_errors(str(path), int(np.prod(source.size)))
    logger.info("read %s onto the model grid in %d slabs of at most %d input voxels", path, slabs, int(slab_voxels))
    return out, model, source


def _slab_source(path: PathLike, reader: sitk.ImageFileReader, source: GridGeometry,
                 on_skipped: Callable[[int, np.ndarray], None]) -> tuple[
                     Callable[[int, int], sitk.Image], Callable[[], None], Callable[[], None],
                     Callable[[], tuple[int, int]]]:
    """``(read, finish, close, hidden)``: ``read(z0, z1)`` -> input slices z0..z1-1 as an image, in
    increasing z; ``finish()`` hands the slices after the last slab to ``on_skipped`` (gzip);
    ``close()`` releases the stream; ``hidden()`` -> (NaN, Inf) voxels the file stores but
    the slabs hold as 0 (NIfTI readers zero them; MetaImage keeps them, so the checks see them).

    A ``.nii.gz`` is decompressed once, forward (``nifti_slabs``); ITK's region reader would
    decompress it from the start for every slab (10 slabs of a 600-slice CT: 6.2 s, not 1.6 s).
    """
    slabs = nifti_slabs.open_slabs(Path(path), reader, on_skipped)
    if slabs is None:
        return ((lambda z0, z1: _read_slab(reader, source, z0, z1)), (lambda: None), (lambda: None),
                (lambda: io.raw_nonfinite(path)))
    located = source.located()

    def read(z0: int, z1: int) -> sitk.Image:
        try:
            image = sitk.GetImageFromArray(slabs.slab(z0, z1))
        except nifti_slabs.READ_ERRORS as exc:
            raise io.unreadable_error(path, str(exc)) from exc
        image.SetSpacing(source.spacing)
        image.SetDirection(source.direction)
        image.SetOrigin(located.TransformIndexToPhysicalPoint((0, 0, int(z0))))
        return image

    def finish() -> None:
        try:
            slabs.skip_to_end()
        except nifti_slabs.READ_ERRORS as exc:
            raise io.unreadable_error(path, str(exc)) from exc

    return read, finish, slabs.close, (lambda: (slabs.n_nan, slabs.n_inf))


def _read_slab(reader: sitk.ImageFileReader, source: GridGeometry, z0: int, z1: int) -> sitk.Image:
    """Input slices z0..z1-1 (whole x/y extent) as an image at their physical position."""
    reader.SetExtractIndex([0, 0, int(z0)])
    reader.SetExtractSize([source.size[0], source.size[1], int(z1 - z0)])
    with io.native_stderr_captured():
        try:
            return reader.Execute()
        except RuntimeError as exc:
            failure = exc
    raise io.unreadable_error(reader.GetFileName(), io._one_line(failure)) from failure
