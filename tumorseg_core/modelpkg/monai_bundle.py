"""Read a MONAI bundle (folder or zip) as data: its network, preprocessing, inferer and labels.

A MONAI Model Zoo bundle is ``configs/metadata.json``, ``configs/inference.json`` (or
``.yaml``) and ``models/model.pt``. MONAI's own loader evaluates strings from the config
(``$`` expressions are Python) and instantiates any ``_target_`` by import. Here nothing
of the sort happens: the config is parsed with ``json``/``yaml.safe_load`` and only the
four sections ``monai.bundle run`` needs for inference are read:

- ``network_def``: its ``_target_`` must be in :data:`NETWORK_TARGETS` (mapped to a
  TumorSeg architecture name); its arguments become the kwargs, validated as JSON.
- ``preprocessing``: a ``Compose`` of the transforms in :data:`SUPPORTED_PREPROCESSING`,
  read into typed, frozen steps (:class:`Spacing`, :class:`Orientation`, ...).
- ``inferer``: ``SlidingWindowInferer`` (or ``SimpleInferer``) into :class:`InfererSpec`.
- ``postprocessing``: ``Activationsd``, ``Invertd``, ``AsDiscreted`` (order kept),
  ``SaveImaged`` (ignored: TumorSeg writes its own output) and the one BraTS ``Lambdad``
  recognised by its exact text (:data:`KNOWN_LAMBDAS`, compared as a string, never run).

Values are resolved the way MONAI's ``ConfigParser`` would, as data
(:mod:`tumorseg_core.modelpkg.monai_config`: ``@id`` references, ``#`` or ``::`` separated,
relative ``@#id`` too, and ``%file#id`` macros, files inside the bundle only, are looked up
in the config). Only the values actually read are resolved,
so the ``$`` expressions every zoo config holds elsewhere (``device``, ``datalist``,
``evaluator``, ...) are never touched; a ``$`` expression *in a value that is read* stops
the import naming it. Any transform, ``_target_`` or argument not supported stops it too,
with a one-line :class:`~tumorseg_core.errors.ModelPackageError` naming it.

Weights: ``models/model.pt`` only, read by :func:`tumorseg_core.modelpkg.convert.read_checkpoint`
(``weights_only``) and loaded strictly into the rebuilt network; a bundle with only
``models/model.ts`` (TorchScript, whose loading runs its code) is refused. A zip is
extracted with :func:`tumorseg_core.modelpkg.package.extract_zip` (path-traversal guards).

Axis order: the networks are built by :mod:`tumorseg_core.models.monai_zoo`, which take
TumorSeg's ``(B, C, z, y, x)``, i.e. MONAI's tensor with its spatial axes reversed. So the
bundle's per-axis values (``pixdim``, ``roi_size``, ``margin``) in MONAI's ``(i, j, k)``
order are TumorSeg's ``x, y, z`` on the grid oriented to the same ``axcodes``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.modelpkg.monai_config import SEP, BundleConfig, load_config_file, refuse, short
from tumorseg_core.models import monai_zoo, registry

if TYPE_CHECKING:  # pragma: no cover - typing only
    import os

    import torch

PathLike = Union[str, "os.PathLike[str]"]

# _target_ of network_def -> TumorSeg architecture name (MONAI's aliases included).
_NETWORK_NAMES = {
    "UNet": "monai_unet", "Unet": "monai_unet", "unet": "monai_unet",
    "SegResNet": "monai_segresnet",
    "BasicUNet": "monai_basicunet", "BasicUnet": "monai_basicunet", "Basicunet": "monai_basicunet",
    "basicunet": "monai_basicunet",
    "SwinUNETR": "monai_swinunetr",
}
NETWORK_TARGETS: Dict[str, str] = {
    **_NETWORK_NAMES, **{f"monai.networks.nets.{k}": v for k, v in _NETWORK_NAMES.items()},
}
SUPPORTED_PREPROCESSING = (
    "LoadImaged", "EnsureChannelFirstd", "ConcatItemsd", "Orientationd", "Spacingd", "ScaleIntensityRanged",
    "ScaleIntensityd", "NormalizeIntensityd", "CropForegroundd", "EnsureTyped", "ToTensord",
)
SUPPORTED_POSTPROCESSING = ("Activationsd", "Invertd", "AsDiscreted", "SaveImaged", "Lambdad")
SUPPORTED_INFERERS = ("SlidingWindowInferer", "SimpleInferer")
INPUT_KEY = "image"  # MONAI's CommonKeys.IMAGE: what SupervisedEvaluator feeds the network
OUTPUT_KEY = "pred"  # CommonKeys.PRED
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
MAX_TEXT_CHARS = 64 * 1024
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@dataclass(frozen=True)
class RegionsToLabels:
    """A label map from thresholded region channels: for each ``(channel, value)`` in
    ``rules``, in order of priority (first match wins), voxels where ``channel`` is on
    get ``value``; the rest 0. BraTS' ``Lambdad``: ET -> 4, else TC -> 1, else WT -> 2."""

    keys: Tuple[str, ...]
    rules: Tuple[Tuple[int, int], ...]
    transform: str = "Lambdad"


