"""What a label value means: name, color and SNOMED-CT terminology of one segment.

:class:`SegmentInfo` is the one description of a segment that every door writes with a
label map (``.seg.nrrd`` headers, the worker's ``done`` event, Slicer segments). A model's
segments come from its manifest (:attr:`tumorseg_core.modelpkg.manifest.Manifest.segments`);
seeded (model-free) results use :data:`SEEDED_TUMOR`. Plain Python: no SimpleITK, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from tumorseg_core.errors import TumorSegError

#: SNOMED-CT codes of a generic tumor, used for seeded (model-free) results.
NEOPLASM_TERMINOLOGY = {
    "category": ["SCT", "49755003", "Morphologically Altered Structure"],
    "type": ["SCT", "108369006", "Neoplasm"],
}
#: Colors for label values that come without a description (RGB in 0..1).
AUTO_COLORS = (
    (0.90, 0.30, 0.20), (0.25, 0.65, 0.30), (0.20, 0.45, 0.85), (0.95, 0.80, 0.20),
    (0.70, 0.35, 0.80), (0.20, 0.80, 0.80), (0.95, 0.55, 0.15), (0.60, 0.60, 0.60),
)
#: The terminology context of every TumorSeg segment whose codes it lists: the context file
#: TumorSegmentation/Resources/TumorSegTerminology.term.json, which the Slicer module loads.
#: Slicer's default "3D Slicer General Anatomy list" has no Neoplasm type and no enhancing /
#: non-enhancing modifiers, so it cannot be the context of a tumor segment.
TUMORSEG_CONTEXT = "Segmentation category and type - TumorSeg"
#: The context of any other codes: DICOM's master list, which every Slicer loads.
DICOM_MASTER_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_ALTERED = ("SCT", "49755003")
_NEOPLASM = ("SCT", "108369006")
#: The (category, type, modifier or None) code pairs (scheme, value) listed in TUMORSEG_CONTEXT's
#: file; Testing/slicer/test_terminology.py checks that they equal the file's entries.
TUMORSEG_CONTEXT_ENTRIES = frozenset({
    (_ALTERED, _NEOPLASM, None),
    (_ALTERED, _NEOPLASM, ("NCIt", "C113842")),
    (_ALTERED, _NEOPLASM, ("NCIt", "C81175")),
    (_ALTERED, ("SCT", "6574001"), None),
    (_ALTERED, ("SCT", "79654002"), None),
})


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
    terminology: Optional[dict] = None

    def __post_init__(self) -> None:
        if len(self.color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.color):
            raise TumorSegError(f"segment {self.name!r} color {self.color} is invalid; give three RGB values in 0..1")

    @classmethod
    def from_dict(cls, item: Dict[str, Any]) -> "SegmentInfo":
        """From a manifest label dict (``value``, ``name``, ``color``, ``terminology``) or a worker event's."""
        try:
            value = int(item["value"])
            name = str(item.get("name", f"Segment_{value}"))
            color = tuple(float(c) for c in item.get("color", auto_color(value)))
        except (KeyError, TypeError, ValueError) as exc:
            raise TumorSegError(f"segment description {item!r} is invalid ({exc}); give value, name and color") from exc
        return cls(value, name, color, item.get("terminology"))  # type: ignore[arg-type]

    def to_dict(self) -> Dict[str, Any]:
        """The manifest/worker-protocol form: ``{"value", "name", "color", "terminology"?}``."""
        out: Dict[str, Any] = {"value": self.value, "name": self.name, "color": [float(c) for c in self.color]}
        if self.terminology:
            out["terminology"] = dict(self.terminology)
        return out


def auto_color(value: int) -> tuple[float, float, float]:
    """The color given to label ``value`` when nothing describes it."""
    return AUTO_COLORS[(int(value) - 1) % len(AUTO_COLORS)]


def complete_segments(values: Sequence[int], segments: Sequence[SegmentInfo]) -> list[SegmentInfo]:
    """``segments`` plus an automatic ``Segment_<v>`` for every label value in ``values`` they do not describe."""
    infos = list(segments)
    known = {s.value for s in infos}
    for v in sorted(int(v) for v in values):
        if v and v not in known:
            infos.append(SegmentInfo(v, f"Segment_{v}", auto_color(v)))
    return infos


#: The segment of a seeded (model-free) result.
SEEDED_TUMOR = SegmentInfo(value=1, name="Tumor", color=(0.89, 0.36, 0.27), terminology=NEOPLASM_TERMINOLOGY)


def _code_key(code: Optional[Sequence[str]]) -> Optional[tuple[str, str]]:
    """(scheme, value) of a ``[scheme, value, meaning]`` code: meanings vary in wording."""
    return (str(code[0]).strip(), str(code[1]).strip()) if code else None


def terminology_context(terminology: dict) -> str:
    """The context name for a ``{category, type, modifier?}`` dict: TumorSeg's if it lists the codes, else DICOM's."""
    key = (_code_key(terminology.get("category")), _code_key(terminology.get("type")),
           _code_key(terminology.get("modifier")))
    return TUMORSEG_CONTEXT if key in TUMORSEG_CONTEXT_ENTRIES else DICOM_MASTER_CONTEXT


def _code_string(code: Optional[Sequence[str]], field: str) -> str:
    """``scheme^value^meaning``, or ``^^`` for no code."""
    if not code:
        return "^^"
    if len(code) != 3:
        raise TumorSegError(f"terminology {field} {list(code)!r} is invalid; give [scheme, code, meaning]")
    parts = [str(c) for c in code]
    if any(ch in part for part in parts for ch in "~^|"):
        # These characters separate the fields of the tag (and of Slicer's tag list).
        raise TumorSegError(f"terminology {field} {parts!r} contains one of the reserved characters ~ ^ |; "
                            "remove it")
    return "^".join(parts)


def terminology_string(terminology: Optional[dict]) -> Optional[str]:
    """Slicer ``TerminologyEntry`` tag value for a ``{category, type, modifier?}`` dict, or None.

    The one builder of this string: the ``.seg.nrrd`` header (CLI, API, worker) and the
    Slicer module's segments both use it. The format is Slicer's
    (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``): context, category,
    type, modifier, anatomic context, region, region modifier, joined by ``~``; the
    context is :func:`terminology_context`'s. Raises TumorSegError for malformed codes.
    """
    if not terminology:
        return None
    if not terminology.get("category") or not terminology.get("type"):
        raise TumorSegError("terminology needs both 'category' and 'type' codes; give [scheme, code, meaning] for each")
    return "~".join([
        terminology_context(terminology),
        _code_string(terminology["category"], "category"),
        _code_string(terminology["type"], "type"),
        _code_string(terminology.get("modifier"), "modifier"),
        ANATOMIC_CONTEXT, "^^", "^^",
    ])
