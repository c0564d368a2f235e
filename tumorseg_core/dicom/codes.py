"""A segment's meaning in DICOM terms: SNOMED codes and CIELab display color <-> :class:`SegmentInfo`.

A :class:`~tumorseg_core.imaging.segments.SegmentInfo`'s ``terminology`` holds
``[scheme, code, meaning]`` triples for ``category``, ``type`` and optionally ``modifier``;
a DICOM SEG's Segment Sequence item holds the same as Segmented Property Category / Type
(/ Type Modifier) Code Sequences. A segment without terminology is written as Slicer writes
an undescribed segment: category and type "Tissue" (SCT 85756007).
"""

from __future__ import annotations

from typing import Any, Optional

from tumorseg_core.imaging.segments import SegmentInfo, auto_color

#: Category and type of a segment that carries no terminology (3D Slicer's default).
TISSUE = ["SCT", "85756007", "Tissue"]


def coded_concept(triple: Any) -> Any:
    """A highdicom ``CodedConcept`` from ``[scheme, code, meaning]``."""
    from highdicom.sr import CodedConcept

    scheme, value, meaning = (str(t) for t in triple)
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def triple_of(item: Any) -> list[str]:
    """``[scheme, code, meaning]`` of a code sequence item (pydicom Dataset or highdicom CodedConcept)."""
    return [str(item.CodingSchemeDesignator), str(item.CodeValue), str(item.CodeMeaning)]


def segment_description(number: int, info: SegmentInfo, algorithm: Any, algorithm_type: str) -> Any:
    """The highdicom ``SegmentDescription`` of segment ``number`` (1-based) for ``info``."""
    from highdicom.color import CIELabColor
    from highdicom.seg import SegmentDescription

    terminology = info.terminology or {}
    description = SegmentDescription(
        segment_number=number,
        segment_label=info.name[:64],
        segmented_property_category=coded_concept(terminology.get("category") or TISSUE),
        segmented_property_type=coded_concept(terminology.get("type") or TISSUE),
        algorithm_type=algorithm_type,
        algorithm_identification=algorithm,
        display_color=CIELabColor.from_rgb(*(int(round(255 * c)) for c in info.color)),
    )
    modifier = terminology.get("modifier") or terminology.get("typeModifier")
    if modifier:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            coded_concept(modifier)
        ]
    return description


def segment_info(item: Any, value: int) -> SegmentInfo:
    """The :class:`SegmentInfo` of a Segment Sequence item read back, with label ``value``."""
    name = str(item.get("SegmentLabel", "") or f"Segment_{value}")
    color = auto_color(value)
    lab = item.get("RecommendedDisplayCIELabValue")
    if lab is not None:
        from highdicom.color import CIELabColor

        color = tuple(c / 255.0 for c in CIELabColor.from_dicom_value(list(lab)).to_rgb())
    terminology: Optional[dict] = None
    category = item.get("SegmentedPropertyCategoryCodeSequence")
    kind = item.get("SegmentedPropertyTypeCodeSequence")
    if category and kind:
        terminology = {"category": triple_of(category[0]), "type": triple_of(kind[0])}
        modifier = kind[0].get("SegmentedPropertyTypeModifierCodeSequence")
        if modifier:
            terminology["modifier"] = triple_of(modifier[0])
    return SegmentInfo(value=value, name=name, color=color, terminology=terminology)  # type: ignore[arg-type]
