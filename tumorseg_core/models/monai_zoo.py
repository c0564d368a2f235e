"""MONAI networks as MONAI Model Zoo bundles build them, for the architecture registry.

Each entry of :data:`MONAI_ZOO_ARCHITECTURES` is ``(builder, size_divisor, description)``,
the three fields of :class:`tumorseg_core.models.registry.ArchitectureSpec`, so that the
registry can take them over with two lines (this module does not import the registry:
that would be an import circle)::

    from tumorseg_core.models.monai_zoo import MONAI_ZOO_ARCHITECTURES
    ARCHITECTURES.update({n: ArchitectureSpec(*e) for n, e in MONAI_ZOO_ARCHITECTURES.items()})

Until then :func:`validate_kwargs`, :func:`size_divisor` and :func:`build_network` here do
the registry's job for these names.

**Axis order.** A bundle's network runs on MONAI's tensors: ``(B, C, i, j, k)``, the image's
index axes in file order (after ``Orientationd``, the axes of its ``axcodes``), whereas every
TumorSeg network takes ``(B, C, z, y, x)`` (numpy/SimpleITK order, the same three axes
reversed). The networks built here are *subclasses* of MONAI's classes whose ``forward``
reverses the three spatial axes on the way in and out, so their state-dict keys are exactly
MONAI's (a bundle's ``models/model.pt`` loads strictly, BatchNorm statistics included) and
TumorSeg's ``(z, y, x)`` = MONAI's ``(k, j, i)``. The kwargs are MONAI's own, in MONAI's
``(i, j, k)`` order (e.g. per-axis ``strides``); :func:`size_divisor` answers in TumorSeg's
``(z, y, x)`` order.

Kwargs are checked before anything is built: only the keys each builder lists, only JSON
types, numbers in range, layer names as plain identifiers (MONAI looks them up in its own
layer factories, never imports them). torch and MONAI are imported inside the builders only.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

from tumorseg_core.errors import ModelPackageError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

ZYX = Tuple[int, int, int]
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

__all__ = [
    "MONAI_ZOO_ARCHITECTURES", "build_network", "reversed_axes_class", "size_divisor", "validate_kwargs",
]


# --- value checks (JSON types only) ---------------------------------------------------


def _fail(arch: str, key: str, why: str) -> ModelPackageError:
    return ModelPackageError(f"architecture {arch!r} kwarg {key!r} {why}")


def _int(arch: str, key: str, value: Any, low: int = 1, high: int = 1 << 16) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(arch, key, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def _number(arch: str, key: str, value: Any, low: float = 0.0, high: float = 1e6) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise _fail(arch, key, f"must be a number from {low} to {high}, got {value!r}")
    return float(value)


def _bool(arch: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(arch, key, f"must be true or false, got {value!r}")
    return value


def _ints(arch: str, key: str, value: Any, length: Optional[int] = None, low: int = 1) -> Tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value or (length is not None and len(value) != length):
        size = f"{length} " if length is not None else ""
        raise _fail(arch, key, f"must be a list of {size}integers, got {value!r}")
    return tuple(_int(arch, f"{key}[{i}]", v, low) for i, v in enumerate(value))


def _int_or_3(arch: str, key: str, value: Any, low: int = 1) -> Any:
    """An int, or a list of 3 ints (one per spatial axis, MONAI's order)."""
    if isinstance(value, (list, tuple)):
        return _ints(arch, key, value, 3, low)
    return _int(arch, key, value, low)


def _json(arch: str, key: str, value: Any) -> Any:
    """A plain JSON value (lists become tuples); refuses anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(arch, key, "holds a number that is not finite")
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_json(arch, f"{key}[{i}]", v) for i, v in enumerate(value))
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json(arch, f"{key}.{k}", v) for k, v in value.items()}
    raise _fail(arch, key, f"has type {type(value).__name__}; only JSON types are allowed")


def _layer(arch: str, key: str, value: Any) -> Any:
    """A MONAI layer spec: ``"name"`` or ``["name", {json args}]`` (looked up in MONAI's factories)."""
    if isinstance(value, str) and _NAME_RE.match(value):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) \
            and _NAME_RE.match(value[0]) and isinstance(value[1], dict):
        return (value[0], _json(arch, key, value[1]))
    raise _fail(arch, key, f"must be a layer name or [name, {{arguments}}], got {value!r}")


def _choice(arch: str, key: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise _fail(arch, key, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _three_d(arch: str, spatial_dims: Any) -> None:
    if spatial_dims != 3 or isinstance(spatial_dims, bool):
        raise _fail(arch, "spatial_dims", f"must be 3 (TumorSeg runs 3D networks only), got {spatial_dims!r}")


# --- the axis-reversing subclasses ----------------------------------------------------


class _ReversedAxes:
    """Mixin put in front of a MONAI network class: ``(B, C, z, y, x)`` in and out.

    MONAI's network runs on ``(B, C, x, y, z)`` (the three spatial axes reversed); the
    mixin adds no parameters or buffers, so the state-dict keys are the MONAI class's.
    """

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        if x.ndim != 5:
            raise ValueError(f"{type(self).__name__} expects (B, C, z, y, x), got shape {tuple(x.shape)}")
        out = super().forward(x.permute(0, 1, 4, 3, 2))  # type: ignore[misc]
        return out.permute(0, 1, 4, 3, 2).contiguous()


_CLASSES: Dict[type, type] = {}


def reversed_axes_class(base: type) -> type:
    """``base`` (a MONAI network class) with :class:`_ReversedAxes` in front; one class per base."""
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(f"{base.__name__}ZYX", (_ReversedAxes, base), {
            "__doc__": f"MONAI {base.__name__} taking (B, C, z, y, x); state-dict keys as MONAI's.",
            "__module__": __name__,
        })
        _CLASSES[base] = cls
    return cls


# --- builders (the registry's style: keyword arguments = the allowed kwargs) -------------


def _build_monai_unet(
    in_channels: int,
    out_channels: int,
    channels: Tuple[int, ...],
    strides: Tuple[Any, ...],
    spatial_dims: int = 3,
    kernel_size: Any = 3,
    up_kernel_size: Any = 3,
    num_res_units: int = 0,
    act: Any = "PRELU",
    norm: Any = "INSTANCE",
    dropout: float = 0.0,
    bias: bool = True,
    adn_ordering: str = "NDA",
) -> torch.nn.Module:
    from monai.networks.nets import UNet

    a = "monai_unet"
    _three_d(a, spatial_dims)
    channels = _ints(a, "channels", channels)
    strides = tuple(_int_or_3(a, f"strides[{i}]", s) for i, s in enumerate(_seq(a, "strides", strides)))
    if len(channels) < 2 or len(strides) != len(channels) - 1:
        raise _fail(a, "strides", f"needs len(channels) - 1 = {len(channels) - 1} entries and channels >= 2 entries")
    if not isinstance(adn_ordering, str) or not adn_ordering or set(adn_ordering.upper()) - set("NDA"):
        raise _fail(a, "adn_ordering", f"must be made of the letters N, D and A, got {adn_ordering!r}")
    return reversed_axes_class(UNet)(
        spatial_dims=3, in_channels=_int(a, "in_channels", in_channels), out_channels=_int(a, "out_channels", out_channels),
        channels=channels, strides=strides, kernel_size=_int_or_3(a, "kernel_size", kernel_size),
        up_kernel_size=_int_or_3(a, "up_kernel_size", up_kernel_size),
        num_res_units=_int(a, "num_res_units", num_res_units, low=0, high=64), act=_layer(a, "act", act),
        norm=_layer(a, "norm", norm), dropout=_number(a, "dropout", dropout, 0.0, 1.0), bias=_bool(a, "bias", bias),
        adn_ordering=adn_ordering,
    )


def _build_monai_segresnet(
    spatial_dims: int = 3,
    init_filters: int = 8,
    in_channels: int = 1,
    out_channels: int = 2,
    dropout_prob: Any = None,
    act: Any = ("RELU", {"inplace": True}),
    norm: Any = ("GROUP", {"num_groups": 8}),
    norm_name: str = "",
    num_groups: int = 8,
    use_conv_final: bool = True,
    blocks_down: Tuple[int, ...] = (1, 2, 2, 4),
    blocks_up: Tuple[int, ...] = (1, 1, 1),
    upsample_mode: str = "nontrainable",
) -> torch.nn.Module:
    from monai.networks.nets import SegResNet

    a = "monai_segresnet"
    _three_d(a, spatial_dims)
    blocks_down = _ints(a, "blocks_down", blocks_down)
    blocks_up = _ints(a, "blocks_up", blocks_up)
    if len(blocks_up) != len(blocks_down) - 1:
        raise _fail(a, "blocks_up", f"needs len(blocks_down) - 1 = {len(blocks_down) - 1} entries")
    if norm_name != "" and not (isinstance(norm_name, str) and _NAME_RE.match(norm_name)):
        raise _fail(a, "norm_name", f"must be a layer name, got {norm_name!r}")
    return reversed_axes_class(SegResNet)(
        spatial_dims=3, init_filters=_int(a, "init_filters", init_filters), in_channels=_int(a, "in_channels", in_channels),
        out_channels=_int(a, "out_channels", out_channels),
        dropout_prob=None if dropout_prob is None else _number(a, "dropout_prob", dropout_prob, 0.0, 1.0),
        act=_layer(a, "act", act), norm=_layer(a, "norm", norm), norm_name=norm_name,
        num_groups=_int(a, "num_groups", num_groups), use_conv_final=_bool(a, "use_conv_final", use_conv_final),
        blocks_down=blocks_down, blocks_up=blocks_up,
        upsample_mode=_choice(a, "upsample_mode", upsample_mode, ("deconv", "nontrainable", "pixelshuffle")),
    )


def _build_monai_basicunet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    features: Tuple[int, ...] = (32, 32, 64, 128, 256, 32),
    act: Any = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
    norm: Any = ("instance", {"affine": True}),
    bias: bool = True,
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    a = "monai_basicunet"
    _three_d(a, spatial_dims)
    return reversed_axes_class(BasicUNet)(
        spatial_dims=3, in_channels=_int(a, "in_channels", in_channels), out_channels=_int(a, "out_channels", out_channels),
        features=_ints(a, "features", features, 6), act=_layer(a, "act", act), norm=_layer(a, "norm", norm),
        bias=_bool(a, "bias", bias), dropout=_number(a, "dropout", dropout, 0.0, 1.0),
        upsample=_choice(a, "upsample", upsample, ("deconv", "pixelshuffle", "nontrainable")),
    )


def _build_monai_swinunetr(
    in_channels: int,
    out_channels: int,
    img_size: Any = None,
    spatial_dims: int = 3,
    patch_size: int = 2,
    depths: Tuple[int, ...] = (2, 2, 2, 2),
    num_heads: Tuple[int, ...] = (3, 6, 12, 24),
    window_size: Any = 7,
    qkv_bias: bool = True,
    mlp_ratio: float = 4.0,
    feature_size: int = 24,
    norm_name: Any = "instance",
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    dropout_path_rate: float = 0.0,
    normalize: bool = True,
    patch_norm: bool = False,
    use_checkpoint: bool = False,
    downsample: str = "merging",
    use_v2: bool = False,
) -> torch.nn.Module:
    """SwinUNETR. ``img_size`` (older bundles, e.g. swin_unetr_btcv_segmentation: 96) is
    accepted and checked but not passed on: MONAI >= 1.5 removed it (the network never
    depended on it); ``use_checkpoint`` only trades memory for time in training."""
    from monai.networks.nets import SwinUNETR

    a = "monai_swinunetr"
    _three_d(a, spatial_dims)
    patch = _int(a, "patch_size", patch_size, 1, 16)
    if img_size is not None:
        sizes = _int_or_3(a, "img_size", img_size)
        for side in sizes if isinstance(sizes, tuple) else (sizes,):
            if side % patch ** 5:
                raise _fail(a, "img_size", f"must be a multiple of patch_size**5 = {patch ** 5}, got {img_size!r}")
    depths = _ints(a, "depths", depths)
    num_heads = _ints(a, "num_heads", num_heads)
    if len(depths) != 4 or len(num_heads) != 4:
        raise _fail(a, "depths", "and 'num_heads' must have 4 entries each (MONAI's SwinUNETR has 4 stages)")
    _bool(a, "use_checkpoint", use_checkpoint)
    size = _int(a, "feature_size", feature_size)
    if size % 12:
        raise _fail(a, "feature_size", f"must be a multiple of 12, got {size}")
    return reversed_axes_class(SwinUNETR)(
        in_channels=_int(a, "in_channels", in_channels), out_channels=_int(a, "out_channels", out_channels),
        patch_size=patch, depths=depths, num_heads=num_heads, window_size=_int_or_3(a, "window_size", window_size),
        qkv_bias=_bool(a, "qkv_bias", qkv_bias), mlp_ratio=_number(a, "mlp_ratio", mlp_ratio, 0.0, 64.0),
        feature_size=size, norm_name=_layer(a, "norm_name", norm_name),
        drop_rate=_number(a, "drop_rate", drop_rate, 0.0, 1.0),
        attn_drop_rate=_number(a, "attn_drop_rate", attn_drop_rate, 0.0, 1.0),
        dropout_path_rate=_number(a, "dropout_path_rate", dropout_path_rate, 0.0, 1.0),
        normalize=_bool(a, "normalize", normalize), patch_norm=_bool(a, "patch_norm", patch_norm),
        use_checkpoint=False, spatial_dims=3,
        downsample=_choice(a, "downsample", downsample, ("merging", "mergingv2")), use_v2=_bool(a, "use_v2", use_v2),
    )


def _seq(arch: str, key: str, value: Any) -> Tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise _fail(arch, key, f"must be a list, got {value!r}")
    return tuple(value)


# --- size divisors, (z, y, x) = MONAI's (k, j, i) ------------------------------------------


def _axes(value: Any) -> Tuple[int, int, int]:
    """An int or 3 ints in MONAI (i, j, k) order -> (i, j, k)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 3:
            raise ModelPackageError(f"expected 3 per-axis values, got {list(value)!r}")
        return (int(value[0]), int(value[1]), int(value[2]))
    return (int(value), int(value), int(value))


def _monai_unet_divisor(kwargs: Dict[str, Any]) -> ZYX:
    total = [1, 1, 1]
    for stride in kwargs.get("strides", ()):
        total = [t * s for t, s in zip(total, _axes(stride))]
    return (total[2], total[1], total[0])


def _monai_segresnet_divisor(kwargs: Dict[str, Any]) -> ZYX:
    n = 2 ** (len(kwargs.get("blocks_down", (1, 2, 2, 4))) - 1)
    return (n, n, n)


def _monai_basicunet_divisor(kwargs: Dict[str, Any]) -> ZYX:
    return (16, 16, 16)  # four 2x max-poolings


def _monai_swinunetr_divisor(kwargs: Dict[str, Any]) -> ZYX:
    n = int(kwargs.get("patch_size", 2)) ** 5  # patch embedding, then four 2x patch mergings
    return (n, n, n)


MONAI_ZOO_ARCHITECTURES: Dict[str, Tuple[Callable[..., Any], Callable[[Dict[str, Any]], ZYX], str]] = {
    "monai_unet": (
        _build_monai_unet, _monai_unet_divisor,
        "MONAI UNet (residual units; spleen_ct_segmentation), MONAI Zoo axis order, MONAI's state-dict keys",
    ),
    "monai_segresnet": (
        _build_monai_segresnet, _monai_segresnet_divisor,
        "MONAI SegResNet (brats_mri_segmentation, wholeBody_ct_segmentation), MONAI Zoo axis order",
    ),
    "monai_basicunet": (
        _build_monai_basicunet, _monai_basicunet_divisor,
        "MONAI BasicUNet, 3D, MONAI Zoo axis order",
    ),
    "monai_swinunetr": (
        _build_monai_swinunetr, _monai_swinunetr_divisor,
        "MONAI SwinUNETR (swin_unetr_btcv_segmentation), MONAI Zoo axis order; sides multiples of patch_size**5",
    ),
}


# --- the registry's three functions, for these names only ------------------------------------


def _entry(name: str) -> Tuple[Callable[..., Any], Callable[[Dict[str, Any]], ZYX], str]:
    entry = MONAI_ZOO_ARCHITECTURES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ModelPackageError(f"unknown MONAI architecture {name!r}; known: {', '.join(sorted(MONAI_ZOO_ARCHITECTURES))}")
    return entry


def validate_kwargs(name: str, kwargs: Any) -> Dict[str, Any]:
    """The registry's generic check for ``name``: a dict of JSON values whose keys the builder takes.

    Returns a new dict (lists turned into tuples). Value ranges are checked when building.
    """
    import inspect

    builder = _entry(name)[0]
    if not isinstance(kwargs, dict):
        raise ModelPackageError(f"'kwargs' for {name} must be a JSON object, got {type(kwargs).__name__}")
    params = inspect.signature(builder).parameters
    for key in kwargs:
        if key not in params:
            raise ModelPackageError(f"architecture {name!r} takes no kwarg {key!r}; allowed: {', '.join(params)}")
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise ModelPackageError(f"architecture {name!r} needs kwarg(s) {', '.join(missing)}")
    return {k: _json(name, k, v) for k, v in kwargs.items()}


def size_divisor(name: str, kwargs: Dict[str, Any]) -> ZYX:
    """Window sides ``(z, y, x)`` must be multiples of this (defaults filled in as the registry does)."""
    import inspect

    builder, divisor, _ = _entry(name)
    full = {p: v.default for p, v in inspect.signature(builder).parameters.items()
            if v.default is not inspect.Parameter.empty}
    full.update(validate_kwargs(name, kwargs))
    return divisor(full)


def build_network(name: str, kwargs: Dict[str, Any]) -> torch.nn.Module:
    """Build ``name`` from JSON kwargs, as ``registry.build_network`` will once registered."""
    checked = validate_kwargs(name, kwargs)
    try:
        return _entry(name)[0](**checked)
    except ModelPackageError:
        raise
    except (TypeError, ValueError, AssertionError, KeyError, IndexError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelPackageError(f"architecture {name!r} rejected its kwargs: {first}") from exc
