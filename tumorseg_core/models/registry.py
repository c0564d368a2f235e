"""The allowlist of network architectures a model package may name.

A manifest says ``"architecture": "unet3d"`` and ``"kwargs": {...}``; this module is
the only place that turns those strings into a ``torch.nn.Module``. Names map to
builder functions written out explicitly here (never a class looked up by a string
taken from a file), and kwargs are checked against the builder's signature before
anything is built.

Every network built here takes a float tensor of shape ``(B, C_in, z, y, x)`` and
returns logits of shape ``(B, C_out, z, y, x)`` (same spatial size) in eval mode, so
the predictor is always 3D. Window sizes must be multiples of
``ArchitectureSpec.size_divisor(kwargs)`` (in ``(z, y, x)`` order).

torch and MONAI are imported inside the builders only, so importing this module (as
the manifest validation in Slicer's UI process does) stays cheap.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.models import nnunet_networks, onnx_network
from tumorseg_core.models.monai_zoo import MONAI_ZOO_ARCHITECTURES

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

ZYX = Tuple[int, int, int]

_DEFAULT_ACT_BASIC = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
_DEFAULT_NORM_BASIC = ("instance", {"affine": True})


@dataclass(frozen=True)
class ArchitectureSpec:
    """One allowed architecture.

    Attributes:
        builder: function taking only keyword arguments (the manifest's ``kwargs``)
            and returning an ``nn.Module`` mapping ``(B, C_in, z, y, x)`` to
            ``(B, C_out, z, y, x)``.
        size_divisor: ``kwargs -> (z, y, x)``; every window side must be a multiple.
        description: one line for ``tumorseg models`` and the docs.
        spatial_dims: always 3 from the predictor's point of view (2D nets are wrapped).
    """

    builder: Callable[..., Any]
    size_divisor: Callable[[Dict[str, Any]], ZYX]
    description: str
    spatial_dims: int = 3


# --- builders (lazy imports keep the registry cheap) -------------------------------


def _build_unet3d(
    in_channels: int = 1,
    out_channels: int = 2,
    features: Tuple[int, ...] = (16, 32, 64, 128),
    norm: str = "instance",
    dropout: float = 0.0,
) -> torch.nn.Module:
    from tumorseg_core.models.unet3d import UNet3D

    return UNet3D(in_channels, out_channels, tuple(features), norm=norm, dropout=dropout)


def _build_unet2d(
    in_channels: int = 1,
    out_channels: int = 2,
    features: Tuple[int, ...] = (32, 32, 64, 128, 256, 32),
    act: Any = _DEFAULT_ACT_BASIC,
    norm: Any = _DEFAULT_NORM_BASIC,
    bias: bool = True,
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> torch.nn.Module:
    from tumorseg_core.models.unet2d import SliceUNet2D

    return SliceUNet2D(
        in_channels=in_channels, out_channels=out_channels, features=tuple(features), act=act,
        norm=norm, bias=bias, dropout=dropout, upsample=upsample,
    )


def _build_unet25d(
    in_channels: int = 1,
    out_channels: int = 2,
    context: int = 2,
    features: Tuple[int, ...] = (8, 16, 32, 64, 128, 8),
    act: Any = _DEFAULT_ACT_BASIC,
    norm: Any = _DEFAULT_NORM_BASIC,
    bias: bool = True,
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> torch.nn.Module:
    from tumorseg_core.models.unet25d import StackUNet25D

    return StackUNet25D(
        in_channels=in_channels, context=context, out_channels=out_channels, features=tuple(features),
        act=act, norm=norm, bias=bias, dropout=dropout, upsample=upsample,
    )


def _build_vnet(
    in_channels: int = 1,
    out_channels: int = 2,
    act: Any = ("elu", {"inplace": True}),
    dropout_prob_down: Any = 0.5,
    dropout_prob_up: Tuple[Any, Any] = (0.5, 0.5),
    dropout_dim: int = 3,
    bias: bool = False,
) -> torch.nn.Module:
    from tumorseg_core.models.vnet import build_vnet

    return build_vnet(
        in_channels=in_channels, out_channels=out_channels, act=act,
        dropout_prob_down=dropout_prob_down, dropout_prob_up=dropout_prob_up,
        dropout_dim=dropout_dim, bias=bias,
    )


def _build_segresnet(
    in_channels: int = 1,
    out_channels: int = 2,
    init_filters: int = 8,
    dropout_prob: Any = None,
    act: Any = ("RELU", {"inplace": True}),
    norm: Any = ("GROUP", {"num_groups": 8}),
    use_conv_final: bool = True,
    blocks_down: Tuple[int, ...] = (1, 2, 2, 4),
    blocks_up: Tuple[int, ...] = (1, 1, 1),
    upsample_mode: str = "nontrainable",
) -> torch.nn.Module:
    from tumorseg_core.models.segresnet import build_segresnet

    return build_segresnet(
        in_channels=in_channels, out_channels=out_channels, init_filters=init_filters,
        dropout_prob=dropout_prob, act=act, norm=norm, use_conv_final=use_conv_final,
        blocks_down=tuple(blocks_down), blocks_up=tuple(blocks_up), upsample_mode=upsample_mode,
    )


def _build_dynunet(
    kernel_size: Tuple[Any, ...],
    strides: Tuple[Any, ...],
    upsample_kernel_size: Tuple[Any, ...],
    in_channels: int = 1,
    out_channels: int = 2,
    filters: Any = None,
    dropout: Any = None,
    norm_name: Any = ("INSTANCE", {"affine": True}),
    act_name: Any = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
    deep_supervision: bool = False,
    deep_supr_num: int = 1,
    res_block: bool = False,
    trans_bias: bool = False,
) -> torch.nn.Module:
    from tumorseg_core.models.dynunet import build_dynunet

    return build_dynunet(
        in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
        strides=strides, upsample_kernel_size=upsample_kernel_size, filters=filters,
        dropout=dropout, norm_name=norm_name, act_name=act_name,
        deep_supervision=deep_supervision, deep_supr_num=deep_supr_num,
        res_block=res_block, trans_bias=trans_bias,
    )


# --- size divisors ----------------------------------------------------------------


def _iso(n: int) -> ZYX:
    return (n, n, n)


def _unet3d_divisor(kwargs: Dict[str, Any]) -> ZYX:
    return _iso(2 ** (len(kwargs.get("features", (16, 32, 64, 128))) - 1))


def _segresnet_divisor(kwargs: Dict[str, Any]) -> ZYX:
    return _iso(2 ** (len(kwargs.get("blocks_down", (1, 2, 2, 4))) - 1))


def _dynunet_divisor(kwargs: Dict[str, Any]) -> ZYX:
    # strides are in tensor order (z, y, x); an int means the same stride on all axes.
    total = [1, 1, 1]
    for stride in kwargs.get("strides", ()):
        per_axis = [int(stride)] * 3 if isinstance(stride, (int, float)) else [int(s) for s in stride]
        if len(per_axis) != 3:
            raise ModelPackageError("dynunet 'strides' entries must be an int or a list of 3 ints (z, y, x)")
        total = [t * s for t, s in zip(total, per_axis)]
    return (total[0], total[1], total[2])


ARCHITECTURES: Dict[str, ArchitectureSpec] = {
    "unet3d": ArchitectureSpec(
        _build_unet3d, _unet3d_divisor,
        "3D U-Net (Cicek et al. 2016): double 3x3x3 conv + norm + ReLU, max-pool down, transposed-conv up, skip concat",
    ),
    "vnet": ArchitectureSpec(
        _build_vnet, lambda kwargs: _iso(16),
        "V-Net (Milletari et al. 2016, MONAI): residual 5x5x5 stages, BatchNorm; in_channels must divide 16",
    ),
    "unet2d": ArchitectureSpec(
        _build_unet2d, lambda kwargs: (1, 16, 16),
        "2D U-Net (MONAI BasicUNet, spatial_dims=2) applied slice by slice along z",
    ),
    "unet25d": ArchitectureSpec(
        _build_unet25d, lambda kwargs: (1, 16, 16),
        "2.5D U-Net (MONAI BasicUNet, spatial_dims=2) seeing 2*context+1 neighbouring z slices as channels",
    ),
    "segresnet": ArchitectureSpec(
        _build_segresnet, _segresnet_divisor,
        "SegResNet (Myronenko 2018, MONAI): residual encoder, light decoder, GroupNorm",
    ),
    "dynunet": ArchitectureSpec(
        _build_dynunet, _dynunet_divisor,
        "DynUNet (MONAI, nnU-Net style): per-level kernel sizes and strides given in (z, y, x) order",
    ),
    "nnunet_plainconv": ArchitectureSpec(
        nnunet_networks.build_plainconv, nnunet_networks.size_divisor,
        "nnU-Net v2 PlainConvUNet (dynamic_network_architectures), kwargs as in the plans' arch_kwargs",
    ),
    "nnunet_resenc": ArchitectureSpec(
        nnunet_networks.build_resenc, nnunet_networks.size_divisor,
        "nnU-Net v2 ResidualEncoderUNet (ResEnc presets), kwargs as in the plans' arch_kwargs",
    ),
}
# An imported ONNX file (models/onnx_network.py): its bytes are the "weights", ONNX Runtime runs it.
ARCHITECTURES[onnx_network.ARCHITECTURE] = ArchitectureSpec(
    onnx_network.build_onnx_network, onnx_network.onnx_size_divisor,
    "an imported ONNX graph (tumorseg import model.onnx + JSON sidecar), run by ONNX Runtime on the CPU",
)
# MONAI networks as the Model Zoo's bundles define them (models/monai_zoo.py), in MONAI's key layout.
ARCHITECTURES.update({name: ArchitectureSpec(*entry) for name, entry in MONAI_ZOO_ARCHITECTURES.items()})


# --- kwargs validation --------------------------------------------------------------


def _check_json_value(value: Any, where: str) -> Any:
    """Return ``value`` with JSON lists turned into tuples; refuse non-JSON types."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelPackageError(f"kwargs value {where} is not a finite number; fix the manifest")
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_check_json_value(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelPackageError(f"kwargs key {where}.{k!r} is not a string; fix the manifest")
            out[k] = _check_json_value(v, f"{where}.{k}")
        return out
    raise ModelPackageError(
        f"kwargs value {where} has type {type(value).__name__}; only JSON types are allowed"
    )


def get_spec(name: str) -> ArchitectureSpec:
    """Return the spec for an allowed architecture name; refuse anything else."""
    spec = ARCHITECTURES.get(name) if isinstance(name, str) else None
    if spec is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelPackageError(f"unknown architecture {name!r}; known architectures: {known}")
    return spec


def validate_kwargs(name: str, kwargs: Any) -> Dict[str, Any]:
    """Check ``kwargs`` for architecture ``name`` without importing torch.

    Returns a new dict (lists converted to tuples). Raises ModelPackageError for an
    unknown architecture, a non-dict or non-JSON kwargs, a kwarg the builder does not
    take, or a missing required one.
    """
    spec = get_spec(name)
    if not isinstance(kwargs, dict):
        raise ModelPackageError(f"'kwargs' for {name} must be a JSON object, got {type(kwargs).__name__}")
    params = inspect.signature(spec.builder).parameters
    for key in kwargs:
        if key not in params:
            allowed = ", ".join(params)
            raise ModelPackageError(f"architecture {name!r} takes no kwarg {key!r}; allowed: {allowed}")
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise ModelPackageError(f"architecture {name!r} needs kwarg(s) {', '.join(missing)}; add them to 'kwargs'")
    return {k: _check_json_value(v, k) for k, v in kwargs.items()}


def effective_kwargs(name: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``kwargs`` validated and completed with the builder's defaults (no torch import)."""
    checked = validate_kwargs(name, kwargs)
    params = inspect.signature(get_spec(name).builder).parameters
    full = {p: v.default for p, v in params.items() if v.default is not inspect.Parameter.empty}
    full.update(checked)
    return full


def size_divisor(name: str, kwargs: Dict[str, Any]) -> ZYX:
    """Window sides ``(z, y, x)`` must be multiples of this for ``name`` with ``kwargs``."""
    return get_spec(name).size_divisor(effective_kwargs(name, kwargs))


def build_network(name: str, kwargs: Dict[str, Any]) -> torch.nn.Module:
    """Build an allowed architecture from its manifest name and JSON kwargs.

    The module maps ``(B, C_in, z, y, x)`` float32 to ``(B, C_out, z, y, x)`` logits.
    It is returned in train mode with freshly initialised weights; callers load a
    state dict and call ``.eval()``. Bad names or kwargs raise ModelPackageError.
    """
    checked = validate_kwargs(name, kwargs)
    spec = get_spec(name)
    try:
        return spec.builder(**checked)
    except ModelPackageError:
        raise
    except (TypeError, ValueError, AssertionError, KeyError, IndexError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelPackageError(f"architecture {name!r} rejected its kwargs: {first}") from exc