# Lambdad functions recognised by their exact text (whitespace ignored); never evaluated.
KNOWN_LAMBDAS: Dict[str, Tuple[Tuple[int, int], ...]] = {
    _squash("$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, "
            "torch.where(x[[1]] > 0, 2, 0)))"): ((2, 4), (0, 1), (1, 2)),
}


# ------------------------------------------------------------------ the typed description


@dataclass(frozen=True)
class LoadImage:
    """``LoadImaged``: read ``keys`` (a list of files under one key stacks them as channels)."""

    keys: Tuple[str, ...]
    reader: Optional[str] = None  # None (MONAI picks; NibabelReader for NIfTI), "ITKReader", "NibabelReader"
    ensure_channel_first: bool = False
    transform: str = "LoadImaged"


@dataclass(frozen=True)
class EnsureChannelFirst:
    keys: Tuple[str, ...]
    channel_dim: Optional[Union[int, str]] = None  # None: from the metadata; "no_channel": add one
    transform: str = "EnsureChannelFirstd"


@dataclass(frozen=True)
class ConcatItems:
    """Channels of ``name`` = the channels of ``keys``, in this order."""

    keys: Tuple[str, ...]
    name: str
    transform: str = "ConcatItemsd"


@dataclass(frozen=True)
class Orientation:
    """Permute/flip the axes to ``axcodes`` (MONAI letters: "RAS" = axis 0 points to Right...)."""

    keys: Tuple[str, ...]
    axcodes: str
    transform: str = "Orientationd"


@dataclass(frozen=True)
class Spacing:
    """Resample to ``pixdim`` (mm, MONAI's (i, j, k) = TumorSeg's x, y, z), keeping the direction.

    MONAI's grid: the first voxel centre stays where it was (not the grid centre), size
    ``round((n - 1) * old / new) + 1`` per axis; ``mode`` "bilinear" (trilinear) or "nearest",
    ``padding_mode`` outside the input ("border" repeats the edge), ``align_corners`` as in
    ``torch.nn.functional.grid_sample``; computed in ``dtype`` (float64 by default).
    """

    keys: Tuple[str, ...]
    pixdim: Tuple[float, float, float]
    mode: str = "bilinear"
    padding_mode: str = "border"
    align_corners: bool = False
    dtype: str = "float64"
    transform: str = "Spacingd"


@dataclass(frozen=True)
class ScaleIntensityRange:
    """``(x - a_min) / (a_max - a_min)``, then ``* (b_max - b_min) + b_min`` when both are set;
    clipped to [b_min, b_max] when ``clip``."""

    keys: Tuple[str, ...]
    a_min: float
    a_max: float
    b_min: Optional[float] = None
    b_max: Optional[float] = None
    clip: bool = False
    transform: str = "ScaleIntensityRanged"


@dataclass(frozen=True)
class ScaleIntensity:
    """Min-max scaling of the image (per channel when ``channel_wise``) to [minv, maxv]."""

    keys: Tuple[str, ...]
    minv: float = 0.0
    maxv: float = 1.0
    channel_wise: bool = False
    transform: str = "ScaleIntensityd"


@dataclass(frozen=True)
class NormalizeIntensity:
    """``(x - mean) / std`` (population std; std 0 -> 1). ``nonzero``: statistics over the
    non-zero voxels, which alone are changed (zeros stay 0); ``channel_wise``: per channel.
    ``subtrahend``/``divisor`` replace the mean/std when given (one number or one per channel)."""

    keys: Tuple[str, ...]
    nonzero: bool = False
    channel_wise: bool = False
    subtrahend: Optional[Union[float, Tuple[float, ...]]] = None
    divisor: Optional[Union[float, Tuple[float, ...]]] = None
    transform: str = "NormalizeIntensityd"


@dataclass(frozen=True)
class CropForeground:
    """Crop ``keys`` to the box of voxels > 0 in any channel of ``source_key``, plus ``margin``
    voxels (MONAI (i, j, k) order), grown to multiples of ``k_divisible``; ``Invertd`` pads back
    with zeros. ``allow_smaller=False``: the margin may reach past the image (zero padding)."""

    keys: Tuple[str, ...]
    source_key: str
    margin: Tuple[int, int, int] = (0, 0, 0)
    allow_smaller: bool = False
    k_divisible: Tuple[int, int, int] = (1, 1, 1)
    transform: str = "CropForegroundd"


PreStep = Union[LoadImage, EnsureChannelFirst, ConcatItems, Orientation, Spacing, ScaleIntensityRange,
                ScaleIntensity, NormalizeIntensity, CropForeground]


@dataclass(frozen=True)
class InfererSpec:
    """``SlidingWindowInferer`` settings (MONAI 1.6 defaults filled in); ``kind="simple"``:
    the whole image in one pass. ``roi_size`` and per-axis ``overlap``/``sigma_scale`` are in
    MONAI's (i, j, k) order = TumorSeg's x, y, z. Images smaller than the window are padded
    (``padding_mode``, ``cval``) symmetrically and the padding cropped off again."""

    kind: str = "sliding_window"
    roi_size: Optional[Tuple[int, int, int]] = None
    sw_batch_size: int = 1
    overlap: Union[float, Tuple[float, float, float]] = 0.25
    mode: str = "constant"
    sigma_scale: Union[float, Tuple[float, float, float]] = 0.125
    padding_mode: str = "constant"
    cval: float = 0.0


