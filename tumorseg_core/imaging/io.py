"""Reading and writing images and label maps (NIfTI, NRRD, MHA, DICOM series, ``.seg.nrrd``).

Everything here works on ``SimpleITK.Image`` objects in LPS physical space. Reading checks
that an image is usable (3D, finite, not empty or constant) and raises
:class:`~tumorseg_core.errors.InputError` with a one-line message otherwise. Writing is
atomic: the data go to a temporary file in the destination folder that is renamed over
the destination only once complete, so a failed write never leaves a partial output.

This module must import without torch/monai (Slicer's UI process imports it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.imaging import metaimage_check, nifti_slabs
from tumorseg_core.imaging.seg_nrrd import seg_nrrd_metadata
from tumorseg_core.imaging.segments import SegmentInfo, complete_segments
from tumorseg_core.options import LABELMAP_EXTENSIONS

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: The most voxels (times components) a file's header may declare: 2**31 (8 GiB of float32). A larger
#: header is refused before ITK allocates it (a lying header would otherwise exhaust memory).
MAX_VOXELS = 2**31
# |det(direction)| below this is a degenerate (flat) grid.
_MIN_DETERMINANT = 1e-6
#: A 4D image whose 4th axis is longer than this is a time series, not channels.
MAX_CHANNELS = 16

# ----------------------------------------------------------------------------- reading

# "ITK ERROR: NiftiImageIO(0x55975439e220): " / "** ERROR: " prefixes: noise in a user's message.
_ITK_PREFIX = re.compile(r"^(ITK ERROR: |ITK WARNING: )?\w+ ?\(0x[0-9a-fA-F]+\):? ?")
_NATIVE_PREFIX = re.compile(r"^(\*\* )?(ERROR|WARNING)\s*:\s*", re.IGNORECASE)
# The most native stderr text kept per read (a damaged DICOM folder can print per file).
_NATIVE_BYTES = 64 * 1024


def _one_line(exc: BaseException) -> str:
    """The most informative single line of an ITK/OS error message (without ITK's object address)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("description:"):
            return _ITK_PREFIX.sub("", ln.split(":", 1)[1].strip())
    for ln in lines:
        if ln.startswith("ITK ERROR:"):
            return _ITK_PREFIX.sub("", ln)
    return _ITK_PREFIX.sub("", lines[-1]) if lines else type(exc).__name__


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Send file descriptor 2 to a temporary file while ITK, GDCM or niftilib run.

    Their warnings and errors (``** ERROR: nifti_convert_nhdr2nim: bad dim[1]``, GDCM's
    ``No Series were found``) are written from C/C++ straight to fd 2, past Python's
    ``sys.stderr`` and SimpleITK's warning switch, so a user would see them before the one
    ``error:`` line. Yields a list that holds the captured lines (stripped, non-empty)
    once the block ends; they are also logged at debug level. fd 2 is process-wide: keep
    the block to the native call (Python output of other threads meanwhile is captured too).
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield lines  # no fd 2 to redirect (embedded interpreter): nothing to hide
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(_NATIVE_BYTES).decode("utf-8", errors="replace")
            lines.extend(ln.strip() for ln in text.splitlines() if ln.strip())
            for line in lines:
                logger.debug("native: %s", line)


def _native_reason(lines: Sequence[str]) -> str:
    """The first native error line (``** ERROR: x`` -> ``x``), or "" if none says ERROR."""
    for line in lines:
        if "ERROR" in line.upper():
            return _NATIVE_PREFIX.sub("", _ITK_PREFIX.sub("", line)).strip()
    return ""


def dicom_series_files(folder: Path) -> list[tuple[str, list[str]]]:
    """Every DICOM series under ``folder`` (searched recursively), most files first.

    Each is ``(series id, file names)`` with the file names in SimpleITK's (GDCM's) slice
    order, which is the z order of the volume :func:`read_dicom_files` reads from them.
    """
    series: list[tuple[str, list[str]]] = []
    for root, _dirs, _files in os.walk(folder):
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(root) or ():
            series.append((sid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, sid))))
    series.sort(key=lambda s: len(s[1]), reverse=True)
    return series


