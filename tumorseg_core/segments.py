"""Segment names, colors and terminology for label maps, from a manifest or for seeded results."""

from __future__ import annotations

from typing import Any

from tumorseg_core.io import SegmentInfo

# SNOMED-CT codes of a generic tumor, used for seeded (model-free) results.
NEOPLASM_TERMINOLOGY = {
    "category": ["SCT", "49755003", "Morphologically Altered Structure"],
    "type": ["SCT", "108369006", "Neoplasm"],
}
SEEDED_TUMOR = SegmentInfo(value=1, name="Tumor", color=(0.89, 0.36, 0.27), terminology=NEOPLASM_TERMINOLOGY)


def output_entries(manifest_data: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's output labels (softmax) or regions (sigmoid) as raw dicts, in order."""
    output = manifest_data.get("output") or {}
    return list(output.get("labels") or output.get("regions") or [])


def segments_from_manifest(manifest_data: dict[str, Any]) -> list[SegmentInfo]:
    """One :class:`SegmentInfo` per output label of a model package's manifest."""
    return [
        SegmentInfo(
            value=int(entry["value"]),
            name=str(entry["name"]),
            color=tuple(float(c) for c in entry.get("color", (1.0, 1.0, 0.0)))[:3],
            terminology=entry.get("terminology"),
        )
        for entry in output_entries(manifest_data)
    ]