@dataclass(frozen=True)
class Activations:
    keys: Tuple[str, ...]
    softmax: bool = False
    sigmoid: bool = False
    transform: str = "Activationsd"


@dataclass(frozen=True)
class Invert:
    """Undo the preprocessing's spatial steps on ``keys`` (the network output), in reverse:
    crop -> zero padding, spacing -> resampling back to the input grid (with the step's own
    mode, or nearest when ``nearest_interp``), orientation -> the input's axes."""

    keys: Tuple[str, ...]
    orig_key: str
    nearest_interp: bool = True
    transform: str = "Invertd"


@dataclass(frozen=True)
class AsDiscrete:
    keys: Tuple[str, ...]
    argmax: bool = False
    threshold: Optional[float] = None
    transform: str = "AsDiscreted"


PostStep = Union[Activations, Invert, AsDiscrete, RegionsToLabels]


@dataclass(frozen=True)
class InputChannel:
    """One network input channel: its name (metadata ``channel_def``) and the data key it comes from."""

    index: int
    name: str
    key: str


@dataclass(frozen=True)
class OutputChannel:
    """One network output channel and its name (metadata ``channel_def``)."""

    index: int
    name: str


@dataclass(frozen=True)
class BundleSpec:
    """Everything TumorSeg needs from a bundle to reproduce ``monai.bundle run`` (no weights).

    ``network``/``network_kwargs`` name a :mod:`tumorseg_core.models.monai_zoo` architecture
    (``(B, C, z, y, x)`` in). ``preprocessing`` and ``postprocessing`` keep the bundle's order;
    the properties below pick single steps out of them for convenience.
    """

    root: str
    config_file: str
    name: str
    version: str
    description: str
    network: str
    network_target: str
    network_kwargs: Dict[str, Any]
    input_channels: Tuple[InputChannel, ...]
    modality: str
    preprocessing: Tuple[PreStep, ...]
    inferer: InfererSpec
    postprocessing: Tuple[PostStep, ...]
    output_channels: Tuple[OutputChannel, ...]
    authors: str = ""
    copyright: str = ""
    intended_use: str = ""
    references: Tuple[str, ...] = ()
    license_text: str = ""
    data_license_text: str = ""
    monai_version: str = ""
    weights_file: str = "models/model.pt"
    ignored: Tuple[str, ...] = field(default=())  # what was read and deliberately not reproduced

    # -- convenience views ----------------------------------------------------------------
    def _first(self, kind: type) -> Any:
        return next((s for s in self.preprocessing if isinstance(s, kind)), None)

    @property
    def in_channels(self) -> int:
        return len(self.input_channels)

    @property
    def out_channels(self) -> int:
        return len(self.output_channels)

    @property
    def orientation(self) -> Optional[str]:
        step = self._first(Orientation)
        return step.axcodes if step else None

    @property
    def spacing(self) -> Optional[Spacing]:
        return self._first(Spacing)

    @property
    def crop_foreground(self) -> Optional[CropForeground]:
        return self._first(CropForeground)

    @property
    def ensure_channel_first(self) -> bool:
        return any(isinstance(s, EnsureChannelFirst) or (isinstance(s, LoadImage) and s.ensure_channel_first)
                   for s in self.preprocessing)

    @property
    def intensity(self) -> Tuple[Union[ScaleIntensityRange, ScaleIntensity, NormalizeIntensity], ...]:
        return tuple(s for s in self.preprocessing if isinstance(s, (ScaleIntensityRange, ScaleIntensity,
                                                                     NormalizeIntensity)))

    @property
    def activation(self) -> Optional[str]:
        """"softmax", "sigmoid" or None."""
        for step in self.postprocessing:
            if isinstance(step, Activations):
                return "softmax" if step.softmax else "sigmoid" if step.sigmoid else None
        return None

    @property
    def output_type(self) -> str:
        """"labels" (argmax: label value = channel index) or "regions" (thresholded, may overlap)."""
        for step in self.postprocessing:
            if isinstance(step, AsDiscrete):
                return "labels" if step.argmax else "regions"
        return "labels" if self.activation == "softmax" else "regions"

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dict (steps as dicts with their ``transform`` name)."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("preprocessing", "postprocessing", "input_channels", "output_channels"):
                value = [asdict(s) for s in value]
            elif f.name == "inferer":
                value = asdict(value)
            out[f.name] = value
        return json.loads(json.dumps(out))


# ------------------------------------------------------------------ argument checkers


