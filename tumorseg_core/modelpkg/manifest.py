"""The model package manifest (``manifest.json``): reading, validation, typed accessors.

The format is described in ``docs/core_interfaces.md``. Validation happens once, in
:class:`Manifest`'s constructor; every problem raises ModelPackageError naming the
bad field. This module imports neither torch nor MONAI (Slicer's UI process reads
manifests to list models).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.imaging.preprocess import NORMALIZATION_TYPES
from tumorseg_core.imaging.segments import SegmentInfo
from tumorseg_core.modelpkg.int8_section import Int8Spec, check_int8_section
from tumorseg_core.modelpkg.monai_section import MonaiSection, check_monai_section
from tumorseg_core.models.registry import ARCHITECTURES, effective_kwargs, size_divisor

logger = logging.getLogger(__name__)

# The newest format this reader knows: 2 = a 'cascade' section, 3 = an 'nnunet' section,
# 4 = a 'monai' section, 5 = weight files that store a tensor shared under several
# state-dict names once (package.drop_aliases; a reader of 4 would report missing weights).
# Older readers must refuse each of them.
#: The format of a package whose weight files store shared tensors once (package.write_package).
ALIASES_DROPPED_FORMAT = 5
FORMAT_VERSION = ALIASES_DROPPED_FORMAT
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1024 * 1024
REQUIRED_KEYS = (
    "name", "version", "license", "description", "architecture", "kwargs", "inputs",
    "spacing", "orientation", "patch_size", "output", "files",
)
OPTIONAL_KEYS = ("format_version", "postprocessing", "preprocessing", "inference", "metrics", "cascade", "nnunet",
                 "monai", "validated", "int8")
#: ``inference`` keys that become Predictor settings (the model's own defaults).
INFERENCE_SETTINGS = ("overlap", "tta", "window_batch", "amp", "sigma_scale")
OUTPUT_TYPES = ("softmax", "sigmoid")
# A package name becomes a folder name when installed, so keep it filesystem-safe.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_AXIS_PAIRS = ({"L", "R"}, {"P", "A"}, {"S", "I"})


def _fail(field: str, problem: str) -> ModelPackageError:
    return ModelPackageError(f"manifest field '{field}' {problem}; fix manifest.json")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _triple(value: Any, field: str, kind: type) -> Tuple[Any, Any, Any]:
    if not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) and v > 0 for v in value):
        raise _fail(field, "must be a list of 3 positive numbers (x, y, z)")
    if kind is int and not all(float(v).is_integer() for v in value):
        raise _fail(field, "must be 3 whole numbers of voxels (x, y, z)")
    return tuple(kind(v) for v in value)  # type: ignore[return-value]


def check_file_name(name: Any, field: str = "files") -> str:
    """A package file name: a plain file name (no folders, no traversal), not manifest.json."""
    if (
        not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
        or ":" in name or "\x00" in name or name.strip() != name or name == MANIFEST_NAME
    ):
        raise _fail(field, f"has an invalid file name {name!r} (plain file names only)")
    return name


def check_files_dict(files: Any) -> Dict[str, str]:
    """Validate the ``files`` mapping ``{file name: sha256 hex}``; return a copy."""
    if not isinstance(files, dict) or not files:
        raise _fail("files", "must map every package file to its sha256")
    out = {}
    for name, digest in files.items():
        check_file_name(name)
        if not isinstance(digest, str) or not SHA256_RE.match(digest):
            raise _fail("files", f"has no valid lowercase sha256 for {name!r}")
        out[name] = digest
    if not any(n.endswith(".safetensors") for n in out):
        raise _fail("files", "lists no .safetensors weights")
    return out


def read_manifest_json(path: Path) -> Dict[str, Any]:
    """Read ``manifest.json`` as JSON only, capped at 1 MB; refuse NaN/Infinity and symlinks."""
    if path.is_symlink() or not path.is_file():
        raise ModelPackageError(f"no manifest.json in {path.parent}; a model package needs one")
    with open(path, "rb") as fh:
        return parse_manifest_json(fh.read(MAX_MANIFEST_BYTES + 1), str(path))


def parse_manifest_json(raw: bytes, where: str) -> Dict[str, Any]:
    """``manifest.json``'s bytes (read from ``where``) as a JSON object: at most 1 MB, no NaN/Infinity."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ModelPackageError(f"{where} is larger than 1 MB; a manifest is a small JSON file")

    def _no_constants(token: str) -> Any:
        raise ValueError(f"{token} is not valid JSON")

    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise ModelPackageError(f"{where} is not valid JSON ({str(exc).splitlines()[0]}); fix or replace it") from exc
    if not isinstance(data, dict):
        raise ModelPackageError(f"{where} must hold a JSON object")
    return data


