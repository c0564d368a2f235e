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
other codes point at the DICOM master list that ships with Slicer. (Slicer's default
"3D Slicer General Anatomy list" has no Neoplasm type, so it is never used.)

The string is built by the engine's ``tumorseg_core.imaging.segments.terminology_string``,
the same function that writes the ``.seg.nrrd`` header of ``tumorseg segment``: a
segment gets the identical tag whichever door made it.

Qt-free; only :func:`load_into_slicer` touches the running application (guarded).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional, Tuple

from tumorseg_core.errors import TumorSegError
from tumorseg_core.imaging import segments as _segments

logger = logging.getLogger(__name__)

#: TumorSeg's terminology context file (shipped in the module's Resources folder).
TERMINOLOGY_FILE = Path(__file__).resolve().parent.parent / "Resources" / "TumorSegTerminology.term.json"
CONTEXT_NAME = _segments.TUMORSEG_CONTEXT
DICOM_MASTER_CONTEXT = _segments.DICOM_MASTER_CONTEXT
ANATOMIC_CONTEXT = _segments.ANATOMIC_CONTEXT

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


def terminology_entry(terminology: Optional[Dict[str, Any]]) -> Optional[str]:
    """Slicer ``TerminologyEntry`` tag value for a manifest terminology dict (``None`` if none).

    The context is TumorSeg's when the code combination is listed there, otherwise
    the DICOM master list (the engine's ``terminology_string``, so the CLI's ``.seg.nrrd``
    files carry the same string). Raises ValueError for malformed codes.
    """
    try:
        return _segments.terminology_string(terminology)
    except TumorSegError as exc:
        raise ValueError(str(exc)) from None


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
