"""Segments of a segmentation node as one label map on a volume's exact grid (SimpleITK, LPS).

What the measurement table and the DICOM SEG export both start from: the chosen segments
(by default the ones TumorSeg created) rasterised onto the reference volume's voxels, label
value ``n`` for the ``n``-th segment, with a :class:`~tumorseg_core.imaging.segments.SegmentInfo`
(name, color, terminology) per value, and the volume itself as a SimpleITK image on the same
grid. Where segments overlap, the first one in the list keeps the voxel (TumorSeg's own
results never overlap).
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import vtk

from tumorseg_core.errors import TumorSegError
from tumorseg_core.imaging.segments import SegmentInfo

from . import effect_regions, geometry_bridge, terminology

logger = logging.getLogger(__name__)


def tumorseg_segment_ids(segmentation_node: Any) -> List[str]:
    """IDs of the segments TumorSeg created (they carry the model tag), in the node's order."""
    from .logic import MODEL_TAG

    segmentation = segmentation_node.GetSegmentation()
    ids = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        if segment.HasTag(MODEL_TAG):
            ids.append(segmentation.GetNthSegmentID(i))
    return ids


def segment_info(segment: Any, value: int) -> SegmentInfo:
    """Name, color and terminology of a vtkSegment as the engine's SegmentInfo for ``value``."""
    tag = vtk.reference("")
    term = None
    if segment.GetTag(segment.GetTerminologyEntryTagName(), tag) and str(tag):
        try:
            parsed = terminology.parse_terminology_entry(str(tag))
        except ValueError:
            parsed = {}
        if parsed.get("category") and parsed.get("type"):
            term = {key: parsed[key] for key in ("category", "type", "modifier") if parsed.get(key)}
    color = tuple(min(1.0, max(0.0, float(c))) for c in segment.GetColor())
    return SegmentInfo(int(value), segment.GetName(), color, term)  # type: ignore[arg-type]


def segments_label_image(
    segmentation_node: Any, volume_node: Any, segment_ids: Optional[Sequence[str]] = None
) -> Tuple[sitk.Image, List[SegmentInfo], sitk.Image]:
    """``(labels, segments, volume)`` on ``volume_node``'s grid, in the segmentation's frame.

    ``labels`` is a uint8 SimpleITK image (values 1..N for the N segments, 0 elsewhere),
    ``volume`` the volume's voxels on exactly the same grid (LPS). ``segment_ids`` default
    to the segments TumorSeg created. Raises TumorSegError when there is nothing to use.
    """
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise TumorSegError("select a segmentation node")
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise TumorSegError("select the volume the segments were made on")
    ids = list(segment_ids) if segment_ids is not None else tumorseg_segment_ids(segmentation_node)
    if not ids:
        raise TumorSegError(f"'{segmentation_node.GetName()}' has no TumorSeg segments; run Apply first "
                            "or choose the segments to use")
    segmentation = segmentation_node.GetSegmentation()
    if len(ids) > 255:
        raise TumorSegError(f"{len(ids)} segments are too many for one label map (255 at most); choose fewer")
    volume, matrix = geometry_bridge.volume_to_sitk(volume_node, segmentation_node)
    shape = sitk.GetArrayViewFromImage(volume).shape
    reference = geometry_bridge.oriented_image(np.zeros(shape, dtype=np.uint8), matrix)
    labels = np.zeros(shape, dtype=np.uint8)
    infos: List[SegmentInfo] = []
    for value, sid in enumerate(ids, start=1):
        segment = segmentation.GetSegment(sid)
        if segment is None:
            raise TumorSegError(f"segment '{sid}' is not in '{segmentation_node.GetName()}'")
        mask = effect_regions.segment_mask(segmentation_node, sid, reference)
        overlap = int(np.count_nonzero(mask & (labels > 0)))
        if overlap:
            logger.info("segment '%s' overlaps earlier segments in %d voxels; they stay with the earlier ones",
                        segment.GetName(), overlap)
        labels[mask & (labels == 0)] = value
        infos.append(segment_info(segment, value))
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(volume)
    return label_image, infos, volume