def _check_terminology(term: Any, field: str) -> None:
    if term is None:
        return
    if not isinstance(term, dict) or "category" not in term or "type" not in term:
        raise _fail(field, "must be an object with 'category' and 'type' (and optional 'modifier')")
    for key, code in term.items():
        if key not in ("category", "type", "modifier"):
            raise _fail(field, f"has unknown key {key!r}")
        if not (isinstance(code, list) and len(code) == 3 and all(isinstance(c, str) and c for c in code)):
            raise _fail(f"{field}.{key}", "must be [scheme, code, meaning] strings")


def _check_labels(labels: Any, field: str) -> List[Dict[str, Any]]:
    if not isinstance(labels, list) or not labels:
        raise _fail(field, "must be a non-empty list of labels")
    seen = set()
    for i, lab in enumerate(labels):
        where = f"{field}[{i}]"
        if not isinstance(lab, dict):
            raise _fail(where, "must be an object with value, name, color, terminology")
        value = lab.get("value")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 255:
            raise _fail(f"{where}.value", "must be an integer 1..255")
        if value in seen:
            raise _fail(f"{where}.value", f"repeats label value {value}")
        seen.add(value)
        if not isinstance(lab.get("name"), str) or not lab["name"].strip():
            raise _fail(f"{where}.name", "must be a non-empty string")
        color = lab.get("color")
        if not (isinstance(color, list) and len(color) == 3 and all(_is_number(c) and 0 <= c <= 1 for c in color)):
            raise _fail(f"{where}.color", "must be 3 numbers in 0..1 (RGB)")
        _check_terminology(lab.get("terminology"), f"{where}.terminology")
    return labels


def _output_key(output: Dict[str, Any]) -> str:
    """Where an output's segments are listed: ``labels`` (softmax) or ``regions`` (sigmoid; ``labels``
    is accepted for sigmoid outputs written before ``regions`` existed)."""
    if output.get("type") == "sigmoid" and "regions" in output:
        return "regions"
    return "labels"


def _check_inputs(inputs: Any) -> None:
    if not isinstance(inputs, list) or not inputs:
        raise _fail("inputs", "must be a non-empty list, one entry per input channel")
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("modality"), str) or not item["modality"].strip():
            raise _fail(where, "must be an object with a non-empty 'modality' string")
        norm = item.get("normalization")
        if not isinstance(norm, dict) or norm.get("type") not in NORMALIZATION_TYPES:
            raise _fail(f"{where}.normalization", f"must be an object with 'type' one of {', '.join(NORMALIZATION_TYPES)}")
        if norm["type"] == "ct":
            window = norm.get("window")
            if not (isinstance(window, list) and len(window) == 2 and all(map(_is_number, window)) and window[0] < window[1]):
                raise _fail(f"{where}.normalization.window", "must be [lo, hi] with lo < hi")
        if "clip_percentiles" in norm and norm["clip_percentiles"] is not None:
            cp = norm["clip_percentiles"]
            if not (isinstance(cp, list) and len(cp) == 2 and all(map(_is_number, cp)) and 0 <= cp[0] < cp[1] <= 100):
                raise _fail(f"{where}.normalization.clip_percentiles", "must be [lo, hi] with 0 <= lo < hi <= 100")
        if norm.get("foreground") not in (None, "otsu"):
            raise _fail(f"{where}.normalization.foreground", "must be \"otsu\" or absent")
        if "nonzero" in norm and not isinstance(norm["nonzero"], bool):
            raise _fail(f"{where}.normalization.nonzero", "must be true or false")


def _check_orientation(orientation: Any) -> Optional[str]:
    if orientation is None:
        return None
    if not isinstance(orientation, str) or len(orientation) != 3:
        raise _fail("orientation", "must be a 3-letter code such as \"LPS\" or null")
    letters = orientation.upper()
    if any(c not in "LRPASI" for c in letters) or any(sum(c in pair for c in letters) != 1 for pair in _AXIS_PAIRS):
        raise _fail("orientation", "must use one of L/R, P/A and S/I each, e.g. \"LPS\"")
    return letters


