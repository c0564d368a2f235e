"""Reading and writing images and label maps (NIfTI, NRRD, MHA, DICOM series, ``.seg.nrrd``).

Everything here works on ``SimpleITK.Image`` objects in LPS physical space. Reading checks
that an image is usable (3D, finite, not empty or constant) and raises
:class:`~tumorseg_core.errors.InputError` with a one-line message otherwise. Writing is
atomic: the data go to a temporary file in the destination folder that is renamed over
the destination only once complete, so a failed write never leaves a partial output.

This module must import without torch/monai (Slicer's UI process imports it).
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.imaging.seg_nrrd import seg_nrrd_metadata
from tumorseg_core.imaging.segments import SegmentInfo, complete_segments
from tumorseg_core.options import LABELMAP_EXTENSIONS

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: A 4D image whose 4th axis is longer than this is a time series, not channels.
MAX_CHANNELS = 16

# ----------------------------------------------------------------------------- reading


def _one_line(exc: BaseException) -> str:
    """The most informative single line of an ITK/OS error message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """Read the DICOM series with the most files under ``folder`` (searched recursively)."""
    series: list[tuple[int, str, list[str]]] = []
    for root, _dirs, _files in os.walk(folder):
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(root) or ():
            names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, sid))
            series.append((len(names), sid, names))
    if not series:
        raise InputError(f"{folder} is a folder without a DICOM series; give an image file or a DICOM series folder")
    series.sort(key=lambda s: s[0], reverse=True)
    count, sid, names = series[0]
    if len(series) > 1:
        logger.info("%s holds %d DICOM series; reading the largest (%s, %d files)", folder, len(series), sid, count)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    return reader.Execute()


def unreadable_error(path: PathLike, reason: str) -> InputError:
    """The one-line error for a file that cannot be read (whole or in slabs)."""
    return InputError(f"could not read {path} ({reason}); give a NIfTI, NRRD, MHA file or a DICOM folder")


def nonfinite_error(name: str, n_nan: int, n_inf: int) -> InputError:
    return InputError(f"{name} has {n_nan} NaN and {n_inf} Inf voxels; replace them (e.g. with 0) before segmenting")


def constant_error(name: str, value: Any) -> InputError:
    return InputError(f"{name} is empty/constant (every voxel is {value}); give an image with content")


def _read_raw(path: PathLike) -> sitk.Image:
    """Read a file or DICOM folder without checks; InputError naming the path if unreadable."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist; check the path")
    try:
        if p.is_dir():
            return _read_dicom_folder(p)
        return sitk.ReadImage(str(p))
    except InputError:
        raise
    except (RuntimeError, OSError) as exc:
        raise unreadable_error(p, _one_line(exc)) from exc


def check_image(image: sitk.Image, name: str = "image") -> sitk.Image:
    """Check a scalar image is usable and return it unchanged.

    Raises InputError if it is not 3D (2D, a single slice, 4D, vector-valued), has zero
    voxels, contains NaN/Inf values, or all its voxels are equal.
    """
    dim = image.GetDimension()
    size = image.GetSize()
    ncomp = image.GetNumberOfComponentsPerPixel()
    if ncomp > 1:
        raise InputError(f"{name} has {ncomp} values per voxel; use read_channels to split it into 3D channels")
    if dim == 4:
        raise InputError(f"{name} is 4D (size {size}); use read_channels to split it into 3D channels")
    if dim != 3:
        raise InputError(f"{name} is {dim}D (size {size}); a 3D volume is needed")
    if int(np.prod(size)) == 0:
        raise InputError(f"{name} is empty (size {size}); give a volume with voxels")
    if min(size) < 2:
        raise InputError(f"{name} is a single slice (size {size}), i.e. 2D; a 3D volume is needed")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            n_inf = int(array.size - finite.sum()) - n_nan
            raise nonfinite_error(name, n_nan, n_inf)
    first = array.flat[0]
    if np.all(array == first):
        raise constant_error(name, first)
    return image


def _squeeze_4d(image: sitk.Image) -> sitk.Image:
    """A 4D image with a 4th axis of length 1 is really 3D: drop that axis."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size, [0, 0, 0, 0])
    return image


