"""The measurement table: one row per lesion, written as CSV or JSON (atomically) or shown as text.

Columns (units in the name where there is one): ``lesion_id``, ``label``, ``segment``,
``voxels``, ``volume_mm3``, ``volume_ml``, ``centroid_lps`` (L, P, S mm), ``bbox_min_lps``
and ``bbox_max_lps`` (the box of the voxels' outer edges), ``recist_slice`` (the image's
z index), ``recist_long_mm``, ``recist_short_mm``, ``recist_long_ends_lps`` and
``recist_short_ends_lps`` (two LPS points each), ``max_diameter_3d_mm`` and its
``max_diameter_3d_ends_lps``, ``surface_mm2``,
``sphericity``, ``intensity_*`` (on the image: mean, sd, min, max, p5..p95) and ``suv_*``,
``mtv*``, ``tlg*`` (PET). In CSV a point becomes three columns ``_L``, ``_P``, ``_S`` (ends:
``_1_L`` ... ``_2_S``); a value that was not measured is an empty cell (``null`` in JSON).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from tumorseg_core.imaging.io import atomic_write, check_writable_file

PathLike = Union[str, "os.PathLike[str]"]
Point = tuple[float, float, float]
TABLE_EXTENSIONS = (".csv", ".json")
_AXES = ("L", "P", "S")


@dataclass(frozen=True)
class LesionMeasurement:
    """The measurements of one lesion (a 26-connected component of one segment label)."""

    lesion_id: int
    label: int
    segment: str
    voxels: int
    volume_mm3: float
    volume_ml: float
    centroid_lps: Point
    bbox_min_lps: Point
    bbox_max_lps: Point
    recist_slice: int
    recist_long_mm: float
    recist_short_mm: float
    recist_long_ends_lps: tuple[Point, Point]
    recist_short_ends_lps: tuple[Point, Point]
    max_diameter_3d_mm: float
    max_diameter_3d_ends_lps: tuple[Point, Point]
    surface_mm2: float
    sphericity: float
    intensity_mean: Optional[float] = None
    intensity_sd: Optional[float] = None
    intensity_min: Optional[float] = None
    intensity_max: Optional[float] = None
    intensity_p5: Optional[float] = None
    intensity_p25: Optional[float] = None
    intensity_p50: Optional[float] = None
    intensity_p75: Optional[float] = None
    intensity_p95: Optional[float] = None
    suv_max: Optional[float] = None
    suv_mean: Optional[float] = None
    suv_peak: Optional[float] = None
    mtv41_ml: Optional[float] = None
    suv_mean41: Optional[float] = None
    tlg41: Optional[float] = None
    mtv25_ml: Optional[float] = None
    suv_mean25: Optional[float] = None
    tlg25: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON values (points as lists; NaN as None)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def flat(self) -> dict[str, Any]:
        """The row with every point split into ``_L``/``_P``/``_S`` columns (CSV)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_ends_lps"):
                for n, point in enumerate(value, start=1):
                    out.update({f"{f.name}_{n}_{a}": _plain(v) for a, v in zip(_AXES, point)})
            elif f.name.endswith("_lps"):
                out.update({f"{f.name}_{a}": _plain(v) for a, v in zip(_AXES, value)})
            else:
                out[f.name] = _plain(value)
        return out


