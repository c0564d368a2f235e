"""Hard-negative mining: crops centred on what a model wrongly calls tumour.

A segmentation model's remaining errors on healthy tissue are not spread evenly: they are
a few structures that look like lesions (a vessel in cross-section, a blob of another
organ). Random background crops rarely land on them, so fine-tuning with ordinary
sampling barely teaches the network about them. Here a model package segments every
training case once, exactly as ``tumorseg segment`` would on the model grid (its
sliding window and its postprocessing), and every predicted lesion that touches no
labelled voxel becomes a *hard negative*. During training a share of the crops
(``hard_negatives.fraction``) is centred on a voxel of a hard negative, drawn lesion by
lesion like the ``fg_sampling: "lesion"`` crops.

With ``hard_negatives.missed`` set (a lesion recall, e.g. 0.8), the hard set also holds
*hard positives*: the voxels the model leaves out of every labelled lesion whose voxel
recall is below that value (a missed small lesion, the unsegmented part of a large
low-contrast one). Ordinary lesion-centred crops treat an easy lesion and one the model
gets wrong alike; these put the share ``fraction`` where the model fails, on both sides.

Mining works on the training cache (model grid, normalised), so the mining model must
share the run's spacing, orientation and input normalisation; usually it is the model
being fine-tuned (``init_weights``). Results are cached per case, keyed by the case's
cache key, the model's weight hashes and the mining settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tumorseg_core.errors import InputError
from tumorseg_core.training.cache import CachedCase, PreprocessConfig, atomic_save

logger = logging.getLogger(__name__)

MINING_VERSION = 3  # bump when what is mined changes
DEFAULT_HARD_NEGATIVES: dict[str, Any] = {
    "model": None,  # package that mines (name, folder or zip); None = the run's init_weights
    "fraction": 0.25,  # share of training crops centred on a hard negative (when a case has one)
    "overlap": None,  # sliding-window overlap for mining; None = the mining model's own
    # Also hard positives: the missed voxels of each labelled lesion whose voxel recall is
    # below this (0 < missed <= 1); None = false positives only.
    "missed": None,
    # sha256 of the mining model's weights: filled in by the run (so resuming with other
    # weights behind the same name is refused); when given, the model must have them.
    "weights_sha256": None,
}


def hard_negative_settings(value: Any, init_weights: Any) -> dict[str, Any] | None:
    """Validated ``hard_negatives`` config (None when off); unknown keys or bad values raise InputError."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise InputError(f"hard_negatives must be an object like {{\"fraction\": 0.25}} or null, got {value!r}")
    unknown = sorted(set(value) - set(DEFAULT_HARD_NEGATIVES))
    if unknown:
        raise InputError(f"unknown hard_negatives key(s) {', '.join(unknown)}; use {', '.join(DEFAULT_HARD_NEGATIVES)}")
    settings = {**DEFAULT_HARD_NEGATIVES, **value}
    if settings["model"] is None:
        settings["model"] = init_weights
    if settings["model"] is not None and not isinstance(settings["model"], str):
        raise InputError(f"hard_negatives.model must be a model name, folder or zip path, got {settings['model']!r}")
    if not settings["model"]:
        raise InputError("hard_negatives needs a model to mine with: set hard_negatives.model or init_weights")
    pinned = settings["weights_sha256"]
    if pinned is not None and (not isinstance(pinned, list) or not pinned
                               or not all(isinstance(d, str) and len(d) == 64 for d in pinned)):
        raise InputError(f"hard_negatives.weights_sha256 must be a list of sha256 hex digests or null, got {pinned!r}")
    fraction = settings["fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise InputError(f"hard_negatives.fraction must be in (0, 1], got {fraction!r}")
    overlap = settings["overlap"]
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, (int, float))
                                or not 0.0 <= overlap < 1.0):
        raise InputError(f"hard_negatives.overlap must be in [0, 1) or null, got {overlap!r}")
    missed = settings["missed"]
    if missed is not None and (isinstance(missed, bool) or not isinstance(missed, (int, float))
                               or not 0.0 < missed <= 1.0):
        raise InputError(f"hard_negatives.missed must be a lesion recall in (0, 1] or null, got {missed!r}")
    return settings


