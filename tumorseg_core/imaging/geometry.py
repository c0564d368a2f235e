"""Image grids: compare, align inputs, go to the model grid and bring labels back.

All images are ``SimpleITK.Image`` in LPS physical space. Sizes, spacings, origins and
index boxes passed here are in ITK order **(x, y, z)** unless a name ends in ``_zyx``.
The pipeline's round trip is::

    model_image = to_model_grid(image, spacing_xyz, orientation)        # float32
    labels_model = <predict on sitk.GetArrayFromImage(model_image)>     # (z, y, x) uint8
    labels_img = sitk.GetImageFromArray(labels_model); labels_img.CopyInformation(model_image)
    labels = labels_to_reference(labels_img, image)                     # exact grid of image
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError, TumorSegError

logger = logging.getLogger(__name__)

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
}

# Which anatomical axis each orientation letter names (one letter per axis in a valid code).
_AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


@dataclass(frozen=True)
class GridGeometry:
    """An image grid without its pixels: size, spacing, origin, direction (ITK order).

    Lets the pipeline free an input's voxels once they are on the model grid and still
    put the labels back on that input's exact grid (values copied bit-exactly).
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "GridGeometry":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def located(self) -> sitk.Image:
        """A one-voxel image placed like this grid: ITK's own index <-> point arithmetic for it."""
        proxy = sitk.Image([1] * len(self.size), sitk.sitkUInt8)
        proxy.SetSpacing(self.spacing)
        proxy.SetOrigin(self.origin)
        proxy.SetDirection(self.direction)
        return proxy

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set ``image``'s spacing, origin and direction to this grid's (in place); returns it."""
        if tuple(image.GetSize()) != self.size:
            raise TumorSegError(f"image size {image.GetSize()} differs from the grid's {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True if ``a`` and ``b`` have the same voxel grid.

    Sizes must be equal; spacings and direction cosines may differ by ``tol`` (absolute);
    origins by ``tol`` times the largest spacing (mm) plus a 1e-6 relative slack so that
    far-away origins stored as float32 (NIfTI) still compare equal.
    """
    if a.GetDimension() != b.GetDimension() or a.GetSize() != b.GetSize():
        return False
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0.0, atol=tol):
        return False
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0.0, atol=tol):
        return False
    origin_tol = tol * max(max(a.GetSpacing()), 1e-12)
    return bool(np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=1e-6, atol=origin_tol))


def copy_grid(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A copy of ``image`` with ``reference``'s spacing, origin and direction (sizes must match)."""
    out = sitk.Image(image)
    out.CopyInformation(reference)
    return out


def physical_corners(image: sitk.Image) -> np.ndarray:
    """(8, 3) LPS points of the outer voxel-edge corners of ``image`` (half a voxel beyond centres)."""
    size = np.array(image.GetSize(), dtype=float)
    corners = []
    for i in (-0.5, size[0] - 0.5):
        for j in (-0.5, size[1] - 0.5):
            for k in (-0.5, size[2] - 0.5):
                corners.append(image.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k))))
    return np.array(corners)


def align_to_reference(images: Sequence[sitk.Image]) -> list[sitk.Image]:
    """Put every image on the grid of ``images[0]``.

    ``images[0]`` is returned unchanged. Each other image is returned unchanged if it is
    already on that grid (its geometry is then copied bit-exactly from image 0), otherwise
    resampled with linear interpolation into a float32 image (0 outside its extent). Size,
    spacing and direction may all differ, but the images must overlap in physical space:
    no overlap at all raises InputError.
    """
    if not images:
        raise InputError("no input images were given; give at least one image")
    reference = images[0]
    out = [reference]
    for n, image in enumerate(images[1:], start=2):
        if image.GetDimension() != reference.GetDimension():
            raise InputError(f"input image {n} is {image.GetDimension()}D but image 1 is "
                             f"{reference.GetDimension()}D; give images of the same dimension")
        if same_grid(image, reference):
            out.append(copy_grid(image, reference))
            continue
        # Which reference voxels does the image cover? Resample a mask of ones.
        ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(image)
        coverage = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        covered = float(sitk.GetArrayViewFromImage(coverage).mean())
        if covered == 0.0:
            raise InputError(
                f"input image {n} does not overlap image 1 in physical space; "
                "check that the images belong to the same patient and study"
            )
        if covered < 0.5:
            logger.warning("input image %d covers only %.0f%% of image 1; the rest is filled with 0", n, 100 * covered)
        resampled = sitk.Resample(
            sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
        )
        logger.info("resampled input image %d onto the grid of image 1", n)
        out.append(resampled)
    return out