@dataclass(frozen=True)
class SegmentSummary:
    """Per segment label: how many lesions, their total volume and the sum of their RECIST long axes."""

    label: int
    segment: str
    lesions: int
    volume_ml: float
    recist_sum_mm: float


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class MeasurementTable:
    """Every lesion's measurements (``rows``, by lesion id) and what was measured.

    ``suv_factor`` is the factor applied to the PET image (None without PET).
    """

    rows: list[LesionMeasurement] = field(default_factory=list)
    has_intensity: bool = False
    suv_factor: Optional[float] = None

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LesionMeasurement]:
        return iter(self.rows)

    def summaries(self) -> list[SegmentSummary]:
        """One summary per segment label present, by label value."""
        out = []
        for label in sorted({r.label for r in self.rows}):
            rows = [r for r in self.rows if r.label == label]
            out.append(SegmentSummary(label, rows[0].segment, len(rows), sum(r.volume_ml for r in rows),
                                      sum(r.recist_long_mm for r in rows)))
        return out

    def columns(self) -> list[str]:
        """The CSV columns (every column, also for an empty table)."""
        return list(_EMPTY_ROW.flat())

    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.flat().items()})
        return buffer.getvalue()

    def json_text(self) -> str:
        document = {
            "units": {"length": "mm", "volume": "mL (volume_mm3: mm^3)", "area": "mm^2", "points": "LPS mm",
                      "intensity": "the image's units (HU on CT)", "suv": "g/mL (body weight)"},
            "suv_factor": self.suv_factor,
            "segments": [dataclasses.asdict(s) for s in self.summaries()],
            "lesions": [row.to_dict() for row in self.rows],
        }
        return json.dumps(document, indent=2, allow_nan=False) + "\n"

    def to_csv(self, path: PathLike) -> Path:
        """Write the table as CSV (atomically); returns the path."""
        return _write_text(Path(path), ".csv", self.csv_text())

    def to_json(self, path: PathLike) -> Path:
        """Write the table as JSON (atomically); returns the path."""
        return _write_text(Path(path), ".json", self.json_text())

    def write(self, path: PathLike) -> Path:
        """Write CSV or JSON, chosen by the extension of ``path``."""
        ext = check_table_path(path)
        return self.to_csv(path) if ext == ".csv" else self.to_json(path)

    def to_text(self) -> str:
        """A readable fixed-width table of the main columns, plus one line per segment."""
        if not self.rows:
            return "no lesions (the label map is empty)\n"
        columns = [("id", "lesion_id", "{}"), ("segment", "segment", "{}"), ("vol mL", "volume_ml", "{:.3f}"),
                   ("long mm", "recist_long_mm", "{:.1f}"), ("short mm", "recist_short_mm", "{:.1f}"),
                   ("3D mm", "max_diameter_3d_mm", "{:.1f}"), ("spher.", "sphericity", "{:.2f}")]
        if self.has_intensity:
            columns += [("mean", "intensity_mean", "{:.1f}"), ("sd", "intensity_sd", "{:.1f}")]
        if self.suv_factor is not None:
            columns += [("SUVmax", "suv_max", "{:.2f}"), ("SUVpeak", "suv_peak", "{:.2f}"),
                        ("MTV41 mL", "mtv41_ml", "{:.2f}"), ("TLG41", "tlg41", "{:.1f}")]
        cells = [[h for h, _k, _f in columns]]
        for row in self.rows:
            cells.append([_cell(fmt, getattr(row, key)) for _h, key, fmt in columns])
        widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
        lines = ["  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in cells]
        for s in self.summaries():
            lines.append(f"{s.segment} (label {s.label}): {s.lesions} lesion(s), {s.volume_ml:.3f} mL, "
                         f"sum of RECIST long axes {s.recist_sum_mm:.1f} mm")
        return "\n".join(lines) + "\n"


def _cell(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


_ORIGIN: Point = (0.0, 0.0, 0.0)
_EMPTY_ROW = LesionMeasurement(0, 0, "", 0, 0.0, 0.0, _ORIGIN, _ORIGIN, _ORIGIN, 0, 0.0, 0.0, (_ORIGIN, _ORIGIN),
                               (_ORIGIN, _ORIGIN), 0.0, (_ORIGIN, _ORIGIN), 0.0, 0.0)


def check_table_path(path: PathLike, extensions: Sequence[str] = TABLE_EXTENSIONS) -> str:
    """Refuse an output path before any work is done (:func:`~tumorseg_core.imaging.io.check_writable_file`);
    returns its extension."""
    return check_writable_file(path, extensions)[1]


def _write_text(path: Path, ext: str, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)

    atomic_write(path, ext, write)
    return path


def write_bytes(path: PathLike, ext: str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (for the PNG); returns the path."""
    p = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    atomic_write(p, ext, write)
    return p