def read_dicom_files(names: Sequence[str]) -> sitk.Image:
    """The volume of one DICOM series' files, slice ``k`` from ``names[k]`` (no checks)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(names))
    return reader.Execute()


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """Read the DICOM series with the most files under ``folder`` (searched recursively)."""
    with native_stderr_captured():  # GDCM warns "No Series were found" on stderr for every folder
        series = dicom_series_files(folder)
    if not series:
        raise InputError(f"{folder} is a folder without a DICOM series; give an image file or a DICOM series folder")
    sid, names = series[0]
    if len(series) > 1:
        logger.info("%s holds %d DICOM series; reading the largest (%s, %d files)", folder, len(series), sid, len(names))
    with native_stderr_captured() as native:
        try:
            return read_dicom_files(names)
        except RuntimeError as exc:
            failure = exc
    raise unreadable_error(folder, _with_native(_one_line(failure), native)) from failure


def _with_native(reason: str, native: Sequence[str]) -> str:
    """``reason`` plus the native library's own error line, when it says more."""
    extra = _native_reason(native)
    return f"{reason}: {extra}" if extra and extra not in reason else reason


def unreadable_error(path: PathLike, reason: str) -> InputError:
    """The one-line error for a file that cannot be read (whole or in slabs)."""
    return InputError(f"could not read {path} ({reason}); give a NIfTI, NRRD, MHA file or a DICOM folder")


def nonfinite_error(name: str, n_nan: int, n_inf: int, total: Optional[int] = None) -> InputError:
    """The one-line error for NaN/Inf voxels (``total``: the voxel count, to say "every voxel")."""
    every = " (every voxel)" if total is not None and n_nan + n_inf >= total else ""
    return InputError(f"{name} has {n_nan} NaN and {n_inf} Inf voxels{every}; "
                      "replace them (e.g. with 0) before segmenting")


def raw_nonfinite(path: PathLike) -> tuple[int, int]:
    """(NaN, Inf) voxels stored in a NIfTI file, which ITK's reader silently turns into 0; else (0, 0)."""
    try:
        return nifti_slabs.count_nonfinite(Path(path))
    except nifti_slabs.READ_ERRORS:
        return 0, 0  # damaged voxel data: ITK's reader reports it


def constant_error(name: str, value: Any) -> InputError:
    return InputError(f"{name} is empty/constant (every voxel is {value}); give an image with content")


def _read_raw(path: PathLike) -> sitk.Image:
    """Read a file or DICOM folder without checks; InputError naming the path if unreadable."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist; check the path")
    if p.is_dir():
        try:
            return _read_dicom_folder(p)
        except OSError as exc:
            raise unreadable_error(p, _one_line(exc)) from exc
    if not p.is_file():
        raise InputError(f"{p} is not a regular file or folder; give an image file or a DICOM folder")
    problem = _byte_problem(p)  # before ITK reads the voxels (it would read garbage, or print to stdout)
    if problem:
        raise unreadable_error(p, problem)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    image = failure = None
    with native_stderr_captured() as native:  # ``native`` is filled when the block ends
        try:
            reader.ReadImageInformation()  # the header first: refuse a lying size before ITK allocates it
            declared = int(np.prod([int(n) for n in reader.GetSize()], dtype=object)) * reader.GetNumberOfComponents()
            if declared <= MAX_VOXELS:
                image = reader.Execute()
        except (RuntimeError, OSError) as exc:
            failure = exc
    if failure is not None:
        raise unreadable_error(p, _with_native(_one_line(failure), native)) from failure
    if image is None:
        raise InputError(f"{p} declares {declared} voxel values (size {tuple(reader.GetSize())}), more than "
                         f"TumorSeg reads ({MAX_VOXELS}); check the file's header or crop the image")
    return image


def _byte_problem(path: Path) -> str:
    """Damage ITK's readers pass over silently: a short ``.nii`` (read as zeros), a compressed
    ``.mha`` stream that does not inflate to the declared size (read as garbage). "" if none."""
    try:
        missing = nifti_slabs.missing_bytes(path)
        if missing:
            return f"the file ends {missing} bytes before its voxels do (truncated?)"
        return metaimage_check.compressed_problem(path) or ""
    except OSError as exc:
        return _one_line(exc)


def _check_raw_values(image: sitk.Image, path: PathLike, name: str) -> None:
    """NaN/Inf a NIfTI file stores (ITK's reader reads them as 0): InputError naming ``name``."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32,
                                  sitk.sitkVectorFloat64):
        return
    n_nan, n_inf = raw_nonfinite(path)
    if n_nan or n_inf:
        total = int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel()
        raise nonfinite_error(name, n_nan, n_inf, total)


