"""Evaluate label maps against ground truth: one pair of files, folders of files, or a model on a data set.

Two folders are paired by **case name**: the file name without its extension
(``.seg.nrrd``, ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``), so ``pred/case_07.nii.gz`` is
compared with ``truth/case_07.seg.nrrd``; two files are one case, named after the truth
file. A prediction must lie on exactly its truth's voxel grid (same size, spacing,
origin, direction): nothing is resampled, a mismatch is an error. Every label file is
read by :func:`read_labels` (the label map and its segment names). Metric definitions
and the empty-mask policy are in :mod:`tumorseg_core.evaluation.metrics`.

Rows (one per case and label) are dicts with ``case``, ``label``, ``name``, the
metric keys and the lesion counts; :func:`summarize` turns them into per-label
NaN-aware means and :func:`format_table` into a plain-text table. On request, lesion
rows (one per lesion, :func:`lesions_of_case`) list every truth lesion, found or missed,
and every false-positive lesion; :func:`format_lesion_table` prints them.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import CancelledError, InputError, TumorSegError
from tumorseg_core.evaluation import metrics
from tumorseg_core.options import LABELMAP_EXTENSIONS

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
# What TumorSeg writes is what it reads back: the label map formats and DICOM SEG (case.dcm).
LABEL_EXTENSIONS: tuple[str, ...] = LABELMAP_EXTENSIONS + (".dcm",)
CSV_COLUMNS: tuple[str, ...] = (
    ("case", "label", "name") + metrics.METRIC_KEYS + metrics.LESION_KEYS + metrics.LESION_SIZE_KEYS
)
# (data images folder, labels folder) layouts evaluate_model accepts, in the order tried.
DATA_LAYOUTS: tuple[tuple[str, str], ...] = (("imagesTr", "labelsTr"), ("images", "labels"),
                                              ("imagesTs", "labelsTs"))
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net: case_0000.nii.gz


def case_name(path: PathLike) -> Optional[str]:
    """The case name of a label/image file (name minus a known extension), or None if not one."""
    name = Path(path).name
    lower = name.lower()
    for ext in LABEL_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def _index_folder(folder: PathLike, what: str) -> dict[str, Path]:
    """case name -> file for the image/label files directly in ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{what} folder {root} does not exist; check the path")
    index: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        case = case_name(path)
        if case is None or path.name.startswith(".") or not path.is_file():
            continue
        if case in index:
            raise InputError(f"{what} folder has two files for case '{case}' ({index[case].name}, {path.name}); "
                             "keep one")
        index[case] = path
    if not index:
        raise InputError(f"{what} folder {root} holds no {', '.join(LABEL_EXTENSIONS)} files")
    return index


def read_labels(path: PathLike, reference: Optional[sitk.Image] = None) -> tuple[sitk.Image, dict[int, str]]:
    """A label file's 3D label map and segment names (value -> name; ``{}`` if it names none).

    Read by :func:`tumorseg_core.dicom.labels.read_label_file`; ``reference`` is only the grid a
    DICOM SEG is read onto (nothing else is resampled: a prediction must lie on its truth's grid).
    """
    from tumorseg_core.dicom.labels import read_label_file

    labels, segments = read_label_file(path, reference, resample=False)
    return labels, {int(info.value): info.name for info in segments}