class _Args:
    """The arguments of one component: supported ones resolved and checked, the rest refused."""

    def __init__(self, cfg: BundleConfig, target: str, args: Dict[str, Any], id_: str, section: str,
                 supported: Sequence[str], ignored: Sequence[str] = ()) -> None:
        self.cfg, self.target, self.args, self.id, self.section = cfg, target, args, id_, section
        for key in args:
            if key not in supported and key not in ignored:
                raise refuse(f"{target} in {section} has argument {key!r}, which is not supported",
                              f"supported: {', '.join(supported)}")

    def what(self, key: str) -> str:
        return f"{self.target} {key!r} in {self.section}"

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self.args:
            return default
        return self.cfg.resolve(self.args[key], f"{self.id}{SEP}{key}")

    def require(self, key: str) -> Any:
        if key not in self.args:
            raise refuse(f"{self.target} in {self.section} lacks its argument {key!r}")
        return self.get(key)

    def bad(self, key: str, value: Any, want: str) -> ModelPackageError:
        return refuse(f"{self.what(key)} is {short(value)}", f"expected {want}")

    def keys(self, key: str = "keys") -> Tuple[str, ...]:
        value = self.require(key)
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or not all(isinstance(k, str) and k for k in value):
            raise self.bad(key, value, "a key or a list of keys")
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, value, "true or false")
        return value

    def number(self, key: str, default: Any = None, optional: bool = False) -> Optional[float]:
        value = self.get(key, default) if key in self.args or not optional else default
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.bad(key, value, "a finite number")
        return float(value)

    def choice(self, key: str, default: Any, allowed: Sequence[Any]) -> Any:
        value = self.get(key, default)
        if isinstance(value, str):
            value = value.lower()
        if value not in allowed:
            raise self.bad(key, value, f"one of {', '.join(map(str, allowed))}")
        return value

    def triple(self, key: str, default: Any, kind: type, positive: bool = False) -> Tuple[Any, Any, Any]:
        """A number (same on all axes) or 3 numbers; ``kind`` int or float."""
        value = self.get(key, default)
        items = [value] * 3 if not isinstance(value, list) else value
        ok = len(items) == 3 and all(
            not isinstance(v, bool) and isinstance(v, (int,) if kind is int else (int, float))
            and math.isfinite(v) and (v > 0 if positive else v >= 0) for v in items)
        if not ok:
            raise self.bad(key, value, f"one or three {'positive ' if positive else ''}"
                                       f"{'integers' if kind is int else 'numbers'}")
        return tuple(kind(v) for v in items)  # type: ignore[return-value]

    def default_only(self, key: str, allowed: Sequence[Any]) -> None:
        if key in self.args and self.get(key) not in allowed:
            raise self.bad(key, self.get(key), f"{' or '.join(map(repr, allowed))} (other values are not supported)")


def _short_target(target: str, prefix: str, section: str, supported: Sequence[str]) -> str:
    name = target[len(prefix):] if target.startswith(prefix) else target
    if name not in supported:
        kind = "transform" if "transforms" in prefix else "inferer" if "inferers" in prefix else "_target_"
        raise refuse(f"{kind} {target} in {section} is not supported", f"supported: {', '.join(supported)}")
    return name


# ------------------------------------------------------------------ sections


def _network(cfg: BundleConfig) -> Tuple[str, str, Dict[str, Any]]:
    if "network_def" not in cfg.data:
        raise refuse(f"{cfg.file_name} has no network_def")
    comp = cfg.component(cfg.data["network_def"], "network_def", "network_def")
    if comp is None:
        raise refuse("network_def is disabled")
    target, args, id_ = comp
    name = NETWORK_TARGETS.get(target)
    if name is None:
        known = ", ".join(sorted(k for k in _NETWORK_NAMES if k[0].isupper()))
        raise refuse(f"network _target_ {target} is not supported", f"supported: {known}")
    kwargs = {k: cfg.resolve(v, f"{id_}{SEP}{k}") for k, v in args.items()}
    try:
        if name in registry.ARCHITECTURES:
            kwargs = registry.validate_kwargs(name, kwargs)
        else:
            kwargs = monai_zoo.validate_kwargs(name, kwargs)
    except ModelPackageError as exc:
        raise refuse(f"network_def {target}: {exc}") from exc
    return name, target, json.loads(json.dumps(kwargs))


def _compose_items(cfg: BundleConfig, section: str) -> List[Tuple[str, Dict[str, Any], str]]:
    if section not in cfg.data:
        raise refuse(f"{cfg.file_name} has no {section}")
    comp = cfg.component(cfg.data[section], section, section)
    if comp is None:
        return []
    target, args, id_ = comp
    _short_target(target, "monai.transforms.", section, ("Compose",))
    a = _Args(cfg, "Compose", args, id_, section, ("transforms", "lazy"), ("log_stats",))
    a.default_only("lazy", (False, None))
    items, items_id = cfg.follow(args.get("transforms", []), f"{id_}{SEP}transforms")
    if not isinstance(items, list):
        raise refuse(f"{section} transforms are {short(items)}, not a list")
    out = []
    for i, item in enumerate(items):
        got = cfg.component(item, f"{items_id}{SEP}{i}", section)
        if got is not None:
            out.append(got)
    return out