def check_grid(size: Sequence[int], spacing: Sequence[float], origin: Sequence[float],
               direction: Sequence[float], name: str) -> None:
    """InputError for a grid no resampling can use: spacing not finite and positive, origin not
    finite, a direction that is not finite or is singular (|det| < 1e-6), or too many voxels.

    The first three axes are checked (a 4D grid's 4th axis is its channels). A direction that
    is invertible but not orthonormal is accepted, as ITK accepts it.
    """
    dim = min(len(size), 3)
    spacing3 = np.asarray(spacing[:dim], dtype=float)
    if not np.all(np.isfinite(spacing3)) or np.any(spacing3 <= 0):
        raise InputError(f"{name} has spacing {tuple(float(s) for s in spacing[:dim])} mm; voxel spacing must be "
                         "positive (a flip belongs in the direction); fix the file's header")
    if not np.all(np.isfinite(np.asarray(origin, dtype=float))):
        raise InputError(f"{name} has a non-finite origin {tuple(origin)}; fix the file's header")
    n = len(size)
    matrix = np.asarray(direction, dtype=float).reshape(n, n)[:dim, :dim]
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < _MIN_DETERMINANT:
        raise InputError(f"{name} has a degenerate direction matrix {tuple(float(d) for d in matrix.ravel())}; "
                         "fix the file's header (its axes must be independent)")
    voxels = int(np.prod([int(s) for s in size], dtype=object))
    if voxels > MAX_VOXELS:
        raise InputError(f"{name} declares {voxels} voxels (size {tuple(size)}), more than TumorSeg reads "
                         f"({MAX_VOXELS}); check the file's header or crop the image")


def check_image(image: sitk.Image, name: str = "image") -> sitk.Image:
    """Check a scalar image is usable and return it unchanged.

    Raises InputError if it is not 3D (2D, a single slice, 4D, vector-valued), has zero
    voxels, contains NaN/Inf values, or all its voxels are equal.
    """
    dim = image.GetDimension()
    size = image.GetSize()
    ncomp = image.GetNumberOfComponentsPerPixel()
    if ncomp > 1:
        raise InputError(f"{name} has {ncomp} values per voxel; {split_advice(name)}")
    if dim == 4:
        raise InputError(f"{name} is 4D (size {size}); {split_advice(name)}")
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(f"{name} has complex voxels; give a real-valued image (e.g. its magnitude)")
    if dim != 3:
        raise InputError(f"{name} is {dim}D (size {size}); a 3D volume is needed")
    if int(np.prod(size)) == 0:
        raise InputError(f"{name} is empty (size {size}); give a volume with voxels")
    if min(size) < 2:
        raise InputError(f"{name} is a single slice (size {size}), i.e. 2D; a 3D volume is needed")
    check_grid(size, image.GetSpacing(), image.GetOrigin(), image.GetDirection(), name)
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            n_inf = int(array.size - finite.sum()) - n_nan
            raise nonfinite_error(name, n_nan, n_inf, int(array.size))
    first = array.flat[0]
    if np.all(array == first):
        raise constant_error(name, first)
    return image


def split_advice(name: str) -> str:
    """What to do with a multi-channel file where 3D images are needed (the command-line way)."""
    return ("give each channel as its own 3D file, in the model's input order (split it first, e.g. "
            f"'fslsplit {name} channel -t'), or use a model that takes that many channels")


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
    _check_raw_values(image, path, str(path))  # before check_image: ITK read them as 0, a "constant" image
    return check_image(image, name=str(path))