def false_positive_coordinates(pred: np.ndarray, label: np.ndarray, seed: int = 0) -> np.ndarray:
    """Voxels of predicted lesions that touch no labelled voxel, with their lesion's number.

    ``pred`` and ``label`` are (z, y, x) or (1, z, y, x); lesions are 26-connected
    components of ``pred > 0`` (the lesion definition of the detection metrics). Returns
    (N, 4) int32 rows ``(z, y, x, lesion)``, lesions numbered 1..n, each subsampled to at
    most ``ceil(MAX_COORDS / n)`` voxels so every false-positive lesion keeps coordinates.
    """
    from scipy import ndimage

    from tumorseg_core.training.foreground_crop import foreground_coordinates

    pred = np.asarray(pred[0] if pred.ndim == 4 else pred) > 0
    truth = np.asarray(label[0] if label.ndim == 4 else label) > 0
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and label {truth.shape} differ in shape")
    components, _ = ndimage.label(pred, structure=np.ones((3, 3, 3), dtype=bool))
    touched = np.unique(components[truth & (components > 0)])
    false = (components > 0) & ~np.isin(components, touched)
    # Whole predicted lesions are kept or dropped, so the false ones are exactly the
    # components of ``false``: the per-lesion foreground sampling numbers and subsamples them.
    return foreground_coordinates(false, seed=seed, per_lesion=True)


def missed_coordinates(pred: np.ndarray, label: np.ndarray, max_recall: float, seed: int = 0) -> np.ndarray:
    """Missed voxels of the labelled lesions whose voxel recall is below ``max_recall``.

    Same shapes and lesion definition as :func:`false_positive_coordinates`. Returns (N, 4)
    int32 rows ``(z, y, x, lesion)``: the voxels ``label > 0 & pred == 0`` of each such
    lesion, numbered 1..n in the order of the label's components and subsampled per lesion.
    """
    from scipy import ndimage

    from tumorseg_core.training.foreground_crop import lesion_coordinates

    pred = np.asarray(pred[0] if pred.ndim == 4 else pred) > 0
    truth = np.asarray(label[0] if label.ndim == 4 else label) > 0
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and label {truth.shape} differ in shape")
    components, n = ndimage.label(truth, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, 4), dtype=np.int32)
    index = np.arange(1, n + 1)
    recall = ndimage.sum(pred, components, index) / ndimage.sum(truth, components, index)
    poor = index[recall < max_recall]
    # The unit is the label's lesion (renumbered 1..len(poor)), not the pieces its
    # missed voxels fall into, so a lesion is drawn once however it was missed.
    lesions = np.where(np.isin(components, poor) & ~pred, np.searchsorted(poor, components) + 1, 0)
    return lesion_coordinates(lesions, len(poor), np.random.default_rng(seed))


def hard_coordinates(pred: np.ndarray, label: np.ndarray, missed: float | None, seed: int = 0) -> np.ndarray:
    """False-positive lesions (1..n), then the missed parts of poorly found lesions (n+1..), as (N, 4) int32."""
    false = false_positive_coordinates(pred, label, seed=seed)
    if missed is None:
        return false
    poor = missed_coordinates(pred, label, float(missed), seed=seed)
    if len(poor) and len(false):
        poor[:, 3] += int(false[:, 3].max())
    return np.concatenate([false, poor]).astype(np.int32)


def _check_compatible(manifest: Any, pre: PreprocessConfig, model: str) -> None:
    """The mining model must see the training cache exactly as its own pipeline would."""
    mine = (tuple(float(s) for s in manifest.spacing_xyz), manifest.orientation,
            tuple(json.dumps(n, sort_keys=True) for n in manifest.normalizations))
    run = (tuple(float(s) for s in pre.spacing_xyz), pre.orientation,
           tuple(json.dumps(n, sort_keys=True) for n in pre.normalizations))
    if mine != run:
        raise InputError(
            f"hard_negatives.model {model!r} preprocesses differently from this run (spacing, orientation "
            f"{mine[:2]} vs {run[:2]}, or its input normalization); mine with a model trained like this run"
        )