def reorient(image: sitk.Image, orientation: Optional[str]) -> sitk.Image:
    """Permute/flip axes so the image's axes are closest to ``orientation`` (e.g. ``"LPS"``).

    ``None`` keeps the axes. For oblique images DICOMOrient picks the closest axis
    permutation and the direction stays oblique. No voxel values are interpolated.
    """
    if orientation is None:
        return image
    code = str(orientation).upper()
    axes = sorted(_AXIS_OF_LETTER.get(c, -1) for c in code)
    if len(code) != 3 or axes != [0, 1, 2]:
        raise TumorSegError(f"orientation {orientation!r} is invalid; give a 3-letter code such as 'LPS' or 'RAS'")
    return sitk.DICOMOrient(image, code)


def to_model_grid(
    image: sitk.Image,
    spacing_xyz: Optional[Sequence[float]],
    orientation: Optional[str] = None,
    interpolator: str = "linear",
) -> sitk.Image:
    """Reorient ``image`` to ``orientation`` and resample it to ``spacing_xyz`` (mm, x y z).

    The output grid covers the same physical extent: ``size = max(1, round(size * spacing /
    spacing_xyz))`` per axis, and its centre coincides with the input grid's centre, with
    the (reoriented) input direction. ``spacing_xyz=None`` keeps the spacing (reorient only).
    ``interpolator`` is ``"linear"``, ``"bspline"`` (both give float32) or ``"nearest"``
    (keeps the pixel type, for label maps).
    """
    if interpolator not in _INTERPOLATORS:
        raise TumorSegError(f"interpolator {interpolator!r} is unknown; use one of {', '.join(_INTERPOLATORS)}")
    if spacing_xyz is None:
        oriented = reorient(image, orientation)
        return sitk.Cast(oriented, sitk.sitkFloat32) if interpolator != "nearest" else oriented
    grid = model_grid(image, spacing_xyz, orientation)

    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(list(grid.size))
    resampler.SetOutputSpacing(grid.spacing)
    resampler.SetOutputOrigin(grid.origin)
    resampler.SetOutputDirection(grid.direction)
    resampler.SetInterpolator(_INTERPOLATORS[interpolator])
    resampler.SetDefaultPixelValue(0)
    if interpolator == "nearest":
        resampler.SetOutputPixelType(image.GetPixelID())
    elif image.GetNumberOfComponentsPerPixel() == 1:
        resampler.SetOutputPixelType(sitk.sitkFloat32)  # interpolates any scalar type, no float copy
    else:
        image = sitk.Cast(image, sitk.sitkVectorFloat32)
        resampler.SetOutputPixelType(sitk.sitkVectorFloat32)
    return resampler.Execute(image)


def model_grid(
    reference: Union[sitk.Image, GridGeometry], spacing_xyz: Sequence[float], orientation: Optional[str] = None
) -> GridGeometry:
    """The grid :func:`to_model_grid` resamples ``reference`` onto, from its geometry alone.

    ``reference`` is an image or its :class:`GridGeometry`: no voxels are needed, so a file's
    header (``ImageFileReader.ReadImageInformation``) is enough (see ``stream_resample``).
    Both paths share this one definition, so their grids are bit-identical.
    """
    new_spacing = np.asarray([float(s) for s in spacing_xyz], dtype=float)
    if new_spacing.shape != (3,) or not np.all(new_spacing > 0):
        raise TumorSegError(f"model spacing {list(spacing_xyz)} is invalid; give three positive numbers in mm (x, y, z)")
    # The reoriented grid is computed, not built: reorienting (and casting) a 512x512x300
    # CT first would hold two more full-size copies at the run's memory peak.
    old_size, old_spacing, direction_flat = oriented_geometry(reference, orientation)
    new_size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
    direction = np.asarray(direction_flat, dtype=float).reshape(3, 3)
    # Keep the grid centres identical so rounding the size splits the difference evenly.
    # ITK computes the centre (same arithmetic as the image itself).
    if isinstance(reference, GridGeometry):
        located, size = reference.located(), reference.size
    else:
        located, size = reference, reference.GetSize()
    centre = np.asarray(located.TransformContinuousIndexToPhysicalPoint(
        tuple((np.asarray(size, dtype=float) - 1) / 2.0)))
    new_origin = centre - direction @ ((new_size - 1) / 2.0 * new_spacing)
    return GridGeometry(tuple(int(s) for s in new_size), tuple(float(s) for s in new_spacing),
                        tuple(float(o) for o in new_origin), tuple(float(d) for d in direction_flat))


