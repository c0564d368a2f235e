"""Turn a training config into ready data: cases, split, inputs/labels, cache, patch dataset."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from tumorseg_core.errors import InputError, ModelPackageError
from tumorseg_core.training import distributed as dist_utils
from tumorseg_core.training.cache import CachedCase, PreprocessConfig, cache_cases
from tumorseg_core.training.config import VAL_SEED_OFFSET, default_inputs, default_labels
from tumorseg_core.training.datasets import DatasetSource, kfold, load_dataset, split_cases
from tumorseg_core.training.hard_negatives import (
    hard_negative_settings,
    log_summary,
    mine_hard_negatives,
    open_mining_model,
    weight_digests,
)
from tumorseg_core.training.patches import PatchDataset

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """Everything the loop needs about the data.

    ``config`` has ``inputs`` and ``output.labels`` filled in; ``kwargs`` are the
    network kwargs with ``in_channels``/``out_channels``; ``patch_zyx`` is the patch in
    array order.
    """

    config: dict[str, Any]
    kwargs: dict[str, Any]
    patches: PatchDataset
    train_cases: list[CachedCase]
    val_cases: list[CachedCase]
    patch_zyx: tuple[int, int, int]
    description: str


def resolve_source(config: dict[str, Any], cache_dir: Path, validation: bool = False) -> DatasetSource:
    """The cases named by ``config["data"]`` (or ``val_data``), generating phantoms for ``synthetic:N``."""
    data = str(config["val_data" if validation else "data"])
    if data.startswith("synthetic:"):
        from tumorseg_core.training.synthetic_data import synthetic_source

        try:
            n = int(data.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < (1 if validation else 2):
            raise InputError(f"'{data}' is not a valid synthetic source; write synthetic:N with N >= 2 cases")
        seed, options = int(config["seed"]), config["synthetic"]
        if validation:
            seed, options = seed + VAL_SEED_OFFSET, config["val_synthetic"]
        return synthetic_source(n, seed, options, cache_dir / "synthetic")
    return load_dataset(Path(data).expanduser())


def _split(config: dict[str, Any], source: DatasetSource, cache_dir: Path, info: dist_utils.DistInfo) -> tuple:
    """(train cases, validation cases, description): a separate val_data set, k-fold or a random split."""
    if config["val_data"]:
        val_source = dist_utils.main_first(info, lambda: resolve_source(config, cache_dir, validation=True))
        if val_source.labels and source.labels and set(val_source.labels) - set(source.labels):
            raise InputError(
                f"val_data has label values {sorted(val_source.labels)} that the training data lacks "
                f"({sorted(source.labels)}); validate on data labelled like the training data"
            )
        trained = {Path(case.label).resolve() for case in source.cases}
        if any(Path(case.label).resolve() in trained for case in val_source.cases):
            raise InputError("val_data repeats training cases; validate on cases the model does not train on")
        ids = {case.id for case in source.cases}
        val = [replace(case, id=f"val_{case.id}") if case.id in ids else case for case in val_source.cases]
        return list(source.cases), val, f"{source.description}; validation: {val_source.description}"
    if config["folds"]:
        train, val = kfold(source.cases, int(config["folds"]), int(config["fold"]), int(config["seed"]))
    else:
        train, val = split_cases(source.cases, float(config["val_fraction"]), int(config["seed"]))
    return train, val, source.description


def _count_channels(source: DatasetSource) -> int:
    from tumorseg_core.imaging.io import read_channels

    return sum(len(read_channels(p)) for p in source.cases[0].images)


def _modalities(config: dict[str, Any], source: DatasetSource) -> tuple[list[str] | None, int]:
    """(channel modality names, channel count): the user's ``modalities``, else what the data says
    (a dataset.json's ``modality``, the synthetic phantoms' mix), else None (``unspecified``)."""
    n_channels = _count_channels(source)
    if config["modalities"]:
        return list(config["modalities"]), n_channels
    names = source.modalities
    if names and len(names) != n_channels:
        logger.warning("the data names %d modalities (%s) for %d input channel(s); the manifest says 'unspecified' "
                       "(pass --modality, one per channel)", len(names), ", ".join(names), n_channels)
        names = None
    if not names:
        logger.warning("the data do not say their modality; the manifest's inputs say 'unspecified' (z-score "
                       "normalization): pass --modality (e.g. --modality CT for CT windowing)")
    return names, n_channels


def _network_kwargs(config: dict[str, Any], n_in: int, n_out: int) -> dict[str, Any]:
    from tumorseg_core.models.registry import size_divisor, validate_kwargs

    kwargs = copy.deepcopy(config["kwargs"])
    for key, value in (("in_channels", n_in), ("out_channels", n_out)):
        if kwargs.setdefault(key, value) != value:
            raise InputError(f"kwargs.{key}={kwargs[key]} but the data/labels need {value}; remove it from kwargs")
    try:
        validate_kwargs(config["architecture"], kwargs)
        divisor = size_divisor(config["architecture"], kwargs)
    except ModelPackageError as exc:
        raise InputError(str(exc)) from exc
    patch_zyx = [int(p) for p in config["patch_size"][::-1]]
    if any(p % d for p, d in zip(patch_zyx, divisor)):
        raise InputError(
            f"patch_size {config['patch_size']} must be a multiple of {list(divisor[::-1])} (x, y, z) for "
            f"{config['architecture']} with these kwargs; change --patch-size"
        )
    return kwargs


def open_init_weights(spec: str, pinned: str | None) -> Any:
    """The verified package ``init_weights`` names; InputError if it holds no weights or its
    first network (the one fine-tuning loads) is not the ``pinned`` sha256."""
    from tumorseg_core.modelpkg.package import open_package

    package = open_package(spec)
    if not package.weight_files:
        raise InputError(f"init_weights {spec!r} holds no weights; give a model package with a .safetensors file")
    digest = init_weights_sha256(package)
    if pinned is not None and digest != pinned:
        raise InputError(
            f"init_weights {spec!r} now has other weights ({digest[:12]}...) than this configuration pins "
            f"(init_weights_sha256 {pinned[:12]}...); give the package it was made with, or drop init_weights_sha256"
        )
    return package


def init_weights_sha256(package: Any) -> str:
    """sha256 of a package's first network (what ``init_weights`` loads)."""
    return package.manifest.files[package.weight_files[0].name]