def _preprocessing(cfg: BundleConfig) -> Tuple[List[PreStep], List[str]]:
    section = "preprocessing"
    steps: List[PreStep] = []
    ignored: List[str] = []
    for target, args, id_ in _compose_items(cfg, section):
        name = _short_target(target, "monai.transforms.", section, SUPPORTED_PREPROCESSING)
        common = ("keys", "allow_missing_keys")
        if name == "LoadImaged":
            a = _Args(cfg, name, args, id_, section,
                      (*common, "reader", "image_only", "ensure_channel_first", "dtype", "simple_keys"),
                      ("meta_keys", "meta_key_postfix", "overwriting", "prune_meta_pattern", "prune_meta_sep",
                       "expanduser"))
            a.default_only("dtype", ("float32", "numpy.float32", "np.float32", None))
            reader = a.choice("reader", None, (None, "itkreader", "nibabelreader"))
            a.boolean("image_only", True)
            a.boolean("simple_keys", False)
            steps.append(LoadImage(a.keys(), {"itkreader": "ITKReader", "nibabelreader": "NibabelReader"}.get(reader),
                                   a.boolean("ensure_channel_first", False)))
        elif name == "EnsureChannelFirstd":
            a = _Args(cfg, name, args, id_, section, (*common, "channel_dim", "strict_check"))
            dim = a.get("channel_dim")
            if dim is not None and dim != "no_channel" and (isinstance(dim, bool) or not isinstance(dim, int)):
                raise a.bad("channel_dim", dim, "null, \"no_channel\" or an integer")
            a.boolean("strict_check", True)
            steps.append(EnsureChannelFirst(a.keys(), dim))
        elif name == "ConcatItemsd":
            a = _Args(cfg, name, args, id_, section, (*common, "name", "dim"))
            if a.get("dim", 0) != 0:
                raise a.bad("dim", a.get("dim"), "0 (the channel axis)")
            out = a.require("name")
            if not isinstance(out, str) or not out:
                raise a.bad("name", out, "a key")
            steps.append(ConcatItems(a.keys(), out))
        elif name == "Orientationd":
            a = _Args(cfg, name, args, id_, section, (*common, "axcodes", "as_closest_canonical", "labels", "lazy"))
            codes = a.require("axcodes")
            if not isinstance(codes, str) or len(codes) != 3 or sorted(
                    {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c, 9) for c in codes.upper()) != [0, 1, 2]:
                raise a.bad("axcodes", codes, "three letters, one of L/R, P/A and I/S each")
            a.default_only("as_closest_canonical", (False,))
            a.default_only("labels", (None,))
            a.default_only("lazy", (False,))
            steps.append(Orientation(a.keys(), codes.upper()))
        elif name == "Spacingd":
            a = _Args(cfg, name, args, id_, section,
                      (*common, "pixdim", "mode", "padding_mode", "align_corners", "dtype", "diagonal",
                       "scale_extent", "recompute_affine", "min_pixdim", "max_pixdim", "lazy"),
                      ("ensure_same_shape",))
            pixdim = a.get("pixdim")
            if not isinstance(pixdim, list) or len(pixdim) != 3:
                raise a.bad("pixdim", pixdim, "three positive numbers (mm)")
            for flag in ("diagonal", "scale_extent", "recompute_affine", "lazy"):
                a.default_only(flag, (False,))
            a.default_only("min_pixdim", (None,))
            a.default_only("max_pixdim", (None,))
            dtype = a.choice("dtype", "float64", ("float64", "float32", "numpy.float64", "numpy.float32",
                                                  "np.float64", "np.float32"))
            steps.append(Spacing(
                a.keys(), a.triple("pixdim", None, float, positive=True),
                a.choice("mode", "bilinear", ("bilinear", "nearest")),
                a.choice("padding_mode", "border", ("border", "zeros", "reflection")),
                a.boolean("align_corners", False), dtype.rsplit(".", 1)[-1]))
        elif name == "ScaleIntensityRanged":
            a = _Args(cfg, name, args, id_, section, (*common, "a_min", "a_max", "b_min", "b_max", "clip", "dtype"))
            a.default_only("dtype", ("float32", "numpy.float32", "np.float32", None))
            steps.append(ScaleIntensityRange(
                a.keys(), a.number("a_min", None), a.number("a_max", None), a.number("b_min", optional=True),
                a.number("b_max", optional=True), a.boolean("clip", False)))
        elif name == "ScaleIntensityd":
            a = _Args(cfg, name, args, id_, section, (*common, "minv", "maxv", "factor", "channel_wise", "dtype"))
            a.default_only("factor", (None,))
            a.default_only("dtype", ("float32", "numpy.float32", "np.float32", None))
            minv, maxv = a.number("minv", 0.0), a.number("maxv", 1.0)
            steps.append(ScaleIntensity(a.keys(), float(minv), float(maxv), a.boolean("channel_wise", False)))
        elif name == "NormalizeIntensityd":
            a = _Args(cfg, name, args, id_, section,
                      (*common, "nonzero", "channel_wise", "subtrahend", "divisor", "dtype"))
            a.default_only("dtype", ("float32", "numpy.float32", "np.float32", None))
            extra = {}
            for key in ("subtrahend", "divisor"):
                value = a.get(key)
                if isinstance(value, list) and value and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                    extra[key] = tuple(float(v) for v in value)
                elif value is not None:
                    extra[key] = a.number(key)
            steps.append(NormalizeIntensity(a.keys(), a.boolean("nonzero", False), a.boolean("channel_wise", False),
                                            **extra))
        elif name == "CropForegroundd":
            a = _Args(cfg, name, args, id_, section,
                      (*common, "source_key", "margin", "allow_smaller", "k_divisible", "mode", "channel_indices",
                       "select_fn", "lazy"),
                      ("start_coord_key", "end_coord_key"))
            source = a.require("source_key")
            if not isinstance(source, str):
                raise a.bad("source_key", source, "a key")
            a.default_only("mode", ("constant",))
            a.default_only("channel_indices", (None,))
            a.default_only("lazy", (False,))
            if "select_fn" in args:  # only MONAI's default, named as data: anything else is code
                a.default_only("select_fn", ("monai.transforms.utils.is_positive",))
            steps.append(CropForeground(a.keys(), source, a.triple("margin", 0, int),
                                        a.boolean("allow_smaller", False), a.triple("k_divisible", 1, int, True)))
        else:  # EnsureTyped, ToTensord: type conversions only
            a = _Args(cfg, name, args, id_, section, (*common, "data_type", "dtype", "track_meta"),
                      ("device", "wrap_sequence"))
            a.default_only("data_type", ("tensor", "numpy"))
            a.default_only("dtype", (None, "float32", "torch.float32"))
            a.keys()
            ignored.append(f"{name} (a type conversion)")
        if "allow_missing_keys" in args:
            a.default_only("allow_missing_keys", (False,))
    return steps, ignored