def read_image(path: PathLike) -> sitk.Image:
    """Read a 3D scalar image from a file (NIfTI, NRRD, MHA/MHD, ...) or a DICOM series folder.

    The pixel type is kept (see :func:`to_float32`). Raises InputError if the path is
    missing/unreadable or the image is not a usable 3D volume (see :func:`check_image`).
    """
    image = _squeeze_4d(_read_raw(path))
    return check_image(image, name=str(path))


def read_channels(path: PathLike) -> list[sitk.Image]:
    """Read a multi-channel image (4D with a short 4th axis, or vector-valued) as 3D channels.

    Returns one 3D scalar image per channel (MSD Task01 style: ``(x, y, z, C)`` NIfTI),
    each with the 3D geometry of the file. A plain 3D image gives a one-element list.
    """
    image = _read_raw(path)
    channels: list[sitk.Image]
    if image.GetNumberOfComponentsPerPixel() > 1:
        n = image.GetNumberOfComponentsPerPixel()
        if n > MAX_CHANNELS:
            raise InputError(f"{path} has {n} values per voxel; at most {MAX_CHANNELS} channels are supported")
        channels = [sitk.VectorIndexSelectionCast(image, c) for c in range(n)]
    elif image.GetDimension() == 4:
        size = list(image.GetSize())
        n = size[3]
        if n > MAX_CHANNELS:
            raise InputError(
                f"{path} is 4D with {n} volumes (a time series?); at most {MAX_CHANNELS} channels are supported"
            )
        size[3] = 0
        channels = [sitk.Extract(image, size, [0, 0, 0, c]) for c in range(n)]
    else:
        channels = [image]
    return [check_image(ch, name=f"{path} channel {i}") for i, ch in enumerate(channels)]


def read_images(items: Iterable[PathLike | sitk.Image]) -> list[sitk.Image]:
    """Read and check a list of inputs; each is a path (file or DICOM folder) or a SimpleITK image."""
    images = []
    for i, item in enumerate(items):
        if isinstance(item, sitk.Image):
            images.append(check_image(item, name=f"input image {i + 1}"))
        elif isinstance(item, (str, os.PathLike)):
            images.append(read_image(item))
        else:
            raise InputError(f"input {i + 1} is a {type(item).__name__}; give a file path or a SimpleITK image")
    if not images:
        raise InputError("no input images were given; give at least one image")
    return images