def read_channels(path: PathLike) -> list[sitk.Image]:
    """Read a multi-channel image (4D with a short 4th axis, or vector-valued) as 3D channels.

    Returns one 3D scalar image per channel (MSD Task01 style: ``(x, y, z, C)`` NIfTI),
    each with the 3D geometry of the file. A plain 3D image gives a one-element list.
    """
    image = _read_raw(path)
    _check_raw_values(image, path, str(path))
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


def file_channels(path: PathLike) -> int:
    """How many 3D channels an image file holds, from its header (4D: the 4th size, vector: the
    components; else 1). 1 for folders and anything whose header cannot be read (the read reports it)."""
    p = Path(path)
    if not p.is_file():
        return 1
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    with native_stderr_captured():
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return 1
    if reader.GetNumberOfComponents() > 1:
        return int(reader.GetNumberOfComponents())
    if reader.GetDimension() == 4:
        return int(reader.GetSize()[3])
    return 1


def read_images(items: Iterable[PathLike | sitk.Image], channels: Optional[int] = None) -> list[sitk.Image]:
    """Read and check a list of inputs; each is a path (file or DICOM folder) or a SimpleITK image.

    With ``channels`` (the model's input count) > 1, one file holding exactly that many
    channels (4D, or vector-valued) is split into them (:func:`read_channels`).
    """
    items = list(items)
    if (channels is not None and channels > 1 and len(items) == 1 and isinstance(items[0], (str, os.PathLike))
            and file_channels(items[0]) == channels):
        return read_channels(items[0])
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


def atomic_write(path: Path, ext: str, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then rename it over ``path``."""
    # The writer creates the temp file itself (not mkstemp), so the output gets the
    # usual umask permissions rather than 0600; the random part avoids collisions.
    tmp = _temp_name(path, ext)
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
    atomic_write(p, ext, lambda tmp: _sitk_write(image, tmp, compress=ext != ".nii"))
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


def _temp_name(path: Path, ext: str) -> str:
    """A hidden, unique temp file name next to ``path`` (same extension, so ITK picks the format)."""
    return str(path.parent / f".{path.name[: -len(ext)]}.{uuid.uuid4().hex[:12]}.tmp{ext}")


def check_writable_file(path: PathLike, extensions: Sequence[str], what: str = "output") -> tuple[Path, str]:
    """Refuse a file path a result could not be written to, before any work is done; returns ``(path, extension)``.

    The name must end in one of ``extensions``, the folder must exist, the path must not be
    a folder, and a file must be creatable next to it: a temporary file like the one the
    atomic writers use is created and removed here (``os.access`` says yes to root on a
    read-only mount or a full quota). ``what`` names the file in the messages. InputError otherwise.
    """
    output = Path(path)
    name = output.name.lower()
    ext = next((e for e in extensions if name.endswith(e) and name != e), None)
    if ext is None:
        raise InputError(f"cannot write {output.name}: unknown extension; use one of {', '.join(extensions)}")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{what} folder '{parent}' does not exist; create it first")
    if output.is_dir():
        raise InputError(f"{what} {output} is a folder; give a file name such as {output / ('result' + ext)}")
    if output.exists() and not output.is_file():
        raise InputError(f"{what} {output} exists and is not a regular file; choose another name")
    probe = _temp_name(output, ext)
    try:
        with open(probe, "xb"):
            pass
    except OSError as exc:
        raise InputError(f"cannot write into {what} folder '{parent}': {_os_reason(exc)}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    return output, ext


def check_output_path(path: PathLike) -> Path:
    """Refuse a label map path that could not be written (:func:`check_writable_file` with
    :data:`~tumorseg_core.options.LABELMAP_EXTENSIONS`), before any work is done. Returns the path."""
    return check_writable_file(path, LABELMAP_EXTENSIONS)[0]


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
    atomic_write(p, ext, lambda tmp: _sitk_write(image, tmp, compress=ext != ".nii"))
    logger.info("wrote %s", p)
    return p