def prepare_data(config: dict[str, Any], workdir: Path, info: dist_utils.DistInfo,
                 progress: Callable[[float, str], None] | None = None, device: str = "cpu") -> RunData:
    """Resolve, split and preprocess the data of ``config``; fill in inputs, labels, kwargs.

    With ``hard_negatives`` set, the mining model segments the training cases on ``device``
    (rank 0 first; the other ranks read its cached results).
    """
    from tumorseg_core.training.augment import augment_config, build_train_transforms

    config = copy.deepcopy(config)
    cache_dir = Path(config["cache_dir"] or workdir / "cache").expanduser().resolve()
    source = dist_utils.main_first(info, lambda: resolve_source(config, cache_dir))
    if len(source.cases) < 2 and not config["val_data"] and (config["val_fraction"] > 0 or config["folds"]):
        raise InputError(f"{len(source.cases)} case(s) are too few to validate; add cases or set val_fraction 0")
    if config["inputs"] is None:
        config["inputs"] = default_inputs(*_modalities(config, source))
    if not config["output"].get("labels"):
        config["output"] = {"type": "softmax", "labels": default_labels(source.labels)}
    values = sorted(int(lab["value"]) for lab in config["output"]["labels"])
    kwargs = _network_kwargs(config, len(config["inputs"]), max(values) + 1)
    config["augment"] = augment_config(config["augment"])

    train, val, description = _split(config, source, cache_dir, info)
    pre = PreprocessConfig(
        spacing_xyz=tuple(float(s) for s in config["spacing"]),
        orientation=config["orientation"],
        normalizations=tuple(inp["normalization"] for inp in config["inputs"]),
        max_label=max(values),
    )
    cached = dist_utils.main_first(info, lambda: cache_cases([*train, *val], pre, cache_dir / "preprocessed", progress))
    train_cached, val_cached = cached[: len(train)], cached[len(train):]
    if config["init_weights"]:
        package = open_init_weights(str(config["init_weights"]), config["init_weights_sha256"])
        config["init_weights_sha256"] = init_weights_sha256(package)
    hard = hard_negative_settings(config["hard_negatives"], config["init_weights"])
    hard_coords = None
    if hard is not None:
        # Every rank opens and checks the model (a bad one fails everywhere, not in a
        # barrier), the ranks mine their share of the cases, then all read all of them.
        package = open_mining_model(hard, pre)
        hard["weights_sha256"] = weight_digests(package)
        mine_hard_negatives(train_cached, hard, package, cache_dir, device, progress if info.is_main else None,
                            share=(info.rank, info.world_size))
        dist_utils.barrier(info)
        hard_coords = mine_hard_negatives(train_cached, hard, package, cache_dir, device)
        if info.is_main:
            log_summary(hard["model"], hard_coords)
    # Normalised (model resolved, weights pinned), so the resume hash sees what mined.
    config["hard_negatives"] = hard
    patch_zyx = tuple(int(p) for p in config["patch_size"][::-1])
    transforms = build_train_transforms(patch_zyx, config["augment"], hard["fraction"] if hard else 0.0)
    length = config["iterations_per_epoch"] * config["batch_size"] * info.world_size
    patches = PatchDataset(train_cached, transforms, length, int(config["seed"]),
                           per_lesion=config["augment"]["fg_sampling"] == "lesion", hard_coords=hard_coords)
    logger.info("data: %s; %d training, %d validation cases", description, len(train), len(val))
    return RunData(config, kwargs, patches, train_cached, val_cached, patch_zyx, description)  # type: ignore[arg-type]
