"""Grids, masks and ROIs for the Tumor effect: segment <-> numpy masks on the editor's reference grid.

The segment editor works on one *reference geometry* (a ``vtkOrientedImageData`` in the
segmentation node's coordinate frame); every modifier labelmap the effect writes is a
uint8 image on that grid. This module moves masks between that grid, SimpleITK images
(via :mod:`geometry_bridge`, the only RAS<->LPS converter) and segments, and evaluates
markups ROIs (oriented boxes, possibly under transforms) on grids.

Masks are boolean numpy arrays in (z, y, x) order covering the reference extent.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence, Union

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtkmodules.util import numpy_support

from tumorseg_core.errors import InputError, TumorSegError

from . import geometry_bridge as gb


def extent_shape(extent: Sequence[int]) -> tuple:
    """The (z, y, x) array shape of a VTK extent (i0, i1, j0, j1, k0, k1)."""
    return (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)


def reference_ijk_to_ras(reference: Any) -> np.ndarray:
    """IJK-to-RAS (segmentation frame) of the reference grid with index 0 at its extent minimum."""
    matrix = gb.oriented_image_to_world(reference)
    extent = reference.GetExtent()
    shift = np.eye(4)
    shift[:3, 3] = (extent[0], extent[2], extent[4])
    return matrix @ shift


def _transform_matrix(source_node: Any, target_node: Any) -> np.ndarray:
    """Linear transform between two nodes' parent frames (None = world) as (4, 4)."""
    source = source_node.GetParentTransformNode() if source_node is not None else None
    target = target_node.GetParentTransformNode() if target_node is not None else None
    if source is target:
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(source, target, matrix)
    return gb.matrix_to_numpy(matrix)


def world_ras_to_frame_lps(point_ras: Sequence[float], segmentation_node: Any) -> tuple:
    """A world RAS point (a click) as LPS mm in the segmentation node's frame (what the core uses)."""
    frame = _transform_matrix(None, segmentation_node) @ np.array([*map(float, point_ras), 1.0])
    lps = gb.LPS_FROM_RAS @ frame
    return tuple(float(c) for c in lps[:3])


def snap_spacing(image: sitk.Image, decimals: int = 9) -> sitk.Image:
    """Round spacing to ``decimals`` mm, in place; returns ``image``.

    Spacing recovered as a column norm of IJK-to-RAS carries 1-ulp noise (1.5 becomes
    1.5000000000000002), and mm thresholds that are exact voxel multiples (a 3 mm
    dilation on a 1.5 mm grid) then flip voxels: the same file would give a different
    result in Slicer than on the command line, which reads 1.5 from the header.
    """
    image.SetSpacing(tuple(float(np.round(s, decimals)) for s in image.GetSpacing()))
    return image


def point_in_image(image: sitk.Image, point_lps: Sequence[float]) -> bool:
    """True if the LPS point falls in a voxel of ``image``."""
    index = image.TransformPhysicalPointToContinuousIndex([float(c) for c in point_lps])
    return all(-0.5 <= c < n - 0.5 for c, n in zip(index, image.GetSize()))


# ---------------------------------------------------------------------- ROI

def _roi_object_from(roi: Any, node_with_frame: Any) -> np.ndarray:
    """(4, 4) from ``node_with_frame``'s frame (RAS) to the ROI's box coordinates (centred, axis-aligned)."""
    object_to_world = gb.matrix_to_numpy(roi.GetObjectToWorldMatrix())
    return np.linalg.inv(object_to_world) @ _transform_matrix(node_with_frame, None)


def point_in_roi(point_ras: Sequence[float], roi: Any) -> bool:
    """True if the world RAS point lies inside the ROI box (edges included)."""
    box = np.linalg.inv(gb.matrix_to_numpy(roi.GetObjectToWorldMatrix())) @ np.array([*map(float, point_ras), 1.0])
    half = np.asarray(roi.GetSize(), dtype=float) / 2.0 + 1e-6
    return bool(np.all(np.abs(box[:3]) <= half))


