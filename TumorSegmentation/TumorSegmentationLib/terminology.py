"""Standard terminology (SNOMED-CT codes) for TumorSeg segments, in Slicer's formats.

A model manifest describes each label with ``{"category": [scheme, code, meaning],
"type": [...], "modifier": [...]}``. Slicer stores the same on a segment as the
``TerminologyEntry`` tag, a string of the form::

    <context>~<cat scheme>^<cat code>^<cat meaning>~<type ...>~<modifier ...>
        ~<anatomic context>~<region ...>~<region modifier ...>

(the format of ``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``).
Labels whose codes are in TumorSeg's own context file
(``Resources/TumorSegTerminology.term.json``) point at that context, so Slicer's
terminology selector shows them with our names and colors once the file is loaded;
other codes point at the DICOM master list that ships with Slicer.

Qt-free; only :func:`load_into_slicer` touches the running application (guarded).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

#: TumorSeg's terminology context file (shipped in the module's Resources folder).
TERMINOLOGY_FILE = Path(__file__).resolve().parent.parent / "Resources" / "TumorSegTerminology.term.json"
CONTEXT_NAME = "Segmentation category and type - TumorSeg"
DICOM_MASTER_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

_MORPHOLOGICALLY_ALTERED = ["SCT", "49755003", "Morphologically Altered Structure"]
_NEOPLASM = ["SCT", "108369006", "Neoplasm"]

#: Manifest-style terminology for the usual tumor sub-regions (used by model authors and tests).
NEOPLASM = {"category": _MORPHOLOGICALLY_ALTERED, "type": _NEOPLASM}
ENHANCING_TUMOR = {"category": _MORPHOLOGICALLY_ALTERED, "type": _NEOPLASM,
                   "modifier": ["NCIt", "C113842", "Enhancing Lesion"]}
NON_ENHANCING_TUMOR = {"category": _MORPHOLOGICALLY_ALTERED, "type": _NEOPLASM,
                       "modifier": ["NCIt", "C81175", "Nonenhancing"]}
NECROSIS = {"category": _MORPHOLOGICALLY_ALTERED, "type": ["SCT", "6574001", "Necrosis"]}
EDEMA = {"category": _MORPHOLOGICALLY_ALTERED, "type": ["SCT", "79654002", "Edema"]}

CodeKey = Tuple[str, str]
EntryKey = Tuple[CodeKey, CodeKey, Optional[CodeKey]]


def _key(code: Optional[Sequence[str]]) -> Optional[CodeKey]:
    """(scheme, value) of a ``[scheme, value, meaning]`` code; meanings vary in wording."""
    if not code:
        return None
    return (str(code[0]).strip(), str(code[1]).strip())


@functools.lru_cache(maxsize=1)
def context_entries(path: str = str(TERMINOLOGY_FILE)) -> FrozenSet[EntryKey]:
    """Every (category, type, modifier-or-None) code combination listed in a context file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("cannot read terminology file %s (%s); segments will use the DICOM master list", path, exc)
        return frozenset()
    entries = set()
    for category in data.get("SegmentationCodes", {}).get("Category", []):
        cat = (category["CodingSchemeDesignator"], category["CodeValue"])
        for typ in category.get("Type", []):
            type_key = (typ["CodingSchemeDesignator"], typ["CodeValue"])
            entries.add((cat, type_key, None))
            for mod in typ.get("Modifier", []):
                entries.add((cat, type_key, (mod["CodingSchemeDesignator"], mod["CodeValue"])))
    return frozenset(entries)


def _code_string(code: Optional[Sequence[str]], field: str) -> str:
    if not code:
        return "^^"
    if len(code) != 3:
        raise ValueError(f"terminology {field} {list(code)!r} must be [scheme, code, meaning]")
    parts = [str(c) for c in code]
    if any(ch in part for part in parts for ch in "~^|"):
        # These characters separate the fields of the tag (and Slicer's tag list).
        raise ValueError(f"terminology {field} {parts!r} contains one of the reserved characters ~ ^ |")
    return "^".join(parts)


def terminology_entry(terminology: Optional[Dict[str, Any]]) -> Optional[str]:
    """Slicer ``TerminologyEntry`` tag value for a manifest terminology dict (``None`` if none).

    The context is TumorSeg's when the code combination is listed there, otherwise
    the DICOM master list. Raises ValueError for malformed codes.
    """
    if not terminology:
        return None
    if not terminology.get("category") or not terminology.get("type"):
        raise ValueError("terminology needs both 'category' and 'type' codes")
    key = (_key(terminology["category"]), _key(terminology["type"]), _key(terminology.get("modifier")))
    context = CONTEXT_NAME if key in context_entries() else DICOM_MASTER_CONTEXT
    return "~".join([
        context,
        _code_string(terminology["category"], "category"),
        _code_string(terminology["type"], "type"),
        _code_string(terminology.get("modifier"), "modifier"),
        ANATOMIC_CONTEXT, "^^", "^^",
    ])


def parse_terminology_entry(entry: str) -> Dict[str, Any]:
    """The inverse of :func:`terminology_entry`: ``{"context", "category", "type", "modifier"}``.

    Empty codes come back as ``None``; raises ValueError if ``entry`` is not a tag value.
    """
    fields = entry.split("~")
    if len(fields) != 7:
        raise ValueError(f"not a Slicer terminology entry (expected 7 '~'-separated fields): {entry!r}")

    def code(text: str) -> Optional[list]:
        parts = text.split("^")
        if len(parts) != 3:
            raise ValueError(f"terminology code {text!r} is not scheme^code^meaning")
        return None if not any(parts) else parts

    return {"context": fields[0], "category": code(fields[1]), "type": code(fields[2]), "modifier": code(fields[3])}


def load_into_slicer() -> Optional[str]:
    """Load TumorSeg's context into Slicer's terminology module; returns its name, or None.

    Only inside the Slicer application (``slicer.modules.terminologies``); headless
    (slicer-core) there is no module registry and this does nothing.
    """
    try:
        import slicer

        logic = slicer.modules.terminologies.logic()
    except (ImportError, AttributeError):
        return None
    name = logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    if not name:
        logger.warning("Slicer could not load the terminology file %s", TERMINOLOGY_FILE)
        return None
    return str(name)