def _check_optional(data: Dict[str, Any]) -> None:
    post = data.get("postprocessing")
    if post is not None:
        if not isinstance(post, list):
            raise _fail("postprocessing", "must be a list of rules")
        for i, rule in enumerate(post):
            if not isinstance(rule, dict) or not isinstance(rule.get("label"), int) or isinstance(rule.get("label"), bool):
                raise _fail(f"postprocessing[{i}]", "must be an object with an integer 'label'")
            mv = rule.get("min_volume_mm3")
            if mv is not None and not (_is_number(mv) and mv >= 0):
                raise _fail(f"postprocessing[{i}].min_volume_mm3", "must be a number >= 0")
    for key in ("preprocessing", "inference", "metrics"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise _fail(key, "must be a JSON object or null")
    if "validated" in data and not isinstance(data["validated"], bool):
        raise _fail("validated", "must be true or false (false: validation Dice below the trainer's threshold)")
    overlap = (data.get("inference") or {}).get("overlap")
    if overlap is not None and not (_is_number(overlap) and 0 <= overlap < 1):
        raise _fail("inference.overlap", "must be a number in [0, 1)")


# ------------------------------------------------------------- the 'cascade' section
# The optional ``cascade`` section of a model manifest: a dedicated coarse network.
#
# The ROI cascade (:mod:`tumorseg_core.inference.cascade`) first runs a network on the
# model-grid volume average-pooled by ``factor``; full-resolution windows then run only
# where that pass sees foreground. Without this section the package's own network runs the
# coarse pass. With it, a small network trained for the coarse scale (for instance on the
# full model's own labels, ``benchmarks/make_distillation_set.py``) does::
#
#     "cascade": {
#       "weights": "coarse.safetensors",      # a file of the package ("files" lists its sha256)
#       "architecture": "unet3d",
#       "kwargs": {"features": [8, 16, 32], "in_channels": 1, "out_channels": 2},
#       "patch_size": [32, 32, 32],           # x y z voxels of the coarse grid
#       "factor": 2.0,                        # coarse spacing / model spacing (> 1)
#       "threshold": 0.1,                     # foreground probability that makes a candidate
#       "margin_mm": 10.0,                    # candidates grow by this much
#       "input_clip": [-2.0, 4.0],            # optional: clip the pooled volume first (null: don't)
#       "default": true                       # run the cascade unless the user says --no-cascade
#     }
#
# The coarse network takes the same input channels (the package's normalized volume, pooled,
# then clipped to ``input_clip``) and has the package's output type; its weights are never
# part of the package's ensemble. ``input_clip`` exists because a small network trained on
# z-scored CT (air at -3..-6 next to soft tissue within +-1) learned nothing of the tissue
# contrast until the air was clipped away (benchmarks/README.md).

CASCADE_DEFAULTS = {"factor": 2.0, "threshold": 0.1, "margin_mm": 10.0, "input_clip": None, "default": True}
_KEYS = ("weights", "architecture", "kwargs", "patch_size", *CASCADE_DEFAULTS)


@dataclass(frozen=True)
class CascadeSpec:
    """A validated ``cascade`` section (sizes x, y, z as in the manifest)."""

    weights: str
    architecture: str
    kwargs: Dict[str, Any]
    patch_size_xyz: Tuple[int, int, int]
    factor: float
    threshold: float
    margin_mm: float
    default: bool
    input_clip: Optional[Tuple[float, float]] = None

    @property
    def patch_size_zyx(self) -> Tuple[int, int, int]:
        return self.patch_size_xyz[::-1]  # type: ignore[return-value]


def check_cascade(section: Any, files: Mapping[str, str], in_channels: int, out_channels: Any) -> CascadeSpec:
    """Validate ``section`` against the package's ``files`` and channels; raise ModelPackageError naming the field."""
    if not isinstance(section, dict):
        raise _fail("cascade", "must be a JSON object")
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise _fail(f"cascade.{unknown[0]}", f"is unknown (known: {', '.join(_KEYS)})")
    values = {**CASCADE_DEFAULTS, **section}
    weights = values.get("weights")
    if not isinstance(weights, str) or not weights.endswith(".safetensors") or weights not in files:
        raise _fail("cascade.weights", "must name a .safetensors file that 'files' lists")
    if not any(name.endswith(".safetensors") and name != weights for name in files):
        raise _fail("cascade.weights", "must not be the package's only network (the full-resolution weights are missing)")
    architecture = values.get("architecture")
    if architecture not in ARCHITECTURES:
        raise _fail("cascade.architecture", f"must be a registered architecture ({', '.join(sorted(ARCHITECTURES))})")
    kwargs = values.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise _fail("cascade.kwargs", "must be a JSON object")
    full = effective_kwargs(architecture, kwargs)
    if full.get("in_channels", in_channels) != in_channels:
        raise _fail("cascade.kwargs.in_channels", f"must equal the package's {in_channels} input(s)")
    if out_channels is not None and full.get("out_channels", out_channels) != out_channels:
        raise _fail("cascade.kwargs.out_channels", f"must equal the package network's {out_channels} outputs")
    patch = values.get("patch_size")
    if not isinstance(patch, list) or len(patch) != 3 or not all(
            isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch):
        raise _fail("cascade.patch_size", "must be three positive integers (x, y, z)")
    divisor = size_divisor(architecture, kwargs)
    if any(p % d for p, d in zip(patch[::-1], divisor)):
        raise _fail("cascade.patch_size", f"must be a multiple of {list(divisor[::-1])} (x, y, z) for {architecture}")
    if not _is_number(values["factor"]) or not 1.0 < values["factor"] <= 8.0:
        raise _fail("cascade.factor", "must be a number above 1 and at most 8")
    if not _is_number(values["threshold"]) or not 0.0 < values["threshold"] < 1.0:
        raise _fail("cascade.threshold", "must be a probability between 0 and 1")
    if not _is_number(values["margin_mm"]) or not 0.0 <= values["margin_mm"] <= 200.0:
        raise _fail("cascade.margin_mm", "must be a number of millimetres from 0 to 200")
    if not isinstance(values["default"], bool):
        raise _fail("cascade.default", "must be true or false")
    clip = values["input_clip"]
    if clip is not None and not (isinstance(clip, list) and len(clip) == 2 and all(_is_number(v) for v in clip)
                                 and all(math.isfinite(v) for v in clip) and clip[0] < clip[1]):
        raise _fail("cascade.input_clip", "must be null or [low, high] with finite low < high")
    return CascadeSpec(weights, architecture, dict(kwargs), tuple(patch), float(values["factor"]),  # type: ignore[arg-type]
                       float(values["threshold"]), float(values["margin_mm"]), values["default"],
                       None if clip is None else (float(clip[0]), float(clip[1])))


# -------------------------------------------------------------- the 'nnunet' section
# An imported nnU-Net v2 model (``modelpkg/nnunet_import.py``) runs nnU-Net's own pipeline
# (``imaging/nnunet_preprocess.py``, ``inference/nnunet_windows.py``) instead of TumorSeg's
# resampling, normalization and windows. The section holds exactly what the plans say
# (array axes are nnU-Net's, after ``transpose_forward``)::
#
#     "nnunet": {
#       "configuration": "3d_fullres",
#       "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
#       "spacing": [3.0, 0.8, 0.8],             # target spacing, array order (2 values for 2d)
#       "patch_size": [12, 28, 24],             # array order (2 values for 2d)
#       "normalization": [{"scheme": "ZScoreNormalization", "use_mask_for_norm": true,
#                          "intensity_properties": {"mean": ..., "std": ..., "percentile_00_5": ...,
#                                                   "percentile_99_5": ...}}],   # one per input
#       "resampling_data": {"order": 3, "order_z": 0, "force_separate_z": null},
#       "resampling_probabilities": {"order": 1, "order_z": 0, "force_separate_z": null},
#       "anisotropy_threshold": 3.0,
#       "tile_step_size": 0.5,
#       "mirror_axes": [0, 1, 2],              # the checkpoint's inference_allowed_mirroring_axes
#       "regions_class_order": null            # region-based (sigmoid) models: the paint order
#     }
#
# With it the manifest's ``spacing`` and ``patch_size`` are these, reversed (x, y, z of the
# network's frame), for display and the architecture's size check; ``orientation`` is null.

NNUNET_NORMALIZATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                         "RGBTo01Normalization")
_NNUNET_KEYS = ("configuration", "transpose_forward", "transpose_backward", "spacing", "patch_size", "normalization",
                "resampling_data", "resampling_probabilities", "anisotropy_threshold", "tile_step_size",
                "mirror_axes", "regions_class_order")