def evaluate_images(
    pred: sitk.Image,
    truth: sitk.Image,
    case: str,
    labels: Optional[Mapping[int, str]] = None,
    tolerance_mm: float = 2.0,
    min_overlap: float = 0.0,
) -> list[dict[str, Any]]:
    """Metrics of one case (see :func:`tumorseg_core.evaluation.metrics.evaluate_case`), each row with ``case``.

    Raises InputError naming the case if the two images are not on the same grid.
    """
    from tumorseg_core.imaging.geometry import same_grid

    if not same_grid(pred, truth):
        raise InputError(
            f"case '{case}': prediction grid (size {pred.GetSize()}, spacing {_fmt(pred.GetSpacing())}, origin "
            f"{_fmt(pred.GetOrigin())}) differs from the truth's (size {truth.GetSize()}, spacing "
            f"{_fmt(truth.GetSpacing())}, origin {_fmt(truth.GetOrigin())}); resample it onto the truth grid"
        )
    pred_arr = sitk.GetArrayViewFromImage(pred).astype(np.int64)
    truth_arr = sitk.GetArrayViewFromImage(truth).astype(np.int64)
    rows = metrics.evaluate_case(pred_arr, truth_arr, truth.GetSpacing(), labels, tolerance_mm, min_overlap)
    return [{"case": case, **row} for row in rows]


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _complete_labels(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add rows for labels absent from both maps of a case (labels found automatically).

    Such a label is empty in both prediction and truth, whose metrics do not depend on
    the image, so they are computed on a one-voxel empty map.
    """
    names = {row["label"]: row["name"] for row in rows}
    present: dict[str, set[int]] = {}
    for row in rows:
        present.setdefault(row["case"], set()).add(row["label"])
    empty = np.zeros((1, 1, 1), dtype=np.uint8)
    out = list(rows)
    for case, values in present.items():
        missing = {v: names[v] for v in names if v not in values}
        if missing:
            out.extend({"case": case, **r} for r in metrics.evaluate_case(empty, empty, (1, 1, 1), missing))
    return sorted(out, key=lambda r: (r["case"], r["label"]))


def pair_label_files(pred: PathLike, truth: PathLike) -> list[tuple[str, Path, Path]]:
    """``[(case, prediction file, truth file)]`` for two label map files or two folders, sorted by case.

    Two files are one case, named after the truth file. Two folders are paired by case
    name; predictions without a truth file are ignored (with a warning).

    Raises:
        InputError: a path is missing, one is a file and the other a folder, a folder is
            empty, a truth case has no prediction, or no names match.
    """
    pred_path, truth_path = Path(pred), Path(truth)
    for path, what in ((pred_path, "prediction"), (truth_path, "truth")):
        if not path.exists():
            raise InputError(f"{what} file or folder {path} does not exist; check the path")
    if pred_path.is_file() != truth_path.is_file():
        kinds = ", ".join(f"the {what} {'a file' if path.is_file() else 'a folder'}"
                          for path, what in ((pred_path, "prediction"), (truth_path, "truth")))
        raise InputError(f"{kinds}; give two label map files (one case) or two folders (cases paired by name)")
    if pred_path.is_file():
        return [(case_name(truth_path) or truth_path.name, pred_path, truth_path)]
    preds = _index_folder(pred_path, "prediction")
    truths = _index_folder(truth_path, "truth")
    missing = sorted(set(truths) - set(preds))
    if len(missing) == len(truths):
        raise InputError(f"no prediction file in {pred} has the name of a truth file in {truth}; "
                         "name each prediction like its truth (e.g. case_01.nii.gz)")
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{len(missing)} truth case(s) have no prediction ({shown}); segment them or remove "
                         "them from the truth folder")
    extra = sorted(set(preds) - set(truths))
    if extra:
        logger.warning("ignoring %d prediction(s) with no truth file: %s", len(extra), ", ".join(extra[:5]))
    return [(case, preds[case], truths[case]) for case in sorted(truths)]


def evaluate_folders(
    pred_dir: PathLike,
    truth_dir: PathLike,
    labels: Optional[Mapping[int, str]] = None,
    tolerance_mm: float = 2.0,
    min_overlap: float = 0.0,
    progress: Optional[Callable[[float, str], None]] = None,
    lesion_rows: Optional[list[dict[str, Any]]] = None,
) -> list[dict[str, Any]]:
    """Evaluate two label map files, or every prediction in a folder against the same-named truth file.

    Args:
        pred_dir, truth_dir: two files (one case) or two folders (see :func:`pair_label_files`).
        labels: label value -> name; None: every non-zero value found in any file, named
            after its segment in the files (the truth's ``.seg.nrrd`` header first, then the
            prediction's; ``label_<value>`` when neither names it). A case where a label is
            absent from both maps scores it as both-empty.
        tolerance_mm: surface Dice tolerance; min_overlap: lesion detection threshold.
        lesion_rows: if a list is given, every case's lesions (:func:`lesions_of_case`) are
            appended to it.

    Returns:
        Rows, one per case and label, sorted by case then label.

    Raises:
        InputError: as :func:`pair_label_files`, or a file is unreadable, or a pair is on
            different grids.
    """
    pairs = pair_label_files(pred_dir, truth_dir)
    rows: list[dict[str, Any]] = []
    found_names: dict[int, str] = {}
    lesions: list[dict[str, Any]] = []
    for i, (case, pred_path, truth_path) in enumerate(pairs):
        if progress is not None:
            progress(i / len(pairs), f"case {case}")
        pred, pred_names, truth, truth_names = _read_pair(pred_path, truth_path)
        for value, name in {**pred_names, **truth_names}.items():  # the truth's names win
            if found_names.setdefault(value, name) != name:
                logger.warning("label %d is '%s' in %s but '%s' before; the table says '%s'",
                               value, name, truth_path.name if value in truth_names else pred_path.name,
                               found_names[value], found_names[value])
        rows.extend(evaluate_images(pred, truth, case, labels, tolerance_mm, min_overlap))
        if lesion_rows is not None:
            lesions.extend(lesions_of_case(pred, truth, case, labels, min_overlap))
    if progress is not None:
        progress(1.0, f"{len(pairs)} cases evaluated")
    if labels is None:
        for row in rows + lesions:
            row["name"] = found_names.get(row["label"], row["name"])
    if lesion_rows is not None:
        lesion_rows.extend(lesions)
    return rows if labels is not None else _complete_labels(rows)


def _read_pair(pred_path: Path, truth_path: Path) -> tuple:
    """``(pred, pred_names, truth, truth_names)``; a DICOM SEG is read onto the other file's grid."""
    from tumorseg_core.dicom.seg_read import is_dicom_seg

    if is_dicom_seg(truth_path) and not is_dicom_seg(pred_path):
        pred, pred_names = read_labels(pred_path)
        truth, truth_names = read_labels(truth_path, reference=pred)
    else:
        truth, truth_names = read_labels(truth_path)
        pred, pred_names = read_labels(pred_path, reference=truth)
    return pred, pred_names, truth, truth_names


def lesions_of_case(
    pred: sitk.Image,
    truth: sitk.Image,
    case: str,
    labels: Optional[Mapping[int, str]] = None,
    min_overlap: float = 0.0,
) -> list[dict[str, Any]]:
    """One row per lesion of one case: ``case``, ``label``, ``name``, ``lesion``, ``status``, ``volume_mm3``,
    ``covered``, ``center_lps``.

    ``lesion`` is ``T<n>`` for the n-th truth lesion of a label (``status`` found or
    missed) and ``P<n>`` for a false-positive predicted lesion; ``center_lps`` is its
    centroid in LPS mm. Labels as :func:`evaluate_images` (None: every non-zero value,
    named ``label_<value>``). The two images must be on the same grid.
    """
    pred_arr = sitk.GetArrayViewFromImage(pred).astype(np.int64)
    truth_arr = sitk.GetArrayViewFromImage(truth).astype(np.int64)
    if labels is None:
        values = np.union1d(np.unique(pred_arr), np.unique(truth_arr))
        labels = {int(v): f"label_{int(v)}" for v in values if v != 0}
    rows: list[dict[str, Any]] = []
    for value, name in sorted(labels.items()):
        counters = {"truth": 0, "prediction": 0}
        for record in metrics.lesion_records(pred_arr == value, truth_arr == value, truth.GetSpacing(), min_overlap):
            counters[record["kind"]] += 1
            z, y, x = record["center_index_zyx"]
            rows.append({
                "case": case, "label": int(value), "name": str(name),
                "lesion": f"{'T' if record['kind'] == 'truth' else 'P'}{counters[record['kind']]}",
                "status": record["status"], "volume_mm3": record["volume_mm3"], "covered": record["covered"],
                "center_lps": truth.TransformContinuousIndexToPhysicalPoint((x, y, z)),
            })
    return rows


def format_lesion_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table of :func:`lesions_of_case` rows: one line per lesion (volume in mL, centre in LPS mm)."""
    if not rows:
        return "no lesions in the truth or the prediction"
    lines = [["case", "segment", "lesion", "status", "volume (mL)", "covered", "center (LPS mm)"]]
    for row in rows:
        center = ", ".join(f"{c:.1f}" for c in row["center_lps"])
        covered = f"{row['covered'] * 100:.0f}%" if row["lesion"].startswith("T") else "-"
        lines.append([str(row["case"]), f"{row['name']} ({row['label']})", row["lesion"], row["status"],
                      f"{row['volume_mm3'] / 1000.0:.3f}", covered, f"({center})"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append("T: a truth lesion, found or missed; P: a predicted lesion touching no truth lesion "
                "(false positive); covered: its voxels the prediction covers")
    return "\n".join(text)


def find_data(data_dir: PathLike) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Image channels and label file per case of an MSD-style or paired data folder.

    Images in ``imagesTr/``, ``images/`` or ``imagesTs/`` (with ``labelsTr/``, ``labels/``
    or ``labelsTs/``); several channels of a case are ``<case>_0000``, ``<case>_0001``, ...
    Returns ``({case: [channel paths]}, {case: label path})`` for the cases that have both.
    """
    root = Path(data_dir)
    for images_name, labels_name in DATA_LAYOUTS:
        if (root / images_name).is_dir() and (root / labels_name).is_dir():
            break
    else:
        raise InputError(f"{root} has no imagesTr/ + labelsTr/ or images/ + labels/ folders; "
                         "put the images and their label maps there")
    channels: dict[str, list[tuple[int, Path]]] = {}
    for case, path in _index_folder(root / images_name, "images").items():
        match = _CHANNEL_SUFFIX.match(case)
        base, channel = (match["case"], int(match["channel"])) if match else (case, 0)
        channels.setdefault(base, []).append((channel, path))
    label_files = _index_folder(root / labels_name, "labels")
    unlabeled = sorted(set(channels) - set(label_files))
    if unlabeled:
        logger.warning("skipping %d image case(s) with no label map: %s", len(unlabeled), ", ".join(unlabeled[:5]))
    cases = sorted(set(channels) & set(label_files))
    if not cases:
        raise InputError(f"no image in {root / images_name} has a label map of the same name in "
                         f"{root / labels_name}; name them alike (case_01_0000.nii.gz, case_01.nii.gz)")
    images = {c: [p for _, p in sorted(channels[c])] for c in cases}
    return images, {c: label_files[c] for c in cases}


def evaluate_model(
    package_or_name: Any,
    data_dir: PathLike,
    labels: Optional[Mapping[int, str]] = None,
    tolerance_mm: float = 2.0,
    min_overlap: float = 0.0,
    device: str = "auto",
    save_dir: Optional[PathLike] = None,
    progress: Optional[Callable[[float, str], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
    lesion_rows: Optional[list[dict[str, Any]]] = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Segment every labelled case of ``data_dir`` with a model and evaluate it.

    Args:
        package_or_name: model name, package folder/.zip or opened ``ModelPackage``.
        data_dir: folder laid out as :func:`find_data` describes.
        labels: value -> name; None: the model's labels/regions.
        save_dir: if given, each prediction is also written there as ``<case>.nii.gz``.
        lesion_rows: if a list is given, every case's lesions (:func:`lesions_of_case`) are
            appended to it.
        options: passed to :class:`tumorseg_core.inference.segmenter.Segmenter` (``overlap``, ``tta``, ...).

    Returns:
        Rows as :func:`evaluate_folders` returns them.
    """
    from tumorseg_core.inference.segmenter import Segmenter  # lazy: pulls in torch

    images, label_files = find_data(data_dir)
    segmenter = Segmenter(package_or_name, device=device, **options)
    if labels is None:
        labels = {s.value: s.name for s in segmenter.manifest.segments}
    rows: list[dict[str, Any]] = []
    for i, case in enumerate(images):
        if cancel is not None and cancel():
            raise CancelledError()
        if progress is not None:
            progress(i / len(images), f"segmenting {case} ({i + 1}/{len(images)})")
        inputs: list[Any] = list(images[case])
        if len(inputs) == 1 and segmenter.manifest.num_inputs > 1:
            from tumorseg_core.imaging.io import read_channels  # MSD Task01 style: one 4D file per case

            inputs = read_channels(inputs[0])
        if save_dir is not None:
            pred = segmenter.segment_to_file(inputs, Path(save_dir) / f"{case}.nii.gz", cancel=cancel)
        else:
            pred = segmenter.segment(inputs, cancel=cancel)
        truth = read_labels(label_files[case])[0]
        rows.extend(evaluate_images(pred, truth, case, labels, tolerance_mm, min_overlap))
        if lesion_rows is not None:
            lesion_rows.extend(lesions_of_case(pred, truth, case, labels, min_overlap))
    if progress is not None:
        progress(1.0, f"{len(images)} cases evaluated")
    return rows


def _csv_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.6g}"
    return value


def write_csv(rows: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Write rows (columns ``CSV_COLUMNS``; NaN as ``nan``) atomically: temp file, then rename."""
    out = Path(path)
    if not out.parent.is_dir():
        raise TumorSegError(f"folder {out.parent} does not exist; create it or choose another CSV path")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(row.get(k, "")) for k in CSV_COLUMNS})
        os.replace(tmp, out)
    except OSError as exc:
        raise TumorSegError(f"could not write {out} ({exc.strerror or exc}); choose a writable path") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.info("wrote %s (%d rows)", out, len(rows))
    return out


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per-label summary of rows.

    Returns ``{label value: {"name", "cases", "metrics": {key: {"mean", "sd", "median",
    "n", "excluded"}}, "lesions_truth", "lesions_found", "lesions_missed", "lesions_fp",
    and the per-diameter lesion counts}}``: NaN-aware mean, sample sd (NaN with fewer
    than two values) and median over the ``n`` cases where the metric is defined;
    ``excluded`` counts the NaN (undefined) cases; lesion counts are totals over cases
    (a row without per-diameter counts, e.g. from an older CSV, adds none).
    """
    summary: dict[int, dict[str, Any]] = {}
    for value in sorted({int(r["label"]) for r in rows}):
        group = [r for r in rows if int(r["label"]) == value]
        entry: dict[str, Any] = {"name": group[0]["name"], "cases": len(group), "metrics": {}}
        for key in metrics.METRIC_KEYS:
            values = np.array([float(r[key]) for r in group], dtype=float)
            defined = values[~np.isnan(values)]
            entry["metrics"][key] = {
                "mean": float(defined.mean()) if defined.size else math.nan,
                "sd": float(defined.std(ddof=1)) if defined.size > 1 else math.nan,
                "median": float(np.median(defined)) if defined.size else math.nan,
                "n": int(defined.size),
                "excluded": int(values.size - defined.size),
            }
        for key in metrics.LESION_KEYS:
            entry[key] = int(sum(int(r[key]) for r in group))
        for key in metrics.LESION_SIZE_KEYS:
            entry[key] = int(sum(int(r[key]) for r in group if r.get(key, "") not in ("", None)))
        summary[value] = entry
    return summary


# (metric key, row title, format of mean/sd) in table order.
_TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("dice", "Dice", ".3f"),
    ("sensitivity", "Sensitivity", ".3f"),
    ("specificity", "Specificity", ".4f"),
    ("precision", "Precision", ".3f"),
    ("hd95", "HD95 (mm)", ".2f"),
    ("surface_dice", "Surface Dice", ".3f"),
    ("volume_error_mm3", "Volume error (mm3)", ".1f"),
    ("volume_error_rel", "Volume error (rel)", ".3f"),
)


def _cell(stats: Mapping[str, Any], fmt: str) -> str:
    """``mean ± sd`` plus ``[k excl]`` when k cases had the metric undefined."""
    if stats["n"] == 0:
        text = "n/a"
    elif math.isnan(stats["sd"]):
        text = format(stats["mean"], fmt)
    else:
        text = f"{format(stats['mean'], fmt)} ± {format(stats['sd'], fmt)}"
    return text + (f" [{stats['excluded']} excl]" if stats["excluded"] else "")


def _median_cell(stats: Mapping[str, Any]) -> str:
    return "n/a" if stats["n"] == 0 else format(stats["median"], ".3f")


def _diameter_titles() -> list[str]:
    edges = [f"{b:g}" for b in metrics.DIAMETER_BINS_MM]
    return [f"< {edges[0]} mm"] + [f"{a}-{b} mm" for a, b in zip(edges, edges[1:])] + [f">= {edges[-1]} mm"]


def format_table(summary: Mapping[int, Mapping[str, Any]]) -> str:
    """Plain-text table of a :func:`summarize` result: one column per label, one row per metric."""
    if not summary:
        return "no cases evaluated"
    header = ["metric"] + [f"{entry['name']} ({value})" for value, entry in summary.items()]
    lines: list[list[str]] = [header, ["cases"] + [str(e["cases"]) for e in summary.values()]]
    for key, title, fmt in _TABLE_ROWS:
        lines.append([title] + [_cell(e["metrics"][key], fmt) for e in summary.values()])
        if key == "dice":
            lines.append(["Dice (median)"] + [_median_cell(e["metrics"][key]) for e in summary.values()])
    lines.append(["Lesions found/truth"] + [f"{e['lesions_found']}/{e['lesions_truth']}" for e in summary.values()])
    for name, title in zip(metrics.diameter_bin_names(), _diameter_titles()):
        lines.append([f"  found, diameter {title}"]
                     + [f"{e[f'lesions_found_{name}']}/{e[f'lesions_truth_{name}']}" for e in summary.values()])
    lines.append(["Lesions missed"] + [str(e["lesions_missed"]) for e in summary.values()])
    lines.append(["False-positive lesions"] + [str(e["lesions_fp"]) for e in summary.values()])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append("mean ± sd over cases; [k excl]: cases where the metric is undefined (NaN), left out of the mean")
    return "\n".join(text)