def oriented_geometry(
    image: Union[sitk.Image, GridGeometry], orientation: Optional[str]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(size, spacing, direction) that ``reorient(image, orientation)`` would have, without its voxels.

    ``image`` may be a :class:`GridGeometry`. DICOMOrient only permutes and flips axes, so a
    2x2x2 proxy with the same direction and spacings 1, 2, 3 tells which input axis each
    output axis comes from.
    """
    grid = image if isinstance(image, GridGeometry) else GridGeometry.of(image)
    size = np.asarray(grid.size, dtype=float)
    spacing = np.asarray(grid.spacing, dtype=float)
    if orientation is None:
        return size, spacing, tuple(grid.direction)
    proxy = sitk.Image([2] * len(grid.size), sitk.sitkUInt8)
    proxy.SetSpacing([float(i + 1) for i in range(len(grid.size))])
    proxy.SetDirection(grid.direction)
    turned = reorient(proxy, orientation)
    source_axis = [int(round(s)) - 1 for s in turned.GetSpacing()]
    return size[source_axis], spacing[source_axis], tuple(turned.GetDirection())


def labels_to_reference(labels: sitk.Image, reference: Union[sitk.Image, GridGeometry]) -> sitk.Image:
    """Resample a label map (nearest neighbour) onto ``reference``'s exact grid, as uint8.

    ``reference`` is an image or its :class:`GridGeometry` (no voxels needed). The output
    has its size, spacing, origin and direction copied bit-exactly; voxels outside the
    label map's extent are 0.
    """
    if labels.GetNumberOfComponentsPerPixel() != 1:
        raise TumorSegError("labels must be a scalar label map; check the prediction output")
    source = labels if labels.GetPixelID() == sitk.sitkUInt8 else sitk.Cast(labels, sitk.sitkUInt8)
    grid = reference if isinstance(reference, GridGeometry) else GridGeometry.of(reference)
    out = sitk.Resample(source, grid.size, sitk.Transform(), sitk.sitkNearestNeighbor, grid.origin, grid.spacing,
                        grid.direction, 0, sitk.sitkUInt8)
    return grid.apply_to(out)  # guarantees bit-identical geometry


def bbox_to_slices(start_xyz: Sequence[int], size_xyz: Sequence[int]) -> tuple[slice, slice, slice]:
    """Index box (x, y, z start and size) as numpy slices in (z, y, x) order."""
    return tuple(slice(int(b), int(b) + int(n)) for b, n in zip(reversed(start_xyz), reversed(size_xyz)))  # type: ignore[return-value]


def crop_image(image: sitk.Image, slices_zyx: Sequence[slice]) -> sitk.Image:
    """The sub-image at index slices ``(z, y, x)`` (steps of 1), with its physical position kept."""
    size = image.GetSize()
    start_xyz, size_xyz = [], []
    for axis, sl in zip((2, 1, 0), slices_zyx):
        lo, hi, step = sl.indices(size[axis])
        if step != 1 or hi <= lo:
            raise ValueError(f"crop slice {sl} is empty or strided for axis of size {size[axis]}")
        start_xyz.insert(0, lo)
        size_xyz.insert(0, hi - lo)
    return sitk.RegionOfInterest(image, size_xyz, start_xyz)


def uncrop_image(cropped: sitk.Image, reference: sitk.Image, slices_zyx: Sequence[slice], fill: float = 0) -> sitk.Image:
    """Paste ``cropped`` back at ``slices_zyx`` into an image on ``reference``'s grid filled with ``fill``."""
    array = np.full(reference.GetSize()[::-1], fill, dtype=sitk.GetArrayViewFromImage(cropped).dtype)
    array[tuple(slices_zyx)] = sitk.GetArrayViewFromImage(cropped)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(reference)
    return out
