"""Training configuration: defaults, JSON loading and checks.

A config is a JSON object; every key is optional except ``data``. Defaults
(:data:`DEFAULT_CONFIG`) train a 3D U-Net on 1.5 mm isotropic patches with Dice +
cross-entropy, AdamW and a poly learning-rate schedule. The patch size, batch size,
iterations per epoch and epochs left at ``null`` are sized for the machine once the
device is known (:data:`MACHINE_DEFAULTS`, :func:`apply_machine_defaults`): 96^3 patches,
batch 2, 250 iterations, 100 epochs on a GPU; 48^3 (rounded up to what the network
needs), batch 2, 40 iterations, 20 epochs on a CPU (one epoch in minutes on two cores
rather than hours).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from tumorseg_core.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_LABEL: dict[str, Any] = {
    "value": 1,
    "name": "Tumor",
    "color": [0.89, 0.36, 0.27],
    "terminology": {
        "category": ["SCT", "49755003", "Morphologically Altered Structure"],
        "type": ["SCT", "108369006", "Neoplasm"],
    },
}
_PALETTE = [[0.89, 0.36, 0.27], [0.95, 0.84, 0.29], [0.35, 0.67, 0.89], [0.56, 0.83, 0.45], [0.72, 0.49, 0.86]]
DEFAULT_NORMALIZATION = {"MRI": {"type": "zscore", "nonzero": True, "clip_percentiles": [0.5, 99.5]},
                         "CT": {"type": "ct", "window": [-200.0, 300.0]}}

DEFAULT_CONFIG: dict[str, Any] = {
    "data": None,  # dataset folder, dataset.json, CSV, or "synthetic:N"
    "synthetic": {},  # options for synthetic:N (see training.synthetic_data.SYNTHETIC_DEFAULTS)
    "name": "tumorseg-custom",
    "version": "1.0.0",
    "license": "Apache-2.0",
    "description": None,
    "architecture": "unet3d",
    "kwargs": {},  # in_channels/out_channels are filled in from inputs/labels
    "inputs": None,  # [{"modality": "MRI", "normalization": {...}}], default from the data
    "spacing": [1.5, 1.5, 1.5],  # mm, x y z
    "orientation": "LPS",
    "patch_size": None,  # voxels, x y z; None: MACHINE_DEFAULTS for the device
    "preprocessing": {"denoise": None, "crop_foreground": False},
    "output": {"type": "softmax", "labels": None},  # labels default from the data / DEFAULT_LABEL
    "postprocessing": [],
    "inference": {"overlap": 0.5},
    "epochs": None,  # None: MACHINE_DEFAULTS for the device
    "iterations_per_epoch": None,  # None: MACHINE_DEFAULTS for the device
    "batch_size": None,  # None: MACHINE_DEFAULTS for the device
    "lr": None,  # default 1e-3 (adamw) / 1e-2 (sgd)
    "weight_decay": 3e-5,
    "optimizer": "adamw",
    "schedule": "poly",
    "loss": "dice_ce",
    "loss_options": {},
    "class_weights": None,
    "augment": {},
    "init_weights": None,  # fine-tune from a model package ("default", an installed name, folder or zip)
    # sha256 of the init_weights network; filled in by the run (so its training_config.json
    # and its resume check name the exact weights), refused if the package now has others.
    "init_weights_sha256": None,
    # Crops centred on a model's false positives on the training cases, e.g.
    # {"fraction": 0.25} (mines with init_weights) or {"model": PACKAGE, "fraction": 0.3}.
    "hard_negatives": None,
    "val_fraction": 0.2,
    # A separate validation set (folder, CSV, dataset.json or "synthetic:N"); when given,
    # every case of ``data`` trains and val_fraction/folds are not used. Choose it like
    # the data the model will meet: checkpoints are selected on it.
    "val_data": None,
    "val_synthetic": {},  # options for val_data "synthetic:N" (own phantoms: seed + VAL_SEED_OFFSET)
    "folds": None,
    "fold": 0,
    "seed": 0,
    "device": "auto",
    "amp": True,
    "num_workers": 0,
    "workdir": None,
    "cache_dir": None,
    "val_overlap": 0.5,
    "val_sw_batch": 2,
    "val_every": 1,  # validate every N epochs (and always after the last one)
    # Stop after the last epoch that fits in this many minutes (a cluster job's or a lent
    # GPU's time), validate it, and write the package; running again with more time resumes.
    "time_limit_minutes": None,
    "grad_clip": 12.0,
    # A resumable checkpoint inside an epoch at least this often (and on SIGINT/SIGTERM).
    "checkpoint_minutes": 10.0,
    # A progress line (iteration, loss, time left) this often; 0 = only the epoch lines.
    "log_every_seconds": 60.0,
    # A package whose validation Dice is below this is marked "validated": false.
    "min_val_dice": 0.5,
    # Input modality names, one per channel (e.g. ["CT"]); None: what the data says.
    "modalities": None,
}

# Sizes for the machine: a key left at None in the config takes its device's value.
MACHINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpu": {"patch_size": [96, 96, 96], "batch_size": 2, "iterations_per_epoch": 250, "epochs": 100},
    "cpu": {"patch_size": [48, 48, 48], "batch_size": 2, "iterations_per_epoch": 40, "epochs": 20},
}

# Keys that define what is trained: resuming with any of them changed is refused.
_IDENTITY_KEYS = ("data", "synthetic", "architecture", "kwargs", "inputs", "spacing", "orientation",
                  "patch_size", "output", "loss", "loss_options", "class_weights", "optimizer", "seed",
                  "val_fraction", "folds", "fold", "augment", "batch_size", "iterations_per_epoch",
                  "init_weights", "init_weights_sha256", "val_data", "val_synthetic", "hard_negatives")
# Validation phantoms use seed + this, so they never repeat a training phantom.
VAL_SEED_OFFSET = 1_000_003


def load_config(path: Path | str) -> dict[str, Any]:
    """Read a JSON config file; relative ``data`` paths are relative to the file."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"could not read config {p} ({exc}); give a JSON object file") from exc
    if not isinstance(raw, dict):
        raise InputError(f"config {p} is not a JSON object; write {{\"data\": ..., ...}}")
    for key in ("data", "val_data"):
        data = raw.get(key)
        if isinstance(data, str) and not data.startswith("synthetic:") and not Path(data).is_absolute():
            raw[key] = str((p.parent / data).resolve())
    return raw


