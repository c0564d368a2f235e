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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError, TumorSegError
from .seg_nrrd import seg_nrrd_metadata
from .seg_nrrd import terminology_string as terminology_string  # public here too (manifests, Logic)

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Output formats by extension (``.seg.nrrd`` is checked before ``.nrrd``).
LABELMAP_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: A 4D image whose 4th axis is longer than this is a time series, not channels.
MAX_CHANNELS = 16

# Colors for label values that come without a SegmentInfo (RGB in 0..1).
_AUTO_COLORS = (
    (0.90, 0.30, 0.20), (0.25, 0.65, 0.30), (0.20, 0.45, 0.85), (0.95, 0.80, 0.20),
    (0.70, 0.35, 0.80), (0.20, 0.80, 0.80), (0.95, 0.55, 0.15), (0.60, 0.60, 0.60),
)


@dataclass(frozen=True)
class SegmentInfo:
    """Name, color and terminology of one label value.

    ``color`` is RGB in 0..1. ``terminology`` is ``None`` or a dict with ``category`` and
    ``type`` (and optionally ``modifier``), each a ``[scheme, code, meaning]`` triple, e.g.
    ``{"category": ["SCT", "49755003", "Morphologically Altered Structure"],
    "type": ["SCT", "108369006", "Neoplasm"]}``.
    """

    value: int
    name: str
    color: tuple[float, float, float] = (0.9, 0.3, 0.2)
    terminology: dict | None = None

    def __post_init__(self) -> None:
        if len(self.color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.color):
            raise TumorSegError(f"segment {self.name!r} color {self.color} is invalid; give three RGB values in 0..1")

    @classmethod
    def from_any(cls, item: SegmentInfo | dict) -> SegmentInfo:
        """Build from a SegmentInfo or a manifest label dict (``value``, ``name``, ``color``, ``terminology``)."""
        if isinstance(item, SegmentInfo):
            return item
        try:
            value = int(item["value"])
            name = str(item.get("name", f"Segment_{value}"))
            color = tuple(float(c) for c in item.get("color", _AUTO_COLORS[(value - 1) % len(_AUTO_COLORS)]))
        except (KeyError, TypeError, ValueError) as exc:
            raise TumorSegError(f"segment description {item!r} is invalid ({exc}); give value, name and color") from exc
        return cls(value, name, color, item.get("terminology"))  # type: ignore[arg-type]


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


def _segment_infos(labels_array: np.ndarray, segments: Sequence[SegmentInfo | dict] | None) -> list[SegmentInfo]:
    """The given segments plus an auto-named one for every other label value present."""
    infos = [SegmentInfo.from_any(s) for s in (segments or ())]
    known = {s.value for s in infos}
    for value in np.unique(labels_array):
        v = int(value)
        if v != 0 and v not in known:
            if segments:
                logger.warning("label value %d has no segment description; naming it Segment_%d", v, v)
            infos.append(SegmentInfo(v, f"Segment_{v}", _AUTO_COLORS[(v - 1) % len(_AUTO_COLORS)]))
    return sorted(infos, key=lambda s: s.value)


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


def write_labelmap(
    labels: sitk.Image, path: PathLike, segments: Sequence[SegmentInfo | dict] | None = None
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