def weight_digests(package: Any) -> list[str]:
    """Sorted sha256 digests of a package's network weights (what mining results depend on)."""
    return sorted(digest for name, digest in package.manifest.files.items() if name.endswith(".safetensors"))


def open_mining_model(settings: dict[str, Any], pre: PreprocessConfig) -> Any:
    """The verified mining package; InputError if it preprocesses differently or has other pinned weights."""
    from tumorseg_core.modelpkg.package import open_package

    package = open_package(settings["model"])
    _check_compatible(package.manifest, pre, settings["model"])
    pinned = settings.get("weights_sha256")
    if pinned is not None and sorted(pinned) != weight_digests(package):
        raise InputError(
            f"hard_negatives.model {settings['model']!r} now has other weights than this run mined with "
            "(weights_sha256); restore that model, or start a new run (another --workdir)"
        )
    return package


def _mining_key(case: CachedCase, package: Any, overlap: float, missed: float | None = None) -> str:
    # The whole manifest (output, inference settings, postprocessing, cascade...) and the
    # weights decide the prediction; the case's cache file name is its preprocessing key.
    # ``missed`` enters only when set, so results mined without it keep their keys.
    fields: dict[str, Any] = {"v": MINING_VERSION, "case": Path(case.image).name, "weights": weight_digests(package),
                              "manifest": package.manifest.to_dict(), "overlap": overlap}
    if missed is not None:
        fields["missed"] = float(missed)
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def mine_hard_negatives(cases: Sequence[CachedCase], settings: dict[str, Any], package: Any,
                        cache_dir: Path, device: str = "cpu",
                        progress: Callable[[float, str], None] | None = None,
                        share: tuple[int, int] = (0, 1)) -> list[np.ndarray]:
    """(N, 4) hard-example coordinates per case (see :func:`hard_coordinates`).

    Each case is segmented by ``package`` (from :func:`open_mining_model`) on its cached
    model-grid image, with the model's exhaustive sliding window (no cascade, no TTA:
    the reference pass) and its postprocessing, unless a cached result exists.
    ``share=(rank, world)``: only cases ``i % world == rank`` are mined (DDP ranks split
    the work, then read each other's results from the cache); the others are left out of
    the returned list.
    """
    from tumorseg_core.imaging.postprocess import postprocess_labels

    manifest = package.manifest
    overlap = settings["overlap"]
    if overlap is None:
        overlap = float((manifest.inference or {}).get("overlap", 0.5))
    folder = Path(cache_dir) / "hard_negatives"
    folder.mkdir(parents=True, exist_ok=True)
    rank, world = share
    predictor = None
    out: list[np.ndarray] = []
    for i, case in enumerate(cases):
        if i % world != rank:
            continue
        key = _mining_key(case, package, float(overlap), settings.get("missed"))
        path = folder / f"{key}.npy"
        if path.is_file():
            out.append(np.load(path, allow_pickle=False))
            continue
        if predictor is None:
            from tumorseg_core.inference.predictor import Predictor

            predictor = Predictor.from_package(package, device=device, overlap=float(overlap), tta=False)
        arrays = case.load(mmap=True)
        pred = predictor.predict(np.asarray(arrays["image"], dtype=np.float32))
        if manifest.postprocessing:
            pred = postprocess_labels(pred, manifest.spacing_xyz, manifest.postprocessing)
        # Seeded by the key, so a cached result never depends on the case's place in a list.
        coords = hard_coordinates(pred, arrays["label"], settings.get("missed"), seed=int(key[:8], 16))
        atomic_save(path, coords)
        out.append(coords)
        if progress is not None:
            progress((i + 1) / len(cases), f"mined {case.id}: {len(np.unique(coords[:, 3]))} hard lesion(s)")
    return out


def log_summary(model: str, coords: Sequence[np.ndarray]) -> None:
    """One log line: how many hard lesions (false positives, poorly found lesions) the mining found."""
    found = sum(1 for c in coords if len(c))
    lesions = sum(int(c[:, 3].max()) for c in coords if len(c))
    logger.info("hard examples from %s: %d hard lesion(s) (false positives, and poorly found lesions where "
                "hard_negatives.missed is set) in %d of %d training cases", model, lesions, found, len(coords))