_CT_PROPERTIES = ("mean", "std", "percentile_00_5", "percentile_99_5")


def _check_resampling(spec: Any, field: str) -> None:
    if not isinstance(spec, dict) or set(spec) - {"order", "order_z", "force_separate_z"}:
        raise _fail(field, "must be an object with order, order_z and force_separate_z")
    for key in ("order", "order_z"):
        v = spec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 5:
            raise _fail(f"{field}.{key}", "must be a spline order 0..5")
    if spec.get("force_separate_z") not in (None, True, False):
        raise _fail(f"{field}.force_separate_z", "must be true, false or null")


def check_nnunet(section: Any, in_channels: int, out_channels: Any, output: Dict[str, Any]) -> Dict[str, Any]:
    """Validate an ``nnunet`` section; return a copy. Raises ModelPackageError naming the field."""
    if not isinstance(section, dict):
        raise _fail("nnunet", "must be a JSON object")
    unknown = sorted(set(section) - set(_NNUNET_KEYS))
    missing = [k for k in _NNUNET_KEYS if k not in section]
    if unknown:
        raise _fail(f"nnunet.{unknown[0]}", f"is unknown (known: {', '.join(_NNUNET_KEYS)})")
    if missing:
        raise _fail(f"nnunet.{missing[0]}", "is missing")
    if not isinstance(section["configuration"], str) or not section["configuration"].strip():
        raise _fail("nnunet.configuration", "must be a non-empty string")
    for key in ("transpose_forward", "transpose_backward"):
        perm = section[key]
        if not isinstance(perm, list) or sorted(perm) != [0, 1, 2] or any(isinstance(v, bool) for v in perm):
            raise _fail(f"nnunet.{key}", "must be a permutation of [0, 1, 2]")
    fwd, bwd = section["transpose_forward"], section["transpose_backward"]
    if [fwd[i] for i in bwd] != [0, 1, 2]:
        raise _fail("nnunet.transpose_backward", "must undo transpose_forward")
    spacing, patch = section["spacing"], section["patch_size"]
    if not (isinstance(spacing, list) and len(spacing) in (2, 3) and all(_is_number(v) and v > 0 for v in spacing)):
        raise _fail("nnunet.spacing", "must be 2 or 3 positive numbers")
    if not (isinstance(patch, list) and len(patch) == len(spacing)
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in patch)):
        raise _fail("nnunet.patch_size", "must be as many positive integers as nnunet.spacing has")
    norms = section["normalization"]
    if not isinstance(norms, list) or len(norms) != in_channels:
        raise _fail("nnunet.normalization", f"must list one scheme per input ({in_channels})")
    for i, norm in enumerate(norms):
        where = f"nnunet.normalization[{i}]"
        if not isinstance(norm, dict) or norm.get("scheme") not in NNUNET_NORMALIZATIONS:
            raise _fail(f"{where}.scheme", f"must be one of {', '.join(NNUNET_NORMALIZATIONS)}")
        if not isinstance(norm.get("use_mask_for_norm", False), bool):
            raise _fail(f"{where}.use_mask_for_norm", "must be true or false")
        props = norm.get("intensity_properties") or {}
        if not isinstance(props, dict) or not all(_is_number(v) for v in props.values()):
            raise _fail(f"{where}.intensity_properties", "must map names to numbers")
        if norm["scheme"] == "CTNormalization" and any(k not in props for k in _CT_PROPERTIES):
            raise _fail(f"{where}.intensity_properties", f"must give {', '.join(_CT_PROPERTIES)} for CTNormalization")
    _check_resampling(section["resampling_data"], "nnunet.resampling_data")
    _check_resampling(section["resampling_probabilities"], "nnunet.resampling_probabilities")
    if not _is_number(section["anisotropy_threshold"]) or section["anisotropy_threshold"] <= 0:
        raise _fail("nnunet.anisotropy_threshold", "must be a positive number")
    step = section["tile_step_size"]
    if not _is_number(step) or not 0 < step <= 1:
        raise _fail("nnunet.tile_step_size", "must be a number in (0, 1]")
    axes = section["mirror_axes"]
    if axes is not None and not (isinstance(axes, list) and len(set(axes)) == len(axes) and all(
            isinstance(a, int) and not isinstance(a, bool) and 0 <= a < len(patch) for a in axes)):
        raise _fail("nnunet.mirror_axes", f"must be null or distinct axes 0..{len(patch) - 1}")
    regions = section["regions_class_order"]
    if (regions is not None) != (output.get("type") == "sigmoid"):
        raise _fail("nnunet.regions_class_order", "must be given exactly for sigmoid (region-based) outputs")
    if regions is not None:
        values = [r["value"] for r in output.get("regions") or output.get("labels") or []]
        if regions != values:
            raise _fail("nnunet.regions_class_order", "must equal the output regions' values, in order")
        if isinstance(out_channels, int) and len(regions) != out_channels:
            raise _fail("nnunet.regions_class_order", f"must have one value per network output ({out_channels})")
    return json.loads(json.dumps(section))