def roi_corners_in(roi: Any, node_with_frame: Any) -> np.ndarray:
    """The ROI's 8 corners as RAS points (8, 3) in ``node_with_frame``'s frame."""
    half = np.asarray(roi.GetSize(), dtype=float) / 2.0
    corners = np.array([[*signs, 1.0] for signs in itertools.product((-1, 1), repeat=3)]) * np.r_[half, 1.0]
    to_frame = np.linalg.inv(_roi_object_from(roi, node_with_frame))
    return (to_frame @ corners.T).T[:, :3]


def _index_box(corners_ijk: np.ndarray, size_xyz: Sequence[int]) -> tuple:
    """Inclusive (lo, hi) voxel index box (x, y, z) of points, clipped to the image; None if empty."""
    lo = np.maximum(np.floor(corners_ijk.min(axis=0) + 0.5).astype(int), 0)
    hi = np.minimum(np.ceil(corners_ijk.max(axis=0) - 0.5).astype(int), np.asarray(size_xyz) - 1)
    if np.any(hi < lo):
        return None
    return lo, hi


def roi_crop(image: sitk.Image, roi: Any, segmentation_node: Any) -> sitk.Image:
    """``image`` (LPS, segmentation frame) cropped to the ROI's bounding box; InputError if they do not overlap."""
    corners = [image.TransformPhysicalPointToContinuousIndex((gb.LPS_FROM_RAS[:3, :3] @ c).tolist())
               for c in roi_corners_in(roi, segmentation_node)]
    box = _index_box(np.array(corners), image.GetSize())
    if box is None:
        raise InputError(f"the ROI '{roi.GetName()}' does not overlap the source volume; move it onto the image")
    lo, hi = box
    return image[int(lo[0]):int(hi[0]) + 1, int(lo[1]):int(hi[1]) + 1, int(lo[2]):int(hi[2]) + 1]


def roi_mask(reference: Any, roi: Any, segmentation_node: Any) -> np.ndarray:
    """Voxels of the reference grid whose centre lies inside the ROI box."""
    matrix = _roi_object_from(roi, segmentation_node) @ reference_ijk_to_ras(reference)
    half = np.asarray(roi.GetSize(), dtype=float) / 2.0 + 1e-6
    nz, ny, nx = extent_shape(reference.GetExtent())
    k, j, i = np.arange(nz)[:, None, None], np.arange(ny)[None, :, None], np.arange(nx)[None, None, :]
    inside = np.ones((nz, ny, nx), dtype=bool)
    for axis in range(3):  # one coordinate at a time keeps memory at one float array of the grid
        row = matrix[axis]
        inside &= np.abs(row[0] * i + row[1] * j + row[2] * k + row[3]) <= half[axis]
    return inside


def cropped_volume_node(source: Any, roi: Any, segmentation_node: Any) -> Any:
    """A temporary scalar volume node holding the part of ``source`` inside the ROI's bounding box."""
    to_ijk = np.linalg.inv(gb.volume_ijk_to_frame(source, segmentation_node))
    corners = np.c_[roi_corners_in(roi, segmentation_node), np.ones(8)]
    array = gb.volume_array(source)
    box = _index_box((to_ijk @ corners.T).T[:, :3], array.shape[::-1])
    if box is None:
        raise InputError(f"the ROI '{roi.GetName()}' does not overlap the source volume; move it onto the image")
    lo, hi = box
    cropped = np.ascontiguousarray(array[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1])
    shift = np.eye(4)
    shift[:3, 3] = lo
    scene = segmentation_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{source.GetName()} ROI"))
    node.SetHideFromEditors(True)
    node.SetSaveWithScene(False)
    node.SetAndObserveImageData(plain_image(cropped))
    # Expressed in the segmentation's frame, so it goes under the segmentation's transform.
    node.SetIJKToRASMatrix(gb.numpy_to_matrix(gb.volume_ijk_to_frame(source, segmentation_node) @ shift))
    node.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
    return node


# ---------------------------------------------------------------------- masks and segments

def plain_image(array: np.ndarray) -> vtk.vtkImageData:
    """A vtkImageData (origin 0, spacing 1: geometry lives in the node) holding a (z, y, x) array."""
    image = vtk.vtkImageData()
    nz, ny, nx = array.shape
    image.SetDimensions(nx, ny, nz)
    data = np.ascontiguousarray(array)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
        data.ravel(), deep=True, array_type=numpy_support.get_vtk_array_type(data.dtype)))
    return image


