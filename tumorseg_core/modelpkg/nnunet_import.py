"""Import an nnU-Net v2 trained-model folder as a TumorSeg model package.

A trained-model folder (``nnUNet_results/DatasetXXX_Name/Trainer__Plans__configuration``,
or the zip ``nnUNetv2_export_model_to_zip`` writes, unpacked by the caller) holds
``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_{final,best}.pth``. This module
reads the two JSON files as data, rebuilds the network from the plans through the
allowlists of :mod:`tumorseg_core.models.nnunet_networks` (no class is ever looked up from
a string), reads each fold's weights through the weights-only reader it is given
(``convert.read_checkpoint_with_metadata``: nothing in a checkpoint runs) and writes an
ordinary package: one ``.safetensors`` per fold (an ensemble), the labels or regions of
``dataset.json``, and an ``nnunet`` manifest section holding what nnU-Net's own predictor
needs (preprocessing, resampling, windows, mirror axes; see ``manifest.py``).

``postprocessing.pkl`` (and any other pickle) is never opened: it is reported and ignored.
Cascade configurations (``3d_cascade_fullres``: their input includes a previous stage's
prediction) are refused.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.imaging.segments import NEOPLASM_TERMINOLOGY, auto_color
from tumorseg_core.models.nnunet_networks import CLASS_ARGUMENTS, NETWORK_CLASSES

logger = logging.getLogger(__name__)

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
DEFAULT_CONFIGURATIONS = ("3d_fullres", "3d_lowres", "2d")
MAX_JSON_BYTES = 32 * 1024 * 1024
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# Label names that say "tumor": they get the SNOMED neoplasm terminology.
_TUMOR_WORDS = ("tumor", "tumour", "lesion", "neoplasm", "cancer", "metasta", "enhancing", "necro", "core")
NNUNET_CITATION = (
    "Isensee, F., Jaeger, P. F., Kohl, S. A., Petersen, J., & Maier-Hein, K. H. (2021). nnU-Net: a "
    "self-configuring method for deep learning-based biomedical image segmentation. Nature Methods, 18(2), 203-211."
)
ReadCheckpoint = Callable[[Path], Tuple[Dict[str, Any], Dict[str, Any]]]


# ------------------------------------------------------------------- finding it

def _has_folds(folder: Path) -> bool:
    return any(_FOLD_RE.match(p.name) and any((p / c).is_file() for c in CHECKPOINTS.values())
               for p in folder.iterdir() if p.is_dir())


def find_model_folders(root: Path, depth: int = 3) -> List[Path]:
    """Folders under ``root`` (itself included, ``depth`` levels) holding dataset.json, plans.json and a fold."""
    root = Path(root)
    found = []
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            if (folder / "plans.json").is_file() and (folder / "dataset.json").is_file() and _has_folds(folder):
                found.append(folder)
            nxt.extend(p for p in sorted(folder.iterdir()) if p.is_dir() and not p.is_symlink())
        level = nxt
    return found


def zip_holds_nnunet_model(path: Path) -> bool:
    """Whether a zip lists a plans.json, a dataset.json and a fold checkpoint (names only; nothing is extracted)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n.replace("\\", "/") for n in zf.namelist()]
    except (zipfile.BadZipFile, OSError):
        return False
    tails = {n.rsplit("/", 1)[-1] for n in names}
    has_fold = any(re.search(r"(^|/)fold_(\d+|all)/checkpoint_(final|best)\.pth$", n) for n in names)
    return "plans.json" in tails and "dataset.json" in tails and has_fold


def _configuration_of(folder: Path) -> str:
    """``Trainer__Plans__configuration`` -> configuration (the folder nnU-Net names)."""
    parts = folder.name.split("__")
    return parts[2] if len(parts) == 3 else ""