def _inferer(cfg: BundleConfig) -> InfererSpec:
    if "inferer" not in cfg.data:
        raise refuse(f"{cfg.file_name} has no inferer")
    comp = cfg.component(cfg.data["inferer"], "inferer", "inferer")
    if comp is None:
        raise refuse("the inferer is disabled")
    target, args, id_ = comp
    name = _short_target(target, "monai.inferers.", "inferer", SUPPORTED_INFERERS)
    if name == "SimpleInferer":
        _Args(cfg, name, args, id_, "inferer", ())
        return InfererSpec(kind="simple")
    a = _Args(cfg, name, args, id_, "inferer",
              ("roi_size", "sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode", "cval", "with_coord"),
              ("sw_device", "device", "progress", "cache_roi_weight_map", "cpu_thresh", "buffer_steps", "buffer_dim"))
    a.default_only("with_coord", (False,))
    a.require("roi_size")
    roi = a.triple("roi_size", None, int, positive=True)
    batch = a.get("sw_batch_size", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise a.bad("sw_batch_size", batch, "a positive integer")
    overlap = a.get("overlap", 0.25)
    overlap_t = a.triple("overlap", 0.25, float)
    if any(not 0 <= o < 1 for o in overlap_t):
        raise a.bad("overlap", overlap, "numbers from 0 to below 1")
    sigma = a.get("sigma_scale", 0.125)
    sigma_t = a.triple("sigma_scale", 0.125, float, positive=True)
    return InfererSpec(
        "sliding_window", roi, batch, overlap_t if isinstance(overlap, list) else overlap_t[0],
        a.choice("mode", "constant", ("constant", "gaussian")), sigma_t if isinstance(sigma, list) else sigma_t[0],
        a.choice("padding_mode", "constant", ("constant", "reflect", "replicate", "circular")),
        float(a.number("cval", 0.0)))


def _postprocessing(cfg: BundleConfig, input_keys: Sequence[str]) -> Tuple[List[PostStep], List[str]]:
    section = "postprocessing"
    steps: List[PostStep] = []
    ignored: List[str] = []
    for target, args, id_ in _compose_items(cfg, section):
        name = _short_target(target, "monai.transforms.", section, SUPPORTED_POSTPROCESSING)
        common = ("keys", "allow_missing_keys")
        if name == "SaveImaged":  # TumorSeg writes its own label map; nothing here is resolved
            ignored.append("SaveImaged (TumorSeg writes its own output)")
            continue
        if name == "Activationsd":
            a = _Args(cfg, name, args, id_, section, (*common, "softmax", "sigmoid", "other", "dim"))
            a.default_only("other", (None,))
            a.default_only("dim", (0,))
            soft, sig = a.boolean("softmax", False), a.boolean("sigmoid", False)
            if soft and sig:
                raise refuse(f"Activationsd in {section} asks for both softmax and sigmoid")
            step: PostStep = Activations(a.keys(), soft, sig)
        elif name == "Invertd":
            a = _Args(cfg, name, args, id_, section, (*common, "transform", "orig_keys", "nearest_interp", "post_func"),
                      ("meta_keys", "orig_meta_keys", "meta_key_postfix", "to_tensor", "device"))
            raw = args.get("transform")
            if not isinstance(raw, str) or BundleConfig.absolute(raw, f"{id_}{SEP}transform") != "@preprocessing":
                raise a.bad("transform", raw, '"@preprocessing" (inverting anything else is not supported)')
            a.default_only("post_func", (None,))
            orig = a.keys("orig_keys")
            if len(orig) != 1 or orig[0] not in input_keys:
                raise a.bad("orig_keys", list(orig), f"one of the loaded keys {', '.join(input_keys)}")
            step = Invert(a.keys(), orig[0], a.boolean("nearest_interp", True))
        elif name == "AsDiscreted":
            a = _Args(cfg, name, args, id_, section,
                      (*common, "argmax", "threshold", "to_onehot", "rounding", "dim", "keepdim"))
            for key in ("to_onehot", "rounding"):
                a.default_only(key, (None,))
            a.default_only("dim", (0,))
            a.default_only("keepdim", (True,))
            argmax, threshold = a.boolean("argmax", False), a.number("threshold", optional=True)
            if argmax == (threshold is not None):
                raise refuse(f"AsDiscreted in {section} must set exactly one of argmax and threshold")
            step = AsDiscrete(a.keys(), argmax, threshold)
        else:  # Lambdad: only functions known by their exact text
            a = _Args(cfg, name, args, id_, section, (*common, "func", "overwrite", "track_meta"), ())
            func = args.get("func")
            rules = KNOWN_LAMBDAS.get(_squash(func)) if isinstance(func, str) else None
            if rules is None:
                raise refuse(f"Lambdad in {section} runs the code {short(func)}, which TumorSeg does not evaluate",
                              "only the BraTS region-to-label function is recognised")
            a.default_only("overwrite", (True,))
            step = RegionsToLabels(a.keys(), rules)
        if "allow_missing_keys" in args:
            a.default_only("allow_missing_keys", (False,))
        if step.keys != (OUTPUT_KEY,):
            raise refuse(f"{name} in {section} acts on {list(step.keys)}; only {OUTPUT_KEY!r} (the prediction) "
                          "is supported")
        steps.append(step)
    return steps, ignored


# ------------------------------------------------------------------ channels and metadata


def _channels(steps: Sequence[PreStep], in_channels: int, meta_input: Dict[str, Any]) -> Tuple[InputChannel, ...]:
    """Which loaded key each network input channel comes from, and its name."""
    known: List[str] = []
    sources: Dict[str, Tuple[str, ...]] = {}
    for step in steps:
        if not isinstance(step, LoadImage):
            missing = [k for k in step.keys if k not in known]
            if missing:
                raise refuse(f"{step.transform} in preprocessing acts on {missing}, which no LoadImaged loaded "
                              "before it")
        if isinstance(step, LoadImage):
            for key in step.keys:
                if key not in known:
                    known.append(key)
                    sources[key] = (key,)
        elif isinstance(step, ConcatItems):
            known.append(step.name)
            sources[step.name] = tuple(s for k in step.keys for s in sources[k])
        elif isinstance(step, CropForeground) and step.source_key not in known:
            raise refuse(f"CropForegroundd source_key {step.source_key!r} is not a loaded key")
    if INPUT_KEY not in known:
        raise refuse(f"preprocessing never makes the key {INPUT_KEY!r} that the network reads")
    keys = sources[INPUT_KEY]
    per_key = 1 if len(keys) == in_channels else in_channels if len(keys) == 1 else 0
    if per_key == 0:
        raise refuse(f"the network takes {in_channels} channels but {INPUT_KEY!r} is built from {len(keys)} keys "
                      f"({', '.join(keys)})")
    names = _channel_def(meta_input, in_channels)
    return tuple(InputChannel(i, names[i] if names else (keys[i] if per_key == 1 else f"channel {i}"),
                              keys[i] if per_key == 1 else keys[0]) for i in range(in_channels))


def _channel_def(section: Any, count: int) -> Optional[List[str]]:
    defs = section.get("channel_def") if isinstance(section, dict) else None
    if not isinstance(defs, dict):
        return None
    names = [defs.get(str(i)) for i in range(count)]
    return [str(n) for n in names] if all(isinstance(n, (str, int, float)) for n in names) else None


def _meta_io(meta: Dict[str, Any], kind: str, key: str) -> Dict[str, Any]:
    section = meta.get("network_data_format", {}).get(kind, {}) if isinstance(meta.get("network_data_format"),
                                                                               dict) else {}
    if not isinstance(section, dict):
        return {}
    value = section.get(key)
    if value is None and len(section) == 1:
        value = next(iter(section.values()))
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return str(value)[:MAX_TEXT_CHARS] if isinstance(value, (str, int, float)) else ""


def _read_text(root: Path, *names: str) -> str:
    for name in names:
        path = root / name
        if path.is_file() and not path.is_symlink():
            return path.read_text(encoding="utf-8", errors="replace")[:MAX_TEXT_CHARS]
    return ""


# ------------------------------------------------------------------ entry points


def bundle_root(source: PathLike) -> Path:
    """The bundle folder of ``source`` (a folder, or a zip extracted safely into the cache)."""
    from tumorseg_core.modelpkg.package import cache_dir, extract_zip

    path = Path(source).expanduser()
    if not path.exists():
        raise ModelPackageError(f"{path} does not exist; check the path")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise refuse(f"{path.name} is neither a bundle folder nor a .zip")
        path = extract_zip(path, cache_dir() / "bundles")
    if not (path / "configs").is_dir():
        raise refuse(f"{path.name} has no configs/ folder, so it is not a MONAI bundle")
    return path


def _check_weights_file(root: Path, weights: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.(pt|pth)$", weights):
        raise refuse(f"weights file name {weights!r} is not a plain .pt name inside models/")
    pt = root / "models" / weights
    if pt.is_file() and not pt.is_symlink():
        return f"models/{weights}"
    if (root / "models" / "model.ts").is_file():
        raise refuse(
            "it holds only models/model.ts (TorchScript), which TumorSeg does not import because loading it runs "
            "its code", f"use the bundle's models/{weights} (the PyTorch state dict, e.g. from the non-TorchScript "
                         "download of the bundle)")
    raise refuse(f"it has no models/{weights}", "download the bundle with its weights")


def read_bundle(source: PathLike, *, overrides: Optional[Mapping[str, Any]] = None,
                weights: str = "model.pt") -> BundleSpec:
    """Read a bundle's configs into a :class:`BundleSpec` without evaluating anything.

    ``source``: bundle folder or ``.zip``. ``overrides``: ``{config id: JSON value}`` set
    before reading, like ``monai.bundle run --id value`` (e.g. ``{"pixdim": [1.5, 1.5, 1.5]}``
    where the bundle computes it with an expression). ``weights``: the file under ``models/``
    (``model.pt``). No torch is imported. Raises ModelPackageError naming anything unsupported.
    """
    root = bundle_root(source)
    weights_file = _check_weights_file(root, weights)
    config_path = next((root / "configs" / n for n in CONFIG_NAMES if (root / "configs" / n).is_file()), None)
    if config_path is None:
        raise refuse(f"{root.name} has no configs/inference.json (or .yaml)")
    meta_path = root / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise refuse(f"{root.name} has no configs/metadata.json")
    meta = load_config_file(meta_path)
    cfg = BundleConfig(root, load_config_file(config_path), f"configs/{config_path.name}")
    for key, value in (overrides or {}).items():
        cfg.set(str(key), json.loads(json.dumps(value)))

    network, target, kwargs = _network(cfg)
    pre, ignored = _preprocessing(cfg)
    inferer = _inferer(cfg)
    loaded = [k for s in pre if isinstance(s, LoadImage) for k in s.keys]
    post, ignored_post = _postprocessing(cfg, loaded)

    in_channels, out_channels = kwargs.get("in_channels", 1), kwargs.get("out_channels", 2)  # builders' defaults
    meta_in, meta_out = _meta_io(meta, "inputs", INPUT_KEY), _meta_io(meta, "outputs", OUTPUT_KEY)
    for what, section, count in (("input", meta_in, in_channels), ("output", meta_out, out_channels)):
        declared = section.get("num_channels")
        if isinstance(declared, int) and declared != count:
            raise refuse(f"metadata.json declares {declared} {what} channels but the network has {count}")
    inputs = _channels(pre, in_channels, meta_in)
    out_names = _channel_def(meta_out, out_channels) or [f"channel {i}" for i in range(out_channels)]
    if sum(isinstance(s, Activations) for s in post) > 1 or sum(isinstance(s, Invert) for s in post) > 1:
        raise refuse("postprocessing applies Activationsd or Invertd twice")
    regions = next((s for s in post if isinstance(s, RegionsToLabels)), None)
    if regions is not None and any(c >= out_channels for c, _ in regions.rules):
        raise refuse(f"the Lambdad in postprocessing reads channels the network ({out_channels}) does not have")

    return BundleSpec(
        root=str(root), config_file=f"configs/{config_path.name}",
        name=_text(meta.get("name")) or root.name, version=_text(meta.get("version")),
        description=_text(meta.get("description")), network=network, network_target=target, network_kwargs=kwargs,
        input_channels=inputs, modality=_text(meta_in.get("modality")), preprocessing=tuple(pre), inferer=inferer,
        postprocessing=tuple(post),
        output_channels=tuple(OutputChannel(i, n) for i, n in enumerate(out_names)),
        authors=_text(meta.get("authors")), copyright=_text(meta.get("copyright")),
        intended_use=_text(meta.get("intended_use")),
        references=tuple(_text(r) for r in meta.get("references", []) if _text(r))
        if isinstance(meta.get("references"), list) else ((_text(meta.get("references")),) if meta.get("references")
                                                          else ()),
        license_text=_read_text(root, "LICENSE", "LICENSE.txt", "LICENSE.md", "docs/LICENSE")
        or _text(meta.get("license")),
        data_license_text=_read_text(root, "docs/data_license.txt"),
        monai_version=_text(meta.get("monai_version")), weights_file=weights_file,
        ignored=tuple(ignored + ignored_post),
    )


def build_bundle_network(spec: BundleSpec) -> "torch.nn.Module":
    """The bundle's network, rebuilt from the allowlist (fresh weights, train mode)."""
    if spec.network in registry.ARCHITECTURES:
        return registry.build_network(spec.network, spec.network_kwargs)
    return monai_zoo.build_network(spec.network, spec.network_kwargs)


def load_bundle_weights(spec: BundleSpec) -> Tuple["torch.nn.Module", Dict[str, "torch.Tensor"]]:
    """Read ``models/model.pt`` weights-only and load it strictly into the rebuilt network.

    Returns ``(network in eval mode, state dict)``. Keys, shapes and buffers (BatchNorm
    running statistics included) must match exactly; a checkpoint that references anything
    beyond plain tensors is refused before anything in it is built.
    """
    from tumorseg_core.modelpkg.convert import read_checkpoint
    from tumorseg_core.modelpkg.package import load_state_dict_strict

    path = Path(spec.root) / spec.weights_file
    state = read_checkpoint(path)
    net = build_bundle_network(spec)
    load_state_dict_strict(net, state, f"{Path(spec.root).name}/{spec.weights_file}")
    return net.eval(), state


def open_bundle(source: PathLike, **kwargs: Any) -> Tuple[BundleSpec, "torch.nn.Module"]:
    """:func:`read_bundle` then :func:`load_bundle_weights`: ``(spec, network in eval mode)``."""
    spec = read_bundle(source, **kwargs)
    net, _ = load_bundle_weights(spec)
    return spec, net