class Manifest:
    """A validated ``manifest.json``.

    ``Manifest(data)`` checks every field (raising ModelPackageError naming the bad
    one) and keeps a private deep copy; accessors return copies or immutable values.
    """

    def __init__(self, data: Dict[str, Any]) -> None:
        if not isinstance(data, dict):
            raise ModelPackageError("the manifest must be a JSON object")
        try:  # round trip through strict JSON: no NaN/Infinity, no non-JSON types, plain lists
            data = json.loads(json.dumps(data, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ModelPackageError(f"the manifest is not plain JSON ({exc}); use finite numbers, strings, lists, objects") from exc
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ModelPackageError(f"manifest is missing required field(s) {', '.join(missing)}; add them to manifest.json")
        unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
        if unknown:
            logger.warning("manifest %r has unknown field(s) %s; they are ignored", data.get("name"), ", ".join(unknown))
        fmt = data.setdefault("format_version", 4 if data.get("monai") is not None
                              else 3 if data.get("nnunet") is not None
                              else 2 if data.get("cascade") is not None else 1)
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise _fail("format_version", "must be a positive integer")
        if fmt > FORMAT_VERSION:
            raise ModelPackageError(f"model package format {fmt} is newer than this TumorSeg supports ({FORMAT_VERSION}); update TumorSeg")
        if not isinstance(data["name"], str) or not NAME_RE.match(data["name"]):
            raise _fail("name", "must be 1-64 letters, digits, '.', '_' or '-' (it becomes a folder name)")
        for key in ("version", "license", "description"):
            if not isinstance(data[key], str) or not data[key].strip():
                raise _fail(key, "must be a non-empty string")
        if not isinstance(data["architecture"], str):
            raise _fail("architecture", "must be a string naming a registered architecture")
        self._kwargs_full = effective_kwargs(data["architecture"], data["kwargs"])
        _check_inputs(data["inputs"])
        self._spacing = _triple(data["spacing"], "spacing", float)
        self._patch = _triple(data["patch_size"], "patch_size", int)
        data["orientation"] = _check_orientation(data["orientation"])
        self._check_output(data)
        self._check_channels(data)
        div = size_divisor(data["architecture"], data["kwargs"])
        if any(p % d for p, d in zip(self._patch[::-1], div)):
            raise _fail("patch_size", f"must be a multiple of {list(div[::-1])} (x, y, z) for {data['architecture']}")
        check_files_dict(data["files"])
        _check_optional(data)
        self._cascade: Optional[CascadeSpec] = None
        if data.get("cascade") is not None:
            if fmt < 2:  # a format-1 reader would take the coarse weights for an ensemble member
                raise _fail("format_version", "must be 2 or more in a package with a 'cascade' section")
            self._cascade = check_cascade(data["cascade"], data["files"], len(data["inputs"]),
                                          self._kwargs_full.get("out_channels"))
        self._nnunet: Optional[Dict[str, Any]] = None
        if data.get("nnunet") is not None:
            if fmt < 3:  # an older reader would run the model without nnU-Net's preprocessing
                raise _fail("format_version", "must be 3 or more in a package with an 'nnunet' section")
            if data.get("cascade") is not None:
                raise _fail("nnunet", "cannot be combined with a 'cascade' section")
            self._nnunet = check_nnunet(data["nnunet"], len(data["inputs"]), self._kwargs_full.get("out_channels"),
                                        data["output"])
        self._monai: Optional[MonaiSection] = None
        if data.get("monai") is not None:
            if fmt < 4:  # an older reader would run the model without the bundle's pre- and postprocessing
                raise _fail("format_version", "must be 4 or more in a package with a 'monai' section")
            if data.get("cascade") is not None or data.get("nnunet") is not None:
                raise _fail("monai", "cannot be combined with a 'cascade' or 'nnunet' section")
            self._monai = check_monai_section(data["monai"], len(data["inputs"]), self._kwargs_full.get("out_channels"))
        self._int8: Optional[Int8Spec] = None
        if data.get("int8") is not None:  # no format bump: an older reader ignores it and runs float32
            if data.get("nnunet") is not None or data.get("monai") is not None or data["architecture"] == "onnx":
                raise _fail("int8", "is for TumorSeg's own sliding-window networks (not nnU-Net, MONAI or ONNX imports)")
            coarse = self._cascade.weights if self._cascade else None
            ensemble = sorted(n for n in data["files"] if n.endswith(".safetensors") and n != coarse)
            self._int8 = check_int8_section(data["int8"], data["files"], ensemble, self._patch)
        self._data = data

    @staticmethod
    def _check_output(data: Dict[str, Any]) -> None:
        out = data["output"]
        if not isinstance(out, dict) or out.get("type") not in OUTPUT_TYPES:
            raise _fail("output.type", f"must be one of {', '.join(OUTPUT_TYPES)}")
        unknown = sorted(set(out) - {"type", "labels", "regions"})
        if unknown:
            raise _fail(f"output.{unknown[0]}", "is unknown (known: type, labels, regions)")
        if out["type"] == "softmax" and "regions" in out:
            raise _fail("output.regions", "belongs to sigmoid outputs; a softmax output lists 'labels'")
        if out["type"] == "sigmoid" and "regions" in out and "labels" in out:
            raise _fail("output.labels", "and 'output.regions' are both given; a sigmoid output lists 'regions' only")
        _check_labels(out.get(_output_key(out)), f"output.{_output_key(out)}")

    def _check_channels(self, data: Dict[str, Any]) -> None:
        n_in = self._kwargs_full.get("in_channels")
        if isinstance(n_in, int) and n_in != len(data["inputs"]):
            raise _fail("inputs", f"lists {len(data['inputs'])} input(s) but kwargs.in_channels is {n_in}")
        n_out = self._kwargs_full.get("out_channels")
        out = data["output"]
        values = [lab["value"] for lab in out[_output_key(out)]]
        if out["type"] == "softmax" and isinstance(n_out, int) and max(values) >= n_out:
            raise _fail("output.labels", f"has value {max(values)} but the network has only {n_out} channels (0 = background)")
        if out["type"] == "sigmoid" and isinstance(n_out, int) and len(values) != n_out:
            raise _fail("output.regions", f"lists {len(values)} regions but kwargs.out_channels is {n_out}")

    # --- accessors -------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """A deep copy of the validated manifest (with ``format_version`` filled in)."""
        return copy.deepcopy(self._data)

    @property
    def name(self) -> str:
        return self._data["name"]

    @property
    def version(self) -> str:
        return self._data["version"]

    @property
    def license(self) -> str:
        return self._data["license"]

    @property
    def description(self) -> str:
        return self._data["description"]

    @property
    def format_version(self) -> int:
        return self._data["format_version"]

    @property
    def architecture(self) -> str:
        return self._data["architecture"]

    @property
    def kwargs(self) -> Dict[str, Any]:
        """The architecture kwargs exactly as written (JSON types)."""
        return copy.deepcopy(self._data["kwargs"])

    @property
    def inputs(self) -> List[Dict[str, Any]]:
        return copy.deepcopy(self._data["inputs"])

    @property
    def num_inputs(self) -> int:
        return len(self._data["inputs"])

    @property
    def input_modalities(self) -> List[str]:
        return [item["modality"] for item in self._data["inputs"]]

    @property
    def normalizations(self) -> List[Dict[str, Any]]:
        """One normalization scheme per input channel (for ``preprocess.normalize``)."""
        return [copy.deepcopy(item["normalization"]) for item in self._data["inputs"]]

    @property
    def spacing_xyz(self) -> Tuple[float, float, float]:
        return self._spacing

    @property
    def orientation(self) -> Optional[str]:
        return self._data["orientation"]

    @property
    def patch_size_xyz(self) -> Tuple[int, int, int]:
        return self._patch

    @property
    def patch_size_zyx(self) -> Tuple[int, int, int]:
        """Window shape in array order (z, y, x)."""
        return (self._patch[2], self._patch[1], self._patch[0])

    @property
    def size_divisor_zyx(self) -> Tuple[int, int, int]:
        """Window sides (z, y, x) must be multiples of this."""
        return size_divisor(self.architecture, self._data["kwargs"])

    @property
    def output_type(self) -> str:
        return self._data["output"]["type"]

    @property
    def segments(self) -> List[SegmentInfo]:
        """One :class:`SegmentInfo` per output label (softmax) or region (sigmoid), in manifest order."""
        out = self._data["output"]
        return [SegmentInfo(value=d["value"], name=d["name"], color=tuple(float(c) for c in d["color"]),
                            terminology=copy.deepcopy(d.get("terminology")))
                for d in out[_output_key(out)]]

    @property
    def postprocessing(self) -> List[Dict[str, Any]]:
        return copy.deepcopy(self._data.get("postprocessing") or [])

    @property
    def preprocessing(self) -> Dict[str, Any]:
        return copy.deepcopy(self._data.get("preprocessing") or {})

    @property
    def inference(self) -> Dict[str, Any]:
        return copy.deepcopy(self._data.get("inference") or {})

    @property
    def metrics(self) -> Dict[str, Any]:
        return copy.deepcopy(self._data.get("metrics") or {})

    @property
    def validated(self) -> bool:
        """False for a package ``tumorseg train`` marked "not validated" (validation Dice below its
        threshold); True otherwise, also for manifests without the field."""
        return bool(self._data.get("validated", True))

    def validation_warning(self) -> Optional[str]:
        """One line for the user when the model is not validated, else None."""
        if self.validated:
            return None
        validation = (self._data.get("metrics") or {}).get("validation") or {}
        dice, threshold = validation.get("dice"), validation.get("min_dice")
        measured = f"validation Dice {dice:.4f}" if _is_number(dice) else "no validation Dice"
        below = f" < {threshold}" if _is_number(threshold) and _is_number(dice) else ""
        return (f"model '{self.name}' is not validated ({measured}{below}): its labels are unreliable; "
                f"train it longer or on more data, or use a validated model")

    @property
    def cascade(self) -> Optional[CascadeSpec]:
        """The dedicated coarse network of the ROI cascade, or None (the 'cascade' section above)."""
        return self._cascade

    @property
    def monai(self) -> Optional[MonaiSection]:
        """The imported MONAI bundle's pre- and postprocessing and inferer (``monai_section.py``), or None."""
        return self._monai

    @property
    def nnunet(self) -> Optional[Dict[str, Any]]:
        """The validated ``nnunet`` section (an imported nnU-Net v2 model: its own pipeline), or None."""
        return copy.deepcopy(self._nnunet)

    @property
    def int8(self) -> Optional[Int8Spec]:
        """The package's INT8 networks (``tumorseg quantize``, ``int8_section.py``), or None."""
        return self._int8

    @property
    def files(self) -> Dict[str, str]:
        return dict(self._data["files"])

    def predictor_settings(self) -> Dict[str, Any]:
        """The :class:`~tumorseg_core.inference.predictor.Predictor` keyword arguments this model asks for.

        Window (``patch_size_zyx``, ``size_divisor``), outputs (``num_outputs``, ``output_type``,
        ``region_values`` for sigmoid models), inputs (``in_channels``, ``modalities``) and the
        manifest's ``inference`` defaults (``overlap``, ``tta``, ``window_batch``, ``amp``,
        ``sigma_scale``) where it sets them.
        """
        values = [s.value for s in self.segments]
        sigmoid = self.output_type == "sigmoid"
        num_outputs = self._kwargs_full.get("out_channels")
        if not isinstance(num_outputs, int):
            num_outputs = len(values) if sigmoid else max(values) + 1
        settings: Dict[str, Any] = {
            "patch_size_zyx": self.patch_size_zyx,
            "num_outputs": int(num_outputs),
            "output_type": self.output_type,
            "in_channels": self.num_inputs,
            "modalities": self.input_modalities,
            "size_divisor": tuple(int(d) for d in self.size_divisor_zyx),
        }
        if sigmoid:
            settings["region_values"] = values
        for key, value in self.inference.items():
            if key in INFERENCE_SETTINGS and value is not None:
                settings[key] = value
        return settings

    def __repr__(self) -> str:
        return f"Manifest(name={self.name!r}, version={self.version!r}, architecture={self.architecture!r})"