def to_float32(image: sitk.Image) -> sitk.Image:
    """The image cast to 32-bit float (vector images to vector of float32); unchanged if already so."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        target = sitk.sitkVectorFloat32
    else:
        target = sitk.sitkFloat32
    return image if image.GetPixelID() == target else sitk.Cast(image, target)


# ----------------------------------------------------------------------------- writing


def _extension(path: Path, supported: Sequence[str]) -> str:
    name = path.name.lower()
    for ext in supported:
        if name.endswith(ext):
            return ext
    raise TumorSegError(f"cannot write {path.name}: unknown extension; use one of {', '.join(supported)}")


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device; free space or choose another folder"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied; choose a folder you can write to"
    return f"{exc.strerror or _one_line(exc)}; check the path and free space"


def _atomic_write(path: Path, ext: str, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then rename it over ``path``."""
    # The writer creates the temp file itself (not mkstemp), so the output gets the
    # usual umask permissions rather than 0600; the random part avoids collisions.
    tmp = str(path.parent / f".{path.name[: -len(ext)]}.{uuid.uuid4().hex[:12]}.tmp{ext}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TumorSegError(f"could not write {path}: {_os_reason(exc)}") from exc
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise TumorSegError(f"could not write {path}: {_os_reason(exc)}") from exc
    except RuntimeError as exc:  # ITK reports I/O failures (disk full, ...) as RuntimeError
        raise TumorSegError(f"could not write {path}: {_one_line(exc)}; check free space and permissions") from exc
    finally:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                logger.warning("could not remove temporary file %s", tmp)


def _sitk_write(image: sitk.Image, filename: str, compress: bool) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetFileName(filename)
    writer.SetUseCompression(compress)
    writer.Execute(image)


def write_image(image: sitk.Image, path: PathLike) -> Path:
    """Write an image atomically (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``); returns the path."""
    p = Path(path)
    ext = _extension(p, IMAGE_EXTENSIONS)
    if ext == ".mhd":
        # .mhd keeps its voxels in a separate .raw/.zraw file named inside the header,
        # which a renamed temp file would break; write it in place.
        try:
            _sitk_write(image, str(p), compress=True)
        except RuntimeError as exc:
            raise TumorSegError(f"could not write {p}: {_one_line(exc)}; check free space and permissions") from exc
        return p
    _atomic_write(p, ext, lambda tmp: _sitk_write(image, tmp, compress=ext != ".nii"))
    return p


def _segment_infos(labels_array: np.ndarray, segments: Sequence[SegmentInfo] | None) -> list[SegmentInfo]:
    """The given segments plus an auto-named one for every other label value present, by value."""
    for s in segments or ():
        if not isinstance(s, SegmentInfo):
            raise TypeError(f"segments must be SegmentInfo objects, not {type(s).__name__}")
    values = [int(v) for v in np.unique(labels_array) if v]
    missing = sorted(set(values) - {s.value for s in segments or ()})
    if segments and missing:
        logger.warning("label value(s) %s have no segment description; naming them Segment_<value>", missing)
    return sorted(complete_segments(values, list(segments or ())), key=lambda s: s.value)


def _as_label_image(labels: sitk.Image) -> sitk.Image:
    """The labelmap as an unsigned integer image (uint8 when the values fit) with the same geometry."""
    if not isinstance(labels, sitk.Image):
        raise TypeError(f"labels must be a SimpleITK.Image with geometry, not {type(labels).__name__}")
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise TumorSegError(f"labels must be a 3D scalar label map, not {labels.GetDimension()}D; check the result")
    array = sitk.GetArrayViewFromImage(labels)
    if array.size and (array.min() < 0 or array.max() > 65535 or not np.all(np.mod(array, 1) == 0)):
        raise TumorSegError("labels must be whole numbers in 0..65535; check the label map")
    target = sitk.sitkUInt8 if (array.size == 0 or array.max() <= 255) else sitk.sitkUInt16
    out = labels if labels.GetPixelID() == target else sitk.Cast(labels, target)
    if out is labels:
        out = sitk.Image(labels)  # copy: metadata is set on it below
    for key in list(out.GetMetaDataKeys()):
        out.EraseMetaData(key)
    return out


def check_output_path(path: PathLike) -> Path:
    """Refuse a label map path that could not be written, before any work is done.

    The extension must be one of :data:`~tumorseg_core.options.LABELMAP_EXTENSIONS` and
    the folder must exist and be writable. Returns the path.
    """
    output = Path(path)
    _extension(output, LABELMAP_EXTENSIONS)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise TumorSegError(f"output folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise TumorSegError(f"output folder '{parent}' is not writable; choose another folder")
    return output


def write_labelmap(
    labels: sitk.Image, path: PathLike, segments: Sequence[SegmentInfo] | None = None
) -> Path:
    """Write a label map atomically; the format follows the extension.

    ``.seg.nrrd`` is a 3D Slicer segmentation (one segment per label value, with names,
    colors and terminology from ``segments``; label values without a description get an
    automatic name). ``.nii.gz``, ``.nii``, ``.nrrd`` and ``.mha`` hold the plain labelmap.
    ``labels`` is a 3D integer ``SimpleITK.Image``; its geometry is written unchanged.
    Returns the written path. Raises TumorSegError on an unknown extension or a failed write
    (then no file is left at ``path``).
    """
    p = Path(path)
    ext = _extension(p, LABELMAP_EXTENSIONS)
    image = _as_label_image(labels)
    if ext == ".seg.nrrd":
        infos = _segment_infos(sitk.GetArrayViewFromImage(image), segments)
        for key, value in seg_nrrd_metadata(image, infos).items():
            image.SetMetaData(key, value)
    _atomic_write(p, ext, lambda tmp: _sitk_write(image, tmp, compress=ext != ".nii"))
    logger.info("wrote %s", p)
    return p
