"""Training data sources: cases from MSD folders, paired folders, CSV lists or phantoms.

A :class:`Case` names files only; reading, resampling and normalising happen once per
case in :mod:`tumorseg_core.training.cache` (``.npy`` cache). Layouts understood by
:func:`load_dataset`:

* Medical Segmentation Decathlon: ``dataset.json`` with a ``training`` list of
  ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``; a 4D image
  (Task01_BrainTumour) is split into channels when read (:func:`tumorseg_core.imaging.io.read_channels`).
* Paired folders: ``images/`` (or ``imagesTr/``) + ``labels/`` (or ``labelsTr/``) with
  the same stems; nnU-Net multi-channel ``case_0000.nii.gz``, ``case_0001.nii.gz`` with
  ``labels/case.nii.gz``; or a flat folder of ``X_image.nii.gz`` / ``X_label.nii.gz``
  (``X_image_0000.nii.gz`` ... for several channels).
* CSV: a header with ``image`` (and ``image2``, ``image3``, ... for more channels),
  ``label`` and optionally ``id``; relative paths are relative to the CSV file.
* ``synthetic:N``: see :mod:`tumorseg_core.training.synthetic_data`.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tumorseg_core.errors import InputError
from tumorseg_core.imaging.io import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Case:
    """One training case.

    ``images`` are the input channels in model order; a single 4D/vector file counts as
    all its channels. ``label`` is the label map (integer values, 0 = background).
    """

    id: str
    images: list[Path]
    label: Path

    def files(self) -> list[Path]:
        """Every file the case reads (for cache keys)."""
        return [*self.images, self.label]


@dataclass
class DatasetSource:
    """Cases plus what the source says about itself (MSD ``dataset.json`` metadata)."""

    cases: list[Case]
    description: str
    modalities: list[str] | None = None  # one name per channel, if the source says
    labels: dict[int, str] = field(default_factory=dict)  # foreground value -> name


def strip_extension(name: str) -> str | None:
    """File name without a known image extension, or None if it is not an image file."""
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return None


def _image_files(folder: Path) -> dict[str, Path]:
    """Map stem -> path for the image files directly in ``folder`` (hidden files skipped)."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        stem = strip_extension(p.name)
        if stem is not None and p.is_file() and not p.name.startswith("."):
            files[stem] = p
    return files


def _check_exists(paths: Sequence[Path], where: str) -> None:
    for p in paths:
        if not p.is_file():
            raise InputError(f"{where} lists {p}, which does not exist; fix the path or the list")


def load_msd(folder: Path | str) -> DatasetSource:
    """Load a Medical Segmentation Decathlon task folder (``dataset.json`` + ``imagesTr/`` + ``labelsTr/``)."""
    root = Path(folder)
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"could not read {meta_path} ({exc}); give a Decathlon task folder") from exc
    entries = meta.get("training")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{meta_path} has no 'training' list; give a Decathlon dataset.json with training cases")
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputError(f"{meta_path}: training entry {entry!r} needs 'image' and 'label'; fix dataset.json")
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        image_paths = [(root / p).resolve() for p in images]
        label = (root / entry["label"]).resolve()
        _check_exists([*image_paths, label], str(meta_path))
        cases.append(Case(strip_extension(label.name) or label.name, image_paths, label))
    modality = meta.get("modality") or {}
    modalities = [str(modality[k]) for k in sorted(modality, key=int)] if modality else None
    labels = {int(k): str(v) for k, v in (meta.get("labels") or {}).items() if int(k) != 0}
    description = str(meta.get("name") or root.name)
    return DatasetSource(cases, f"{description} ({len(cases)} cases)", modalities, labels)


def _pair_images_labels(images_dir: Path, labels_dir: Path) -> list[Case]:
    """Cases from an images folder and a labels folder sharing stems (nnU-Net channels allowed)."""
    labels = _image_files(labels_dir)
    grouped: dict[str, dict[int, Path]] = {}
    for stem, path in _image_files(images_dir).items():
        m = _CHANNEL_SUFFIX.match(stem)
        if stem in labels or m is None:
            grouped.setdefault(stem, {})[0] = path
        else:
            grouped.setdefault(m.group("case"), {})[int(m.group("channel"))] = path
    cases = []
    for case_id, channels in sorted(grouped.items()):
        if case_id not in labels:
            raise InputError(f"{images_dir} has {case_id} but {labels_dir} has no label for it; add or remove it")
        order = sorted(channels)
        if order != list(range(len(order))):
            raise InputError(f"{images_dir}: case {case_id} has channels {order}; number them 0000, 0001, ...")
        cases.append(Case(case_id, [channels[c] for c in order], labels[case_id]))
    return cases


