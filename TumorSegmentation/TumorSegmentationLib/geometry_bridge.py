"""MRML nodes <-> files for the engine: the ONE place where Slicer's RAS meets ITK's LPS.

Slicer describes a voxel grid by its IJK-to-RAS matrix; SimpleITK (and every file the
engine reads or writes) by spacing, origin and direction cosines in LPS. The two differ
by the constant flip ``LPS = diag(-1, -1, 1) @ RAS``. Everything that converts between
the two lives here, so no other module flips an axis.

Grids are always expressed in the coordinate frame of the *output segmentation node*:
a volume under a linear transform relative to that node is written with the transform
hardened into its geometry (the user's node is not touched); a non-linear transform is
refused, because a warped grid cannot be described by spacing, origin and direction.

Qt-free; needs slicer-core (MRML) and SimpleITK, not the Slicer application.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterable, Union

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtkmodules.util import numpy_support

from tumorseg_core.errors import InputError, TumorSegError

logger = logging.getLogger(__name__)

#: ``LPS = LPS_FROM_RAS @ RAS`` (homogeneous); the matrix is its own inverse.
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Tolerance (mm or direction units) when checking that a returned grid is the one written.
GRID_TOLERANCE = 1e-4


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a (4, 4) float64 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A (4, 4) array as a vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _node_label(node: Any) -> str:
    return f"'{node.GetName()}'" if node is not None and node.GetName() else "the volume"


def volume_ijk_to_frame(volume_node: Any, frame_node: Any = None) -> np.ndarray:
    """IJK-to-RAS of ``volume_node`` expressed in ``frame_node``'s coordinate frame, as (4, 4).

    IJK indices start at the image data's extent minimum (0 for volumes Slicer loads).
    ``frame_node`` is the node the result will live in (the output segmentation);
    ``None`` means world coordinates. A linear transform between the two is folded in;
    a non-linear one raises InputError.
    """
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = matrix_to_numpy(ijk_to_ras)
    image = volume_node.GetImageData()
    if image is not None:
        extent = image.GetExtent()
        if extent[0] or extent[2] or extent[4]:
            # Make index 0 of the written array the first voxel of the extent.
            shift = np.eye(4)
            shift[:3, 3] = (extent[0], extent[2], extent[4])
            matrix = matrix @ shift
    source = volume_node.GetParentTransformNode()
    target = frame_node.GetParentTransformNode() if frame_node is not None else None
    if source is not target:
        general = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source, target, general)
        if not slicer.vtkMRMLTransformNode.IsGeneralTransformLinear(general):
            raise InputError(
                f"{_node_label(volume_node)} is under a non-linear transform; harden the transform "
                "(Data module: right-click > Harden transform) or resample the volume first"
            )
        between = vtk.vtkMatrix4x4()
        slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(source, target, between)
        matrix = matrix_to_numpy(between) @ matrix
    return matrix


def _ijk_to_lps_geometry(ijk_to_ras: np.ndarray) -> tuple:
    """(spacing, origin, direction) of SimpleITK for an IJK-to-RAS matrix."""
    ijk_to_lps = LPS_FROM_RAS @ ijk_to_ras
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(columns)) < 1e-12:
        raise InputError("the volume's IJK-to-RAS matrix is singular (zero spacing); fix the volume geometry")
    direction = columns / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        # Shear from a hardened transform: ITK keeps it, but say so since it is unusual.
        logger.warning("volume geometry is sheared (non-orthogonal axes); the engine keeps it as is")
    return tuple(float(s) for s in spacing), tuple(float(o) for o in ijk_to_lps[:3, 3]), tuple(
        float(d) for d in direction.ravel()
    )


def volume_array(volume_node: Any) -> np.ndarray:
    """The voxels of a scalar volume node as a (z, y, x) array (a copy; dtype kept)."""
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{_node_label(volume_node)} has no image data; load or select a volume with voxels")
    dims = image.GetDimensions()
    if min(dims) < 1 or image.GetNumberOfPoints() == 0:
        raise InputError(f"{_node_label(volume_node)} is empty (dimensions {dims}); select a volume with voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"{_node_label(volume_node)} has {image.GetNumberOfScalarComponents()} values per voxel (color or vector); "
            "select a scalar (grayscale) volume"
        )
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    # VTK stores x fastest, then y, then z: exactly numpy's C order for shape (z, y, x).
    return np.array(flat, copy=True).reshape(dims[2], dims[1], dims[0])


def volume_to_sitk(volume_node: Any, frame_node: Any = None) -> tuple:
    """``(SimpleITK image in LPS, IJK-to-frame matrix)`` for a scalar volume node."""
    matrix = volume_ijk_to_frame(volume_node, frame_node)
    image = sitk.GetImageFromArray(volume_array(volume_node))
    spacing, origin, direction = _ijk_to_lps_geometry(matrix)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image, matrix


def write_volume(volume_node: Any, path: Union[str, Path], frame_node: Any = None) -> np.ndarray:
    """Write a scalar volume node (geometry in ``frame_node``'s frame) to ``path``; returns the matrix.

    ``path`` should end in ``.mha`` (the logic's choice: spacing, origin and any direction
    matrix, shear included, round-trip bit-exactly, and the engine reads an uncompressed
    MetaImage slab by slab) or ``.nrrd`` (NRRD folds them into "space directions" and can
    come back one ulp off). It is written uncompressed because it is read once, right away,
    by the worker.
    """
    image, matrix = volume_to_sitk(volume_node, frame_node)
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(False)
    try:
        writer.Execute(image)
    except RuntimeError as exc:
        raise TumorSegError(f"could not write a temporary copy of {_node_label(volume_node)} to {path} "
                            f"({' '.join(str(exc).split())[-200:]}); check free disk space") from exc
    return matrix


def sitk_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """IJK-to-RAS (4, 4) of a SimpleITK image (the inverse of the conversion used for writing)."""
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.array(image.GetDirection(), dtype=float).reshape(3, 3) * np.array(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return LPS_FROM_RAS @ ijk_to_lps


def read_labels(path: Union[str, Path], expected_ijk_to_ras: np.ndarray, expected_shape_zyx: tuple) -> np.ndarray:
    """Read a label map the worker wrote on the grid of an input; returns its (z, y, x) array.

    The engine guarantees the result is on the first input's exact grid; this checks it
    (size exactly, geometry within :data:`GRID_TOLERANCE`) so a mismatch is an error, not a
    silently shifted segmentation.
    """
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise TumorSegError(f"could not read the worker's result {path} ({' '.join(str(exc).split())[-200:]})") from exc
    array = sitk.GetArrayFromImage(image)
    if array.shape != tuple(expected_shape_zyx):
        raise TumorSegError(f"the result has size {array.shape[::-1]} but the input has {tuple(expected_shape_zyx)[::-1]}")
    if not np.allclose(sitk_ijk_to_ras(image), expected_ijk_to_ras, atol=GRID_TOLERANCE, rtol=0):
        raise TumorSegError("the result is not on the input volume's grid (geometry differs); please report this")
    return array


def oriented_image(array: np.ndarray, ijk_to_ras: np.ndarray) -> Any:
    """A ``vtkOrientedImageData`` holding a (z, y, x) array with the given IJK-to-RAS matrix."""
    data = np.ascontiguousarray(array)
    image = slicer.vtkOrientedImageData()
    nz, ny, nx = data.shape
    image.SetExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    vtk_array = numpy_support.numpy_to_vtk(data.ravel(), deep=True,
                                           array_type=numpy_support.get_vtk_array_type(data.dtype))
    vtk_array.SetName("ImageScalars")
    image.GetPointData().SetScalars(vtk_array)
    image.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_ras))
    return image


def oriented_image_to_world(image: Any) -> np.ndarray:
    """The image-to-world (IJK-to-RAS) matrix of a vtkOrientedImageData as (4, 4)."""
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return matrix_to_numpy(matrix)


def shared_label_image(labels: np.ndarray, values: Iterable[int], ijk_to_ras: np.ndarray) -> Any:
    """One uint8 oriented image holding only the listed label values (others become 0)."""
    keep = np.isin(labels, list(values))
    cleaned = np.where(keep, labels, 0).astype(np.uint8)
    return oriented_image(cleaned, ijk_to_ras)


def label_counts(labels: np.ndarray) -> Dict[int, int]:
    """Voxel count per nonzero label value (for logging and empty-segment warnings)."""
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if v != 0}


def segment_labelmap_array(segment: Any) -> np.ndarray:
    """A segment's binary labelmap as a boolean (z, y, x) array on its own full extent.

    Only the voxels equal to the segment's label value count (shared layers hold several).
    """
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    image = segment.GetRepresentation(name)
    if image is None:
        raise TumorSegError(f"segment '{segment.GetName()}' has no binary labelmap")
    extent = image.GetExtent()
    dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    if min(dims) <= 0:
        return np.zeros((0, 0, 0), dtype=bool)
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(dims[2], dims[1], dims[0]) == segment.GetLabelValue()
