"""The ``monai`` manifest section: an imported MONAI bundle's own pipeline, as plain JSON.

A package written by :func:`tumorseg_core.modelpkg.monai_import.import_bundle` runs the
bundle's preprocessing, sliding-window inferer and postprocessing exactly as
``monai.bundle run`` does (:mod:`tumorseg_core.inference.monai_pipeline`), instead of
TumorSeg's resampling, normalization and windows. The section holds the steps in the
bundle's order, read from :class:`~tumorseg_core.modelpkg.monai_bundle.BundleSpec`::

    "monai": {
      "bundle": {"name": "spleen_ct_segmentation", "version": "0.5.9", "monai_version": "1.4.0"},
      "preprocessing": [                      # in the bundle's order; channels = network input channels
        {"transform": "Orientationd", "axcodes": "RAS"},
        {"transform": "Spacingd", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear",
         "padding_mode": "border", "align_corners": false, "dtype": "float64"},
        {"transform": "ScaleIntensityRanged", "groups": [[0]], "a_min": -57, "a_max": 164,
         "b_min": 0, "b_max": 1, "clip": true},
        {"transform": "NormalizeIntensityd", "groups": [[0, 1, 2, 3]], "nonzero": true,
         "channel_wise": true, "subtrahend": null, "divisor": null},
        {"transform": "ScaleIntensityd", "groups": [[0]], "minv": 0.0, "maxv": 1.0, "channel_wise": false},
        {"transform": "CropForegroundd", "source_channels": [0], "margin": [4, 4, 4],
         "allow_smaller": false, "k_divisible": [1, 1, 1]}
      ],
      "inferer": {"kind": "sliding_window", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5,
                  "mode": "constant", "sigma_scale": 0.125, "padding_mode": "constant", "cval": 0.0},
      "postprocessing": [
        {"transform": "Activationsd", "softmax": true, "sigmoid": false},
        {"transform": "Invertd", "nearest_interp": false},
        {"transform": "AsDiscreted", "argmax": true, "threshold": null},
        {"transform": "Lambdad", "rules": [[2, 4], [0, 1], [1, 2]]}   # BraTS: channel -> value, first match wins
      ]
    }

Per-axis values (``pixdim``, ``margin``, ``k_divisible``, ``roi_size``, per-axis ``overlap`` /
``sigma_scale``) are in MONAI's (i, j, k) order, which is TumorSeg's x, y, z on the grid
oriented to ``axcodes``. ``groups``: the channel sets an intensity step computes its
statistics over (one group per key the bundle applied it to). With this section the
manifest's ``spacing``/``orientation``/``patch_size`` mirror ``pixdim``/``axcodes``/``roi_size``
for display and the architecture's size check. No torch, no MONAI here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from tumorseg_core.errors import ModelPackageError

PRE_KEYS: Dict[str, Tuple[str, ...]] = {
    "Orientationd": ("axcodes",),
    "Spacingd": ("pixdim", "mode", "padding_mode", "align_corners", "dtype"),
    "ScaleIntensityRanged": ("groups", "a_min", "a_max", "b_min", "b_max", "clip"),
    "ScaleIntensityd": ("groups", "minv", "maxv", "channel_wise"),
    "NormalizeIntensityd": ("groups", "nonzero", "channel_wise", "subtrahend", "divisor"),
    "CropForegroundd": ("source_channels", "margin", "allow_smaller", "k_divisible"),
}
POST_KEYS: Dict[str, Tuple[str, ...]] = {
    "Activationsd": ("softmax", "sigmoid"),
    "Invertd": ("nearest_interp",),
    "AsDiscreted": ("argmax", "threshold"),
    "Lambdad": ("rules",),
}
INFERER_KEYS = ("kind", "roi_size", "sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode", "cval")
SECTION_KEYS = ("bundle", "preprocessing", "inferer", "postprocessing")
SPACING_MODES = ("bilinear", "nearest")
PADDING_MODES = ("border", "zeros", "reflection")
SW_PADDING_MODES = ("constant", "reflect", "replicate", "circular")
_AXIS_PAIRS = ({"L", "R"}, {"P", "A"}, {"S", "I"})


def _fail(field: str, problem: str) -> ModelPackageError:
    return ModelPackageError(f"manifest field '{field}' {problem}; fix manifest.json")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bool(step: Dict[str, Any], key: str, where: str) -> bool:
    if not isinstance(step.get(key), bool):
        raise _fail(f"{where}.{key}", "must be true or false")
    return step[key]


def _number(step: Dict[str, Any], key: str, where: str, optional: bool = False) -> Optional[float]:
    value = step.get(key)
    if value is None and optional:
        return None
    if not _is_number(value):
        raise _fail(f"{where}.{key}", "must be a finite number" + (" or null" if optional else ""))
    return float(value)


def _triple(value: Any, field: str, kind: type, minimum: float) -> Tuple[Any, Any, Any]:
    if not (isinstance(value, list) and len(value) == 3 and all(_is_number(v) and v >= minimum for v in value)):
        raise _fail(field, f"must be 3 numbers >= {minimum} (MONAI's i, j, k)")
    if kind is int and not all(_is_int(v) for v in value):
        raise _fail(field, "must be 3 whole numbers (MONAI's i, j, k)")
    return tuple(kind(v) for v in value)  # type: ignore[return-value]


def _per_axis(value: Any, field: str, lo: float, hi: float, hi_open: bool) -> Any:
    def ok(v: Any) -> bool:
        return _is_number(v) and lo <= v and (v < hi if hi_open else v <= hi)

    if ok(value):
        return float(value)
    if isinstance(value, list) and len(value) == 3 and all(ok(v) for v in value):
        return tuple(float(v) for v in value)
    raise _fail(field, f"must be a number in [{lo}, {hi}{')' if hi_open else ']'} or 3 of them")


def _channels(value: Any, field: str, in_channels: int) -> Tuple[int, ...]:
    if not (isinstance(value, list) and value and all(_is_int(c) and 0 <= c < in_channels for c in value)
            and len(set(value)) == len(value)):
        raise _fail(field, f"must be a non-empty list of distinct input channels 0..{in_channels - 1}")
    return tuple(value)


@dataclass(frozen=True)
class MonaiStep:
    """One validated step: its MONAI ``transform`` name and its arguments (tuples for lists)."""

    transform: str
    args: Tuple[Tuple[str, Any], ...]

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.args).get(key, default)

    def __getitem__(self, key: str) -> Any:
        return dict(self.args)[key]


@dataclass(frozen=True)
class MonaiInferer:
    kind: str
    roi_size: Optional[Tuple[int, int, int]]
    sw_batch_size: int
    overlap: Any  # float or 3 floats (i, j, k)
    mode: str
    sigma_scale: Any  # float or 3 floats (i, j, k)
    padding_mode: str
    cval: float


@dataclass(frozen=True)
class MonaiSection:
    """A validated ``monai`` section (see the module docstring)."""

    bundle: Tuple[Tuple[str, str], ...]
    preprocessing: Tuple[MonaiStep, ...]
    inferer: MonaiInferer
    postprocessing: Tuple[MonaiStep, ...]

    def step(self, transform: str, section: str = "preprocessing") -> Optional[MonaiStep]:
        """The first step called ``transform`` in ``section``, or None."""
        return next((s for s in getattr(self, section) if s.transform == transform), None)

    @property
    def activation(self) -> Optional[str]:
        act = self.step("Activationsd", "postprocessing")
        return None if act is None else "softmax" if act["softmax"] else "sigmoid" if act["sigmoid"] else None


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _step_keys(step: Any, where: str, table: Dict[str, Tuple[str, ...]]) -> Tuple[str, Tuple[str, ...]]:
    """``(transform name, its keys)`` of one step: a known transform with exactly its keys."""
    if not isinstance(step, dict) or step.get("transform") not in table:
        raise _fail(f"{where}.transform", f"must be one of {', '.join(table)}")
    name = step["transform"]
    known = table[name]
    unknown = sorted(set(step) - set(known) - {"transform"})
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"is unknown for {name} (known: {', '.join(known)})")
    missing = [k for k in known if k not in step]
    if missing:
        raise _fail(f"{where}.{missing[0]}", "is missing")
    return name, known


def _check_pre(step: Any, where: str, in_channels: int) -> MonaiStep:
    name, known = _step_keys(step, where, PRE_KEYS)
    if "groups" in step:
        groups = step["groups"]
        if not isinstance(groups, list) or not groups:
            raise _fail(f"{where}.groups", "must be a non-empty list of channel lists")
        for i, group in enumerate(groups):
            _channels(group, f"{where}.groups[{i}]", in_channels)
    if name == "Orientationd":
        code = step["axcodes"]
        if not (isinstance(code, str) and len(code) == 3 and all(c in "LRPASI" for c in code.upper())
                and all(sum(c in pair for c in code.upper()) == 1 for pair in _AXIS_PAIRS)):
            raise _fail(f"{where}.axcodes", "must use one of L/R, P/A and S/I each, e.g. \"RAS\"")
    elif name == "Spacingd":
        _triple(step["pixdim"], f"{where}.pixdim", float, 1e-6)
        for key, choices in (("mode", SPACING_MODES), ("padding_mode", PADDING_MODES), ("dtype", ("float64", "float32"))):
            if step[key] not in choices:
                raise _fail(f"{where}.{key}", f"must be one of {', '.join(choices)}")
        _bool(step, "align_corners", where)
    elif name == "ScaleIntensityRanged":
        a_min, a_max = _number(step, "a_min", where), _number(step, "a_max", where)
        if a_min == a_max:
            raise _fail(f"{where}.a_max", "must differ from a_min")
        b_min, b_max = _number(step, "b_min", where, True), _number(step, "b_max", where, True)
        if (b_min is None) != (b_max is None):
            raise _fail(f"{where}.b_max", "must be given together with b_min (or both null)")
        if _bool(step, "clip", where) and b_min is None:
            raise _fail(f"{where}.clip", "needs b_min and b_max")
    elif name == "ScaleIntensityd":
        _number(step, "minv", where), _number(step, "maxv", where)
        _bool(step, "channel_wise", where)
    elif name == "NormalizeIntensityd":
        _bool(step, "nonzero", where), _bool(step, "channel_wise", where)
        for key in ("subtrahend", "divisor"):
            value = step[key]
            if value is not None and not _is_number(value) and not (
                    isinstance(value, list) and value and all(_is_number(v) for v in value)):
                raise _fail(f"{where}.{key}", "must be null, a number or a list of numbers")
    elif name == "CropForegroundd":
        _channels(step["source_channels"], f"{where}.source_channels", in_channels)
        _triple(step["margin"], f"{where}.margin", int, 0)
        _triple(step["k_divisible"], f"{where}.k_divisible", int, 1)
        _bool(step, "allow_smaller", where)
    return MonaiStep(name, tuple((k, _tuplify(step[k])) for k in known))


def _check_post(step: Any, where: str, out_channels: int) -> MonaiStep:
    name, known = _step_keys(step, where, POST_KEYS)
    if name == "Activationsd":
        if _bool(step, "softmax", where) and _bool(step, "sigmoid", where):
            raise _fail(f"{where}.sigmoid", "cannot be true together with softmax")
    elif name == "Invertd":
        _bool(step, "nearest_interp", where)
    elif name == "AsDiscreted":
        argmax, threshold = _bool(step, "argmax", where), _number(step, "threshold", where, True)
        if argmax == (threshold is not None):
            raise _fail(f"{where}.threshold", "must be given exactly when argmax is false")
    elif name == "Lambdad":
        rules = step["rules"]
        if not (isinstance(rules, list) and rules and all(
                isinstance(r, list) and len(r) == 2 and _is_int(r[0]) and 0 <= r[0] < out_channels
                and _is_int(r[1]) and 1 <= r[1] <= 255 for r in rules)):
            raise _fail(f"{where}.rules", f"must be [[channel 0..{out_channels - 1}, label value 1..255], ...]")
    return MonaiStep(name, tuple((k, _tuplify(step[k])) for k in known))


def _check_inferer(inferer: Any) -> MonaiInferer:
    where = "monai.inferer"
    if not isinstance(inferer, dict):
        raise _fail(where, "must be a JSON object")
    unknown = sorted(set(inferer) - set(INFERER_KEYS))
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"is unknown (known: {', '.join(INFERER_KEYS)})")
    missing = [k for k in INFERER_KEYS if k not in inferer]
    if missing:
        raise _fail(f"{where}.{missing[0]}", "is missing")
    kind = inferer["kind"]
    if kind not in ("sliding_window", "simple"):
        raise _fail(f"{where}.kind", "must be \"sliding_window\" or \"simple\"")
    roi = inferer["roi_size"]
    if kind == "sliding_window" or roi is not None:
        roi = _triple(roi, f"{where}.roi_size", int, 1)
    batch = inferer["sw_batch_size"]
    if not _is_int(batch) or batch < 1:
        raise _fail(f"{where}.sw_batch_size", "must be a positive integer")
    overlap = _per_axis(inferer["overlap"], f"{where}.overlap", 0.0, 1.0, True)
    if inferer["mode"] not in ("constant", "gaussian"):
        raise _fail(f"{where}.mode", "must be \"constant\" or \"gaussian\"")
    sigma = _per_axis(inferer["sigma_scale"], f"{where}.sigma_scale", 1e-6, 1e6, False)
    if inferer["padding_mode"] not in SW_PADDING_MODES:
        raise _fail(f"{where}.padding_mode", f"must be one of {', '.join(SW_PADDING_MODES)}")
    if not _is_number(inferer["cval"]):
        raise _fail(f"{where}.cval", "must be a finite number")
    return MonaiInferer(kind, roi, batch, overlap, inferer["mode"], sigma, inferer["padding_mode"],
                        float(inferer["cval"]))


def check_monai_section(section: Any, in_channels: int = 1, out_channels: Optional[int] = None) -> MonaiSection:
    """Validate a ``monai`` section; raise ModelPackageError naming the bad field.

    ``in_channels``/``out_channels``: the package network's channels (channel indices in the
    steps must exist). Order matters and is kept; the steps run in the bundle's order, with
    at most one of each spatial and postprocessing step, ``Activationsd`` before
    ``AsDiscreted`` before ``Lambdad``; ``Invertd`` may come before or after ``AsDiscreted``
    (spleen/swin invert probabilities, wholeBody inverts the argmax).
    """
    if not isinstance(section, dict):
        raise _fail("monai", "must be a JSON object")
    unknown = sorted(set(section) - set(SECTION_KEYS))
    if unknown:
        raise _fail(f"monai.{unknown[0]}", f"is unknown (known: {', '.join(SECTION_KEYS)})")
    missing = [k for k in SECTION_KEYS if k not in section]
    if missing:
        raise _fail(f"monai.{missing[0]}", "is missing")
    bundle = section["bundle"]
    if not isinstance(bundle, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in bundle.items()):
        raise _fail("monai.bundle", "must map names to strings")
    n_out = out_channels if isinstance(out_channels, int) and out_channels > 0 else 256
    pre_raw, post_raw = section["preprocessing"], section["postprocessing"]
    if not isinstance(pre_raw, list):
        raise _fail("monai.preprocessing", "must be a list of steps")
    if not isinstance(post_raw, list):
        raise _fail("monai.postprocessing", "must be a list of steps")
    pre = tuple(_check_pre(s, f"monai.preprocessing[{i}]", in_channels) for i, s in enumerate(pre_raw))
    post = tuple(_check_post(s, f"monai.postprocessing[{i}]", n_out) for i, s in enumerate(post_raw))
    again = _repeated([s.transform for s in pre], ("Orientationd", "Spacingd", "CropForegroundd"))
    if again is not None:
        raise _fail(f"monai.preprocessing[{again[0]}]", f"repeats {again[1]}; each spatial step may appear once")
    names = [s.transform for s in post]
    again = _repeated(names, tuple(POST_KEYS))
    if again is not None:
        raise _fail(f"monai.postprocessing[{again[0]}]", f"repeats {again[1]}")
    where = {n: i for i, n in enumerate(names)}
    if "Activationsd" in where and "AsDiscreted" in where and where["Activationsd"] > where["AsDiscreted"]:
        raise _fail("monai.postprocessing", "must run Activationsd before AsDiscreted")
    if "Lambdad" in where and where["Lambdad"] < where.get("AsDiscreted", len(names)):
        raise _fail("monai.postprocessing", "must run Lambdad after AsDiscreted")
    if "Lambdad" in names:
        discrete = next((s for s in post if s.transform == "AsDiscreted"), None)
        if discrete is None or discrete["argmax"]:
            raise _fail("monai.postprocessing", "may only apply Lambdad rules to thresholded (AsDiscreted threshold) "
                                                "channels")
    return MonaiSection(tuple(sorted(bundle.items())), pre, _check_inferer(section["inferer"]), post)


def _repeated(names: Sequence[str], once: Sequence[str]) -> Optional[Tuple[int, str]]:
    """(index, name) of the first step in ``once`` that appears a second time, or None."""
    for i, name in enumerate(names):
        if name in once and name in names[:i]:
            return i, name
    return None


def section_json(section: MonaiSection) -> Dict[str, Any]:
    """The section back as plain JSON (lists for tuples)."""
    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, tuple) else value

    return json.loads(json.dumps({
        "bundle": dict(section.bundle),
        "preprocessing": [{"transform": s.transform, **{k: plain(v) for k, v in s.args}} for s in section.preprocessing],
        "inferer": {k: plain(getattr(section.inferer, k)) for k in INFERER_KEYS},
        "postprocessing": [{"transform": s.transform, **{k: plain(v) for k, v in s.args}}
                           for s in section.postprocessing],
    }))