def _flat_pairs(folder: Path) -> list[Case]:
    """Cases from ``X_image.nii.gz`` (or ``X_image_0000`` ...) next to ``X_label.nii.gz``."""
    files = _image_files(folder)
    cases = []
    for stem, label in files.items():
        if not stem.endswith("_label"):
            continue
        case_id = stem[: -len("_label")]
        if f"{case_id}_image" in files:
            images = [files[f"{case_id}_image"]]
        else:
            images = []
            while f"{case_id}_image_{len(images):04d}" in files:
                images.append(files[f"{case_id}_image_{len(images):04d}"])
        if not images:
            raise InputError(f"{label} has no {case_id}_image file next to it; add the image or remove the label")
        cases.append(Case(case_id, images, label))
    return cases


def load_paired_folder(folder: Path | str) -> DatasetSource:
    """Load ``images/`` + ``labels/`` (or ``imagesTr``/``labelsTr``) or a flat ``*_image``/``*_label`` folder."""
    root = Path(folder)
    for img_name, lbl_name in (("images", "labels"), ("imagesTr", "labelsTr")):
        if (root / img_name).is_dir() and (root / lbl_name).is_dir():
            cases = _pair_images_labels(root / img_name, root / lbl_name)
            break
    else:
        cases = _flat_pairs(root)
    if not cases:
        raise InputError(
            f"no training cases found in {root}; use images/ + labels/ folders, X_image/X_label files or a dataset.json"
        )
    return DatasetSource(cases, f"{root.name} ({len(cases)} cases)")


def load_csv(path: Path | str) -> DatasetSource:
    """Load a CSV with columns ``image`` [``image2`` ...], ``label`` [, ``id``]."""
    csv_path = Path(path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    except OSError as exc:
        raise InputError(f"could not read {csv_path} ({exc}); give a readable CSV file") from exc
    image_cols = sorted((c for c in columns if re.fullmatch(r"image\d*", c)), key=lambda c: int(c[5:] or 1))
    if not rows or not image_cols or "label" not in columns:
        raise InputError(f"{csv_path} needs a header with 'image' and 'label' columns and at least one row")
    cases = []
    for i, row in enumerate(rows):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        images = [(csv_path.parent / row[c]).resolve() for c in image_cols if row.get(c)]
        label = (csv_path.parent / row["label"]).resolve()
        _check_exists([*images, label], f"{csv_path} row {i + 2}")
        case_id = row.get("id") or strip_extension(label.name) or f"case{i:04d}"
        cases.append(Case(case_id, images, label))
    return DatasetSource(cases, f"{csv_path.name} ({len(cases)} cases)")


def load_dataset(path: Path | str) -> DatasetSource:
    """Load a data source by its shape: MSD folder/dataset.json, CSV file or paired folder."""
    p = Path(path)
    if p.is_file() and p.name == "dataset.json":
        return load_msd(p.parent)
    if p.is_file() and p.suffix.lower() == ".csv":
        return load_csv(p)
    if p.is_dir():
        if (p / "dataset.json").is_file():
            return load_msd(p)
        return load_paired_folder(p)
    raise InputError(f"training data {p} not found; give a dataset folder, a dataset.json, a CSV or synthetic:N")


def _check_unique(cases: Sequence[Case]) -> None:
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"case ids {dup[:5]} appear more than once; give every case a unique id")


def _shuffled(cases: Sequence[Case], seed: int) -> list[Case]:
    """Cases in a seed-determined order that does not depend on the input order."""
    _check_unique(cases)
    ordered = sorted(cases, key=lambda c: c.id)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in perm]


def split_cases(cases: Sequence[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Random train/validation split (deterministic for a seed); returns ``(train, val)``.

    At least one case each side when there are two or more cases and ``val_fraction > 0``;
    ``val_fraction == 0`` gives an empty validation list.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction {val_fraction} is out of range; use a value in [0, 1)")
    shuffled = _shuffled(cases, seed)
    if val_fraction == 0 or len(shuffled) < 2:
        return shuffled, []
    n_val = min(len(shuffled) - 1, max(1, int(round(val_fraction * len(shuffled)))))
    return shuffled[n_val:], shuffled[:n_val]


def kfold(cases: Sequence[Case], k: int, fold: int, seed: int) -> tuple[list[Case], list[Case]]:
    """Fold ``fold`` of a ``k``-fold cross-validation (deterministic for a seed): ``(train, val)``."""
    if k < 2 or not 0 <= fold < k:
        raise InputError(f"fold {fold} of {k} folds is invalid; use --folds K >= 2 and 0 <= --fold < K")
    if len(cases) < k:
        raise InputError(f"{len(cases)} cases cannot make {k} folds; use fewer folds or more cases")
    parts = np.array_split(np.arange(len(cases)), k)
    shuffled = _shuffled(cases, seed)
    val_idx = set(parts[fold].tolist())
    train = [c for i, c in enumerate(shuffled) if i not in val_idx]
    val = [c for i, c in enumerate(shuffled) if i in val_idx]
    return train, val


def describe(source: DatasetSource, extra: dict[str, Any] | None = None) -> str:
    """One-line description of the training data for the manifest's metrics."""
    text = source.description
    if extra:
        text += "; " + ", ".join(f"{k}={v}" for k, v in extra.items())
    return text
