"""The uncertainty map of a run as a scalar volume node, shown as a color overlay.

The worker writes the voxel-wise uncertainty (normalised predictive entropy, float32 in
[0, 1]) on the first input's exact grid; here it becomes a ``vtkMRMLScalarVolumeNode`` in
the output segmentation's frame (same parent transform), with a rainbow color table,
window 0..1 and the lowest 5 % thresholded away, so that it reads as an overlay on the
image. Qt-free; the module puts it in the slice views' foreground.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from . import geometry_bridge

UNCERTAINTY_ATTRIBUTE = "TumorSeg.Uncertainty"  # on the node: the ID of its segmentation
DISPLAY_THRESHOLD = 0.05


def read_uncertainty(path: Union[str, Path], ijk_to_frame: np.ndarray, shape_zyx: tuple) -> np.ndarray:
    """The worker's uncertainty file as float32 (z, y, x), checked to be on the input's grid."""
    return geometry_bridge.read_labels(path, ijk_to_frame, shape_zyx).astype(np.float32, copy=False)


def add_uncertainty_volume(scene: Any, array: np.ndarray, ijk_to_frame: np.ndarray, segmentation_node: Any,
                           replace: bool = False) -> Any:
    """Add (or, with ``replace``, refill this segmentation's earlier) uncertainty volume node."""
    name = f"{segmentation_node.GetName()} uncertainty"
    node = None
    if replace:
        for candidate in _volume_nodes(scene):
            if candidate.GetAttribute(UNCERTAINTY_ATTRIBUTE) == segmentation_node.GetID():
                node = candidate
                break
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
        node.SetAttribute(UNCERTAINTY_ATTRIBUTE, segmentation_node.GetID() or "")
    data = np.ascontiguousarray(array, dtype=np.float32)
    image = vtk.vtkImageData()
    nz, ny, nx = data.shape
    image.SetDimensions(nx, ny, nz)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(data.ravel(), deep=True,
                                                               array_type=vtk.VTK_FLOAT))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(geometry_bridge.numpy_to_matrix(ijk_to_frame))
    node.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetAndObserveColorNodeID(slicer.vtkMRMLColorLogic.GetColorTableNodeID(slicer.vtkMRMLColorTableNode.Rainbow))
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.SetApplyThreshold(True)
        display.SetThreshold(DISPLAY_THRESHOLD, 1.0)
    return node


def _volume_nodes(scene: Any) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
