"""The optional ``cascade`` section of a model manifest: a dedicated coarse network.

The ROI cascade (:mod:`tumorseg_core.inference.cascade`) first runs a network on the
model-grid volume average-pooled by ``factor``; full-resolution windows then run only
where that pass sees foreground. Without this section the package's own network runs the
coarse pass. With it, a small network trained for the coarse scale (for instance on the
full model's own labels, ``benchmarks/make_distillation_set.py``) does::

    "cascade": {
      "weights": "coarse.safetensors",      # a file of the package ("files" lists its sha256)
      "architecture": "unet3d",
      "kwargs": {"features": [8, 16, 32], "in_channels": 1, "out_channels": 2},
      "patch_size": [32, 32, 32],           # x y z voxels of the coarse grid
      "factor": 2.0,                        # coarse spacing / model spacing (> 1)
      "threshold": 0.1,                     # foreground probability that makes a candidate
      "margin_mm": 10.0,                    # candidates grow by this much
      "input_clip": [-2.0, 4.0],            # optional: clip the pooled volume first (null: don't)
      "default": true                       # run the cascade unless the user says --no-cascade
    }

The coarse network takes the same input channels (the package's normalized volume, pooled,
then clipped to ``input_clip``) and has the package's output type; its weights are never
part of the package's ensemble. ``input_clip`` exists because a small network trained on
z-scored CT (air at -3..-6 next to soft tissue within +-1) learned nothing of the tissue
contrast until the air was clipped away (benchmarks/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.models.registry import ARCHITECTURES, effective_kwargs, size_divisor

CASCADE_DEFAULTS = {"factor": 2.0, "threshold": 0.1, "margin_mm": 10.0, "input_clip": None, "default": True}
_KEYS = ("weights", "architecture", "kwargs", "patch_size", *CASCADE_DEFAULTS)


def _fail(field: str, problem: str) -> ModelPackageError:
    return ModelPackageError(f"manifest field 'cascade.{field}' {problem}; fix the package's manifest.json")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        raise ModelPackageError("manifest field 'cascade' must be a JSON object; fix the package's manifest.json")
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise _fail(unknown[0], f"is unknown (known: {', '.join(_KEYS)})")
    values = {**CASCADE_DEFAULTS, **section}
    weights = values.get("weights")
    if not isinstance(weights, str) or not weights.endswith(".safetensors") or weights not in files:
        raise _fail("weights", "must name a .safetensors file that 'files' lists")
    if not any(name.endswith(".safetensors") and name != weights for name in files):
        raise _fail("weights", "must not be the package's only network (the full-resolution weights are missing)")
    architecture = values.get("architecture")
    if architecture not in ARCHITECTURES:
        raise _fail("architecture", f"must be a registered architecture ({', '.join(sorted(ARCHITECTURES))})")
    kwargs = values.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise _fail("kwargs", "must be a JSON object")
    full = effective_kwargs(architecture, kwargs)
    if full.get("in_channels", in_channels) != in_channels:
        raise _fail("kwargs.in_channels", f"must equal the package's {in_channels} input(s)")
    if out_channels is not None and full.get("out_channels", out_channels) != out_channels:
        raise _fail("kwargs.out_channels", f"must equal the package network's {out_channels} outputs")
    patch = values.get("patch_size")
    if not isinstance(patch, list) or len(patch) != 3 or not all(
            isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch):
        raise _fail("patch_size", "must be three positive integers (x, y, z)")
    divisor = size_divisor(architecture, kwargs)
    if any(p % d for p, d in zip(patch[::-1], divisor)):
        raise _fail("patch_size", f"must be a multiple of {list(divisor[::-1])} (x, y, z) for {architecture}")
    if not _number(values["factor"]) or not 1.0 < values["factor"] <= 8.0:
        raise _fail("factor", "must be a number above 1 and at most 8")
    if not _number(values["threshold"]) or not 0.0 < values["threshold"] < 1.0:
        raise _fail("threshold", "must be a probability between 0 and 1")
    if not _number(values["margin_mm"]) or not 0.0 <= values["margin_mm"] <= 200.0:
        raise _fail("margin_mm", "must be a number of millimetres from 0 to 200")
    if not isinstance(values["default"], bool):
        raise _fail("default", "must be true or false")
    clip = values["input_clip"]
    if clip is not None and not (isinstance(clip, list) and len(clip) == 2 and all(_number(v) for v in clip)
                                 and all(math.isfinite(v) for v in clip) and clip[0] < clip[1]):
        raise _fail("input_clip", "must be null or [low, high] with finite low < high")
    return CascadeSpec(weights, architecture, dict(kwargs), tuple(patch), float(values["factor"]),  # type: ignore[arg-type]
                       float(values["threshold"]), float(values["margin_mm"]), values["default"],
                       None if clip is None else (float(clip[0]), float(clip[1])))


def reserve_cascade_weights(manifest: Dict[str, Any], have_weights: bool) -> None:
    """Writing a package: list the ``cascade`` section's weights in ``manifest["files"]``
    (placeholder digest) after the ensemble's ``fold{i}`` files; refuse a mismatch."""
    section = manifest.get("cascade")
    name = section.get("weights") if isinstance(section, dict) else None
    if have_weights != (name is not None):
        raise ModelPackageError("give the cascade weights together with a manifest 'cascade' section, or neither")
    if name in manifest["files"]:
        raise ModelPackageError(f"cascade weights {name!r} would replace an ensemble member; name them otherwise")
    if name is not None:
        manifest["files"][name] = "0" * 64