def pick_folder(root: Path, configuration: Optional[str]) -> Path:
    """The trained-model folder to import: the one for ``configuration``, else 3d_fullres, 3d_lowres, 2d."""
    folders = find_model_folders(root)
    if not folders:
        raise ModelPackageError(f"{root.name} holds no nnU-Net trained model (dataset.json, plans.json, fold_N/)")
    by_config = {_configuration_of(f): f for f in folders}
    if configuration is not None:
        if configuration not in by_config and len(folders) == 1:
            return folders[0]  # a renamed folder: the checkpoint says which configuration it is
        if configuration not in by_config:
            raise ModelPackageError(f"no {configuration} model in {root.name}; it has {', '.join(sorted(by_config))}")
        return by_config[configuration]
    if len(folders) == 1:
        return folders[0]
    for name in DEFAULT_CONFIGURATIONS:
        if name in by_config:
            logger.info("%s holds %s; importing %s (choose with --configuration)", root.name,
                        ", ".join(sorted(by_config)), name)
            return by_config[name]
    raise ModelPackageError(f"{root.name} holds several models ({', '.join(sorted(by_config))}); choose one")


def _read_json(path: Path) -> Dict[str, Any]:
    if path.is_symlink() or path.stat().st_size > MAX_JSON_BYTES:
        raise ModelPackageError(f"{path.name} is a link or larger than {MAX_JSON_BYTES} bytes; refusing it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelPackageError(f"{path.name} is not valid JSON ({exc}); re-export the model") from exc
    if not isinstance(data, dict):
        raise ModelPackageError(f"{path.name} must hold a JSON object")
    return data


def _warn_pickles(folder: Path) -> None:
    for parent in (folder, folder.parent):
        for pkl in sorted(parent.glob("**/*.pkl")) if parent == folder else sorted(parent.glob("*.pkl")):
            logger.warning(
                "ignoring %s: TumorSeg never unpickles files (a pickle can run code); nnU-Net's optional "
                "postprocessing it describes (e.g. keeping the largest component) is not applied",
                pkl.relative_to(folder.parent))


# ------------------------------------------------------------------- the plans

def resolve_configuration(plans: Dict[str, Any], name: str) -> Dict[str, Any]:
    """A configuration of the plans with its ``inherits_from`` chain applied."""
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs:
        raise ModelPackageError(f"plans.json has no configuration {name!r}")
    chain: List[str] = []
    current: Optional[str] = name
    while current is not None:
        if current in chain or current not in configs:
            raise ModelPackageError(f"plans.json configuration {name!r} inherits from a missing or circular one")
        chain.append(current)
        current = configs[current].get("inherits_from")
    merged: Dict[str, Any] = {}
    for link in reversed(chain):
        merged.update(configs[link])
    if merged.get("previous_stage") or "cascade" in name:
        raise ModelPackageError(
            f"configuration {name!r} is a cascade stage (it needs the previous stage's prediction as input); "
            "import the 3d_lowres or 3d_fullres model instead")
    return merged


def _plain(value: Any) -> Any:
    """JSON data with tuples as lists."""
    return json.loads(json.dumps(value))


def network_spec(config: Dict[str, Any], in_channels: int, out_channels: int) -> Tuple[str, Dict[str, Any]]:
    """(registry architecture, JSON kwargs) from a configuration's ``architecture``."""
    arch = config.get("architecture")
    if not isinstance(arch, dict) or "network_class_name" not in arch:
        raise ModelPackageError("plans.json has no 'architecture' (plans of nnU-Net before 2.4 are not supported; "
                                "re-plan the dataset with a current nnU-Net)")
    class_name = arch["network_class_name"]
    registry_name = NETWORK_CLASSES.get(class_name) if isinstance(class_name, str) else None
    if registry_name is None:
        raise ModelPackageError(f"network {class_name!r} is not supported (supported: {', '.join(NETWORK_CLASSES)})")
    requires = arch.get("_kw_requires_import") or []
    unknown = [k for k in requires if k not in CLASS_ARGUMENTS]
    if unknown:
        raise ModelPackageError(f"plans.json asks to import classes for {', '.join(map(str, unknown))}; "
                                f"only {', '.join(CLASS_ARGUMENTS)} may name classes")
    kwargs = _plain(arch.get("arch_kwargs") or {})
    if not isinstance(kwargs, dict):
        raise ModelPackageError("plans.json arch_kwargs must be a JSON object")
    for key in ("in_channels", "out_channels", "input_channels", "num_classes", "deep_supervision"):
        kwargs.pop(key, None)
    return registry_name, {"in_channels": in_channels, "out_channels": out_channels, **kwargs}


def _normalization(config: Dict[str, Any], plans: Dict[str, Any], channels: int) -> List[Dict[str, Any]]:
    schemes = config.get("normalization_schemes") or []
    masks = config.get("use_mask_for_norm") or [False] * len(schemes)
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    if len(schemes) != channels or len(masks) != channels:
        raise ModelPackageError(f"plans.json lists {len(schemes)} normalization schemes for {channels} input channels")
    out = []
    for c, (scheme, mask) in enumerate(zip(schemes, masks)):
        entry = props.get(str(c)) or {}
        keep = {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.append({"scheme": scheme, "use_mask_for_norm": bool(mask), "intensity_properties": keep})
    return out


def _resampling(config: Dict[str, Any], key: str, default_order: int) -> Dict[str, Any]:
    fn = config.get(key)
    if fn not in (None, "resample_data_or_seg_to_shape"):
        raise ModelPackageError(f"plans.json {key} {fn!r} is not supported (only nnU-Net's resample_data_or_seg_to_shape)")
    kwargs = config.get(f"{key}_kwargs") or {}
    return {"order": int(kwargs.get("order", default_order)), "order_z": int(kwargs.get("order_z", 0)),
            "force_separate_z": kwargs.get("force_separate_z")}


# ----------------------------------------------------------------- the labels

def _segment(value: int, name: str) -> Dict[str, Any]:
    seg: Dict[str, Any] = {"value": int(value), "name": name, "color": [round(c, 4) for c in auto_color(int(value))]}
    if any(word in name.lower() for word in _TUMOR_WORDS):
        seg["terminology"] = json.loads(json.dumps(NEOPLASM_TERMINOLOGY))
    return seg


def output_spec(dataset: Dict[str, Any]) -> Tuple[Dict[str, Any], int, Optional[List[int]]]:
    """(manifest ``output``, network output channels, regions_class_order or None) from dataset.json."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelPackageError("dataset.json has no 'labels'")
    entries = [(str(n), v) for n, v in labels.items() if str(n).lower() != "ignore"]
    regions = any(isinstance(v, (list, tuple)) for _, v in entries)
    if regions:
        order = dataset.get("regions_class_order")
        foreground = [(n, v) for n, v in entries if not (isinstance(v, int) and v == 0) and v != [0]]
        if not isinstance(order, list) or len(order) != len(foreground):
            raise ModelPackageError("dataset.json has regions but no regions_class_order with one value per region")
        segs = [_segment(int(value), name) for (name, _), value in zip(foreground, order)]
        return {"type": "sigmoid", "regions": segs}, len(foreground), [int(v) for v in order]
    values = {}
    for name, value in entries:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelPackageError(f"dataset.json label {name!r} has value {value!r}; expected an integer")
        values[value] = name
    if sorted(values) != list(range(len(values))):
        raise ModelPackageError("dataset.json labels must be consecutive integers 0..N-1")
    segs = [_segment(v, values[v]) for v in sorted(values) if v != 0]
    if not segs:
        raise ModelPackageError("dataset.json lists no foreground label")
    return {"type": "softmax", "labels": segs}, len(values), None


def _channel_names(dataset: Dict[str, Any]) -> List[str]:
    names = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(names, dict) or not names:
        raise ModelPackageError("dataset.json has no 'channel_names'")
    return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]


# ---------------------------------------------------------------- checkpoints

def _fold_folders(folder: Path, folds: Optional[Sequence[Union[int, str]]], checkpoint: str) -> List[Path]:
    if checkpoint not in CHECKPOINTS:
        raise ModelPackageError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    name = CHECKPOINTS[checkpoint]
    if folds is None:
        found = sorted((p for p in folder.iterdir() if p.is_dir() and _FOLD_RE.match(p.name) and (p / name).is_file()),
                       key=lambda p: (p.name == "fold_all", int(p.name[5:]) if p.name[5:].isdigit() else 0))
        if not found:
            raise ModelPackageError(f"{folder.name} has no fold_N/{name}"
                                    + ("; the exported zip holds no checkpoint_best.pth, use --checkpoint final"
                                       if checkpoint == "best" else ""))
        return found
    out = []
    for fold in folds:
        path = folder / f"fold_{fold}"
        if not (path / name).is_file():
            raise ModelPackageError(f"{folder.name} has no fold_{fold}/{name}")
        out.append(path)
    return out


def _mirror_axes(metadata: Dict[str, Any], dims: int) -> Optional[List[int]]:
    axes = metadata.get("inference_allowed_mirroring_axes", list(range(dims)))
    if axes is None:
        return None
    try:
        values = [int(a) for a in axes]
    except (TypeError, ValueError) as exc:
        raise ModelPackageError(f"inference_allowed_mirroring_axes {axes!r} is not a list of axes") from exc
    return values


def _configuration_in_checkpoint(metadata: Dict[str, Any]) -> Optional[str]:
    init_args = metadata.get("init_args")
    value = init_args.get("configuration") if isinstance(init_args, dict) else None
    return value if isinstance(value, str) else None


# ------------------------------------------------------------------- import

def import_nnunet(
    root: Path,
    out_dir: Union[str, Path],
    read_checkpoint: ReadCheckpoint,
    *,
    folds: Optional[Sequence[Union[int, str]]] = None,
    checkpoint: str = "final",
    configuration: Optional[str] = None,
    readme: Optional[str] = None,
    overwrite: bool = False,
    source_name: Optional[str] = None,
    **manifest_fields: Any,
) -> Path:
    """Write the package for the nnU-Net model in ``root``; return its folder.

    ``read_checkpoint(path) -> (state dict, other entries)`` must be the weights-only reader.
    ``folds``: which ``fold_N`` (default: all that have the checkpoint); ``checkpoint``:
    ``final`` or ``best``; ``configuration``: which model when ``root`` holds several.
    ``manifest_fields`` override the generated ones (``name``, ``description``, ``version`` ...).
    """
    from tumorseg_core.modelpkg.package import write_package

    folder = pick_folder(Path(root), configuration)
    dataset = _read_json(folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    _warn_pickles(folder)
    fold_dirs = _fold_folders(folder, folds, checkpoint)
    states, metas = [], []
    for fold_dir in fold_dirs:
        state, meta = read_checkpoint(fold_dir / CHECKPOINTS[checkpoint])
        states.append(state)
        metas.append(meta)
    config_name = _configuration_in_checkpoint(metas[0]) or configuration or _configuration_of(folder)
    if not config_name:
        raise ModelPackageError(f"cannot tell which configuration {folder.name} is; pass --configuration")
    config = resolve_configuration(plans, config_name)
    trainer = metas[0].get("trainer_name")
    logger.info("importing nnU-Net %s (%s, trainer %s), folds %s", folder.name, config_name, trainer,
                ", ".join(p.name[5:] for p in fold_dirs))

    channels = _channel_names(dataset)
    output, num_heads, regions = output_spec(dataset)
    architecture, kwargs = network_spec(config, len(channels), num_heads)
    spacing = [float(v) for v in config["spacing"]]
    patch = [int(v) for v in config["patch_size"]]
    dims = len(patch)
    mirror = _mirror_axes(metas[0], dims)
    for meta in metas[1:]:
        if _mirror_axes(meta, dims) != mirror:
            raise ModelPackageError("the folds disagree on inference_allowed_mirroring_axes; import them separately")
    if dims == 2:
        median = plans.get("original_median_spacing_after_transp") or [1.0]
        spacing_xyz = [spacing[1], spacing[0], float(median[0])]
        patch_xyz = [patch[1], patch[0], 1]
    else:
        spacing_xyz, patch_xyz = spacing[::-1], patch[::-1]
    section = {
        "configuration": config_name,
        "transpose_forward": [int(v) for v in plans.get("transpose_forward", [0, 1, 2])],
        "transpose_backward": [int(v) for v in plans.get("transpose_backward", [0, 1, 2])],
        "spacing": spacing,
        "patch_size": patch,
        "normalization": _normalization(config, plans, len(channels)),
        "resampling_data": _resampling(config, "resampling_fn_data", 3),
        "resampling_probabilities": _resampling(config, "resampling_fn_probabilities", 1),
        "anisotropy_threshold": 3.0,
        "tile_step_size": 0.5,
        "mirror_axes": mirror,
        "regions_class_order": regions,
    }
    licence = dataset.get("licence") or dataset.get("license") or "unknown"
    dataset_name = str(plans.get("dataset_name") or dataset.get("name") or folder.parent.name)
    default_name = _NAME_CHARS.sub("-", f"{dataset_name}-{config_name}").strip("._-")[:64] or "nnunet-model"
    manifest: Dict[str, Any] = {
        "name": default_name,
        "version": "1.0.0",
        "license": str(licence),
        "description": (f"nnU-Net v2 {config_name} model of {dataset_name} ({len(fold_dirs)} fold(s), "
                        f"{CHECKPOINTS[checkpoint]}), imported from {source_name or folder.name}"),
        "architecture": architecture,
        "kwargs": kwargs,
        "inputs": [{"modality": name, "normalization": {"type": "none"}} for name in channels],
        "spacing": spacing_xyz,
        "orientation": None,
        "patch_size": patch_xyz,
        "output": output,
        "inference": {"overlap": 1.0 - section["tile_step_size"], "tta": mirror is not None},
        "format_version": 3,
        "nnunet": section,
    }
    manifest.update({k: v for k, v in manifest_fields.items() if v is not None})
    if readme is None:
        readme = _readme(manifest, dataset, folder, fold_dirs, checkpoint, trainer)
    return write_package(out_dir, manifest, states, readme=readme, overwrite=overwrite)


def _readme(manifest: Dict[str, Any], dataset: Dict[str, Any], folder: Path, fold_dirs: List[Path],
            checkpoint: str, trainer: Any) -> str:
    lines = [
        f"# {manifest['name']}", "", manifest["description"], "",
        f"- nnU-Net folder: `{folder.parent.name}/{folder.name}` (trainer `{trainer}`)",
        f"- folds: {', '.join(p.name[5:] for p in fold_dirs)} ({CHECKPOINTS[checkpoint]}); ensemble: logits averaged",
        f"- inputs: {', '.join(i['modality'] for i in manifest['inputs'])}",
        f"- licence (dataset.json): {manifest['license']}",
    ]
    reference = dataset.get("reference") or dataset.get("citation")
    if reference:
        lines.append(f"- reference (dataset.json): {reference}")
    lines += [
        "", "Runs nnU-Net's own preprocessing, sliding window (Gaussian, step 0.5, mirroring) and export, "
        "reproduced by TumorSeg. postprocessing.pkl is not applied (TumorSeg never unpickles files).", "",
        "Please cite nnU-Net when you use this model:", "", NNUNET_CITATION, "",
    ]
    return "\n".join(lines)