def _array_on_reference(image: Any, reference: Any) -> np.ndarray:
    """Voxels of an oriented image resampled (nearest) onto the reference grid, (z, y, x)."""
    if not (slicer.vtkOrientedImageDataResample.DoGeometriesMatch(image, reference)
            and tuple(image.GetExtent()) == tuple(reference.GetExtent())):
        resampled = slicer.vtkOrientedImageData()
        if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                image, reference, resampled, False, False):
            raise TumorSegError("could not resample the labelmap onto the segmentation's grid")
        image = resampled
    target = reference.GetExtent()
    extent = image.GetExtent()
    scalars = image.GetPointData().GetScalars()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5] or scalars is None:
        return np.zeros(extent_shape(target), dtype=np.uint8)
    values = numpy_support.vtk_to_numpy(scalars).reshape(extent_shape(extent))
    out = np.zeros(extent_shape(target), dtype=values.dtype)
    # Copy the overlap of the two extents (the resampler may return a smaller extent).
    lo = [max(extent[2 * a], target[2 * a]) for a in range(3)]
    hi = [min(extent[2 * a + 1], target[2 * a + 1]) for a in range(3)]
    if any(high < low for low, high in zip(lo, hi)):
        return out
    src = tuple(slice(lo[a] - extent[2 * a], hi[a] - extent[2 * a] + 1) for a in (2, 1, 0))
    dst = tuple(slice(lo[a] - target[2 * a], hi[a] - target[2 * a] + 1) for a in (2, 1, 0))
    out[dst] = values[src]
    return out


def segment_mask(segmentation_node: Any, segment_id: str, reference: Any) -> np.ndarray:
    """The segment's voxels on the reference grid (only this segment, even in a shared layer)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    labelmap = slicer.vtkOrientedImageData()
    # A copy of the segment's labelmap *layer*, which other segments may share (other values).
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, labelmap, False)  # False: stay in the segmentation's frame
    if segment is None or labelmap.GetPointData().GetScalars() is None:
        return np.zeros(extent_shape(reference.GetExtent()), dtype=bool)
    return _array_on_reference(labelmap, reference) == segment.GetLabelValue()


def sitk_to_reference_mask(labels: sitk.Image, reference: Any) -> np.ndarray:
    """Foreground (> 0) of a label image (LPS, segmentation frame) on the reference grid."""
    array = (sitk.GetArrayViewFromImage(labels) > 0).astype(np.uint8)
    return _array_on_reference(gb.oriented_image(array, gb.sitk_ijk_to_ras(labels)), reference) > 0


def mask_to_oriented(mask: np.ndarray, reference: Any) -> Any:
    """A uint8 modifier labelmap (1 inside) with the reference geometry and extent."""
    image = gb.oriented_image(mask.astype(np.uint8), gb.oriented_image_to_world(reference))
    extent = reference.GetExtent()
    image.SetExtent(extent)  # same voxels, indexed like the reference (scalars are not reallocated)
    return image


def mask_to_sitk(mask: np.ndarray, reference: Any) -> sitk.Image:
    """A reference-grid mask as a uint8 SimpleITK image (LPS) via the bridge's node converter."""
    node = slicer.vtkMRMLScalarVolumeNode()  # transient, never added to a scene
    node.SetAndObserveImageData(plain_image(mask.astype(np.uint8)))
    node.SetIJKToRASMatrix(gb.numpy_to_matrix(reference_ijk_to_ras(reference)))
    image, _ = gb.volume_to_sitk(node)
    return image


def find_output_segment(segmentation_node: Any, label: Union[int, str, None]) -> Any:
    """The segment of a model result holding ``label`` (value, name; None = the first label)."""
    from .logic import LABEL_VALUE_TAG

    segmentation = segmentation_node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    if not segments:
        raise TumorSegError("the model returned no segments")
    if label is None or label == "":
        return segments[0]
    for segment in segments:
        tag = vtk.reference("")
        value = str(tag) if segment.GetTag(LABEL_VALUE_TAG, tag) else None
        if isinstance(label, (int, np.integer)) and value == str(int(label)):
            return segment
        if isinstance(label, str) and (segment.GetName().lower() == label.lower() or value == label):
            return segment
    names = ", ".join(f"{s.GetName()}" for s in segments)
    raise TumorSegError(f"the model has no output label '{label}'; choose one of: {names}")