def merge_config(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``DEFAULT_CONFIG`` <- ``base`` <- ``overrides`` (None values in overrides are skipped)."""
    unknown = sorted(set(base) - set(DEFAULT_CONFIG))
    if unknown:
        raise InputError(f"unknown config key(s) {', '.join(unknown)}; see the DEFAULT_CONFIG keys in the docs")
    config = copy.deepcopy(DEFAULT_CONFIG)
    config.update(copy.deepcopy(base))
    config.update({k: copy.deepcopy(v) for k, v in overrides.items() if v is not None})
    return config


def apply_machine_defaults(config: dict[str, Any], device_type: str) -> dict[str, Any]:
    """``config`` with its ``None`` sizes (patch_size, batch_size, iterations_per_epoch, epochs)
    filled in from :data:`MACHINE_DEFAULTS` for ``device_type`` ("cpu" or a GPU type)."""
    machine = "cpu" if device_type == "cpu" else "gpu"
    config = copy.deepcopy(config)
    filled = {}
    for key, value in MACHINE_DEFAULTS[machine].items():
        if config.get(key) is None:
            config[key] = filled[key] = copy.deepcopy(value)
    if "patch_size" in filled:
        config["patch_size"] = filled["patch_size"] = _fit_divisor(config["patch_size"], config)
    if filled and machine == "cpu":
        logger.warning("no GPU: CPU-sized defaults %s (give --patch-size, --batch-size, --iterations-per-epoch "
                       "or --epochs to choose)", ", ".join(f"{k} {v}" for k, v in filled.items()))
    return config


def _fit_divisor(patch_xyz: list[int], config: dict[str, Any]) -> list[int]:
    """``patch_xyz`` rounded up to multiples of the network's window divisor (unchanged when the
    architecture or kwargs are not valid: the data set-up reports that)."""
    from tumorseg_core.errors import ModelPackageError
    from tumorseg_core.models.registry import size_divisor

    try:
        divisor_zyx = size_divisor(str(config["architecture"]), dict(config["kwargs"] or {}))
    except (ModelPackageError, TypeError, ValueError):
        return patch_xyz
    return [-(-int(p) // int(d)) * int(d) for p, d in zip(patch_xyz, divisor_zyx[::-1])]


def _positive_int(config: dict[str, Any], key: str) -> None:
    value = config[key]
    if value is None and key in MACHINE_DEFAULTS["cpu"]:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{key} must be a positive integer, got {value!r}")


def check_config(config: dict[str, Any]) -> None:
    """Raise InputError for values that cannot work (before any data is read)."""
    if not config.get("data"):
        raise InputError("no training data given; pass a dataset folder, CSV, dataset.json or synthetic:N")
    for key in ("epochs", "iterations_per_epoch", "batch_size", "val_every"):
        _positive_int(config, key)
    for key in ("spacing", "patch_size"):
        value = config[key]
        if value is None and key == "patch_size":
            continue
        if not isinstance(value, list) or len(value) != 3 or not all(
            isinstance(v, (int, float)) and v > 0 for v in value
        ):
            raise InputError(f"{key} must be three positive numbers (x, y, z), got {value!r}")
    if config["patch_size"] is not None and not all(float(v).is_integer() for v in config["patch_size"]):
        raise InputError(f"patch_size must be whole voxel counts, got {config['patch_size']}")
    if config["optimizer"] not in ("adamw", "sgd"):
        raise InputError(f"optimizer {config['optimizer']!r} is unknown; use adamw or sgd")
    if config["schedule"] not in ("poly", "cosine"):
        raise InputError(f"schedule {config['schedule']!r} is unknown; use poly or cosine")
    if config["output"].get("type", "softmax") != "softmax":
        raise InputError("training supports output type 'softmax' only; set output.type to softmax")
    if config["folds"] is not None and (not isinstance(config["folds"], int) or config["folds"] < 2):
        raise InputError(f"folds must be an integer >= 2 (or null for a random split), got {config['folds']!r}")
    if config["val_data"] is not None and config["folds"] is not None:
        raise InputError("val_data and folds exclude each other: k-fold validates on the data's own folds; drop one")
    if config["val_data"] is not None and (not isinstance(config["val_data"], str) or not config["val_data"]):
        raise InputError(f"val_data must be a dataset path or synthetic:N, got {config['val_data']!r}")
    limit = config["time_limit_minutes"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                              or not 0 < limit < 1e9):
        raise InputError(f"time_limit_minutes must be a positive, finite number of minutes (or null), got {limit!r}")
    from tumorseg_core.training.hard_negatives import hard_negative_settings

    hard_negative_settings(config["hard_negatives"], config["init_weights"])
    pinned = config["init_weights_sha256"]
    if pinned is not None and not (isinstance(pinned, str) and re.fullmatch(r"[0-9a-f]{64}", pinned)):
        raise InputError(f"init_weights_sha256 must be a sha256 hex digest or null, got {pinned!r}")
    if pinned is not None and not config["init_weights"]:
        raise InputError("init_weights_sha256 is set without init_weights; give the package it pins or drop it")
    for key in ("checkpoint_minutes", "log_every_seconds"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
            raise InputError(f"{key} must be a number >= 0, got {value!r}")
    dice = config["min_val_dice"]
    if isinstance(dice, bool) or not isinstance(dice, (int, float)) or not 0 <= dice <= 1:
        raise InputError(f"min_val_dice must be a number from 0 to 1, got {dice!r}")
    names = config["modalities"]
    if names is not None and (not isinstance(names, list) or not names
                              or not all(isinstance(n, str) and n.strip() for n in names)):
        raise InputError(f"modalities must be a list of names, one per input channel (e.g. [\"CT\"]), got {names!r}")
    if not isinstance(config["val_synthetic"], dict):
        raise InputError(f"val_synthetic must be an object of synthetic options, got {config['val_synthetic']!r}")


def default_labels(names: dict[int, str] | None) -> list[dict[str, Any]]:
    """Manifest output labels for label values -> names (one "Tumor" label if none are known)."""
    if not names:
        return [copy.deepcopy(DEFAULT_LABEL)]
    labels = []
    for i, value in enumerate(sorted(names)):
        label = copy.deepcopy(DEFAULT_LABEL)
        label.update({"value": int(value), "name": names[value], "color": _PALETTE[i % len(_PALETTE)]})
        labels.append(label)
    return labels


UNSPECIFIED_MODALITY = "unspecified"


def default_inputs(modalities: list[str] | None, n_channels: int) -> list[dict[str, Any]]:
    """Manifest inputs: one per channel, normalization by modality (CT window; z-score otherwise).

    ``modalities`` are the channel names the data or the user gave (e.g. ``["CT"]``,
    ``["MRI/CT"]`` for mixed data); without them every channel is ``"unspecified"``
    (z-scored) rather than a guess.
    """
    if modalities is not None and len(modalities) != n_channels:
        raise InputError(f"{len(modalities)} modality name(s) ({', '.join(modalities)}) for {n_channels} input "
                         f"channel(s); give one --modality per channel")
    names = list(modalities) if modalities else [UNSPECIFIED_MODALITY] * n_channels
    inputs = []
    for name in names:
        kind = "CT" if name.upper() == "CT" else "MRI"
        inputs.append({"modality": name, "normalization": copy.deepcopy(DEFAULT_NORMALIZATION[kind])})
    return inputs


# Settings added after checkpoints existed enter the hash only when they differ from these
# values, so a run checkpointed before they existed still resumes.
_LATER_DEFAULTS = {"val_data": None, "val_synthetic": {}, "hard_negatives": None, "init_weights_sha256": None}
_LATER_AUGMENT_DEFAULTS = {"fg_sampling": "voxel"}


def config_hash(config: dict[str, Any]) -> str:
    """Hash of the keys that define the training run (see ``_IDENTITY_KEYS``)."""
    identity = {k: config.get(k) for k in _IDENTITY_KEYS
                if k not in _LATER_DEFAULTS or config.get(k, _LATER_DEFAULTS[k]) != _LATER_DEFAULTS[k]}
    if isinstance(identity.get("augment"), dict):
        identity["augment"] = {k: v for k, v in identity["augment"].items()
                               if k not in _LATER_AUGMENT_DEFAULTS or v != _LATER_AUGMENT_DEFAULTS[k]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]
