"""nnU-Net v2's networks, rebuilt from a plans file's ``architecture`` through allowlists.

An nnU-Net v2 ``plans.json`` names its network class and the classes some of its
arguments need (``_kw_requires_import``: ``conv_op``, ``norm_op``, ``dropout_op``,
``nonlin``) as dotted strings. nnU-Net imports whatever those strings say; TumorSeg never
does. The class names map to real objects only through the explicit dicts below
(:data:`NETWORK_CLASSES`, :data:`OP_CLASSES`, :data:`BLOCK_CLASSES`); any other name is
refused with a ModelPackageError naming it.

The registry (``registry.py``) builds these as ``nnunet_plainconv`` and ``nnunet_resenc``
from JSON kwargs: the plans' ``arch_kwargs`` as they are (class names kept as strings),
plus ``in_channels`` and ``out_channels``. The networks are built without deep
supervision, as nnU-Net's predictor builds them; the state dict is the same either way.
Their window and axes are nnU-Net's array order (after ``transpose_forward``).
torch and ``dynamic_network_architectures`` are imported only inside the builders.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from tumorseg_core.errors import ModelPackageError

#: The network classes a plans file may name (nnU-Net's own names), by registry name.
NETWORK_CLASSES: Dict[str, str] = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "nnunet_plainconv",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "nnunet_resenc",
}
#: The arguments whose values name classes (nnU-Net's ``_kw_requires_import``, plus ResEnc's ``block``).
CLASS_ARGUMENTS = ("conv_op", "norm_op", "dropout_op", "nonlin", "block")
# Both spellings nnU-Net writes: the public alias and the defining module.
_TORCH_OPS = {
    "Conv2d": "conv", "Conv3d": "conv",
    "InstanceNorm2d": "instancenorm", "InstanceNorm3d": "instancenorm",
    "BatchNorm2d": "batchnorm", "BatchNorm3d": "batchnorm",
    "Dropout": "dropout", "Dropout2d": "dropout", "Dropout3d": "dropout",
    "LeakyReLU": "activation", "ReLU": "activation", "ELU": "activation", "GELU": "activation",
    "PReLU": "activation",
}
#: Allowed class names for ``conv_op``/``norm_op``/``dropout_op``/``nonlin`` -> torch.nn attribute.
OP_CLASSES: Dict[str, str] = {}
for _name, _module in _TORCH_OPS.items():
    OP_CLASSES[f"torch.nn.{_name}"] = _name
    OP_CLASSES[f"torch.nn.modules.{_module}.{_name}"] = _name
#: Allowed ResEnc ``block`` names -> class name in dynamic_network_architectures.building_blocks.residual.
BLOCK_CLASSES: Dict[str, str] = {
    name: name.rsplit(".", 1)[1] for name in (
        "dynamic_network_architectures.building_blocks.residual.BasicBlockD",
        "dynamic_network_architectures.building_blocks.residual.BottleneckD",
    )
}
_OP_ROLES = {
    "conv_op": ("Conv2d", "Conv3d"),
    "norm_op": ("InstanceNorm2d", "InstanceNorm3d", "BatchNorm2d", "BatchNorm3d"),
    "dropout_op": ("Dropout", "Dropout2d", "Dropout3d"),
    "nonlin": ("LeakyReLU", "ReLU", "ELU", "GELU", "PReLU"),
}


def resolve_op(argument: str, name: Any) -> Any:
    """The torch class an allowlisted ``name`` stands for in ``argument`` (None stays None)."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ModelPackageError(f"nnU-Net network argument {argument} must name a class as a string, got {name!r}")
    if argument == "block":
        if name not in BLOCK_CLASSES:
            raise ModelPackageError(f"nnU-Net block {name!r} is not supported (allowed: {', '.join(BLOCK_CLASSES)})")
        from dynamic_network_architectures.building_blocks import residual

        return getattr(residual, BLOCK_CLASSES[name])  # a fixed name from the dict above
    short = OP_CLASSES.get(name)
    if short is None or short not in _OP_ROLES.get(argument, ()):
        allowed = ", ".join(f"torch.nn.{n}" for n in _OP_ROLES.get(argument, ()))
        raise ModelPackageError(f"nnU-Net network argument {argument}={name!r} is not allowed (allowed: {allowed})")
    import torch.nn

    return getattr(torch.nn, short)  # a fixed name from the dict above


def is_2d(conv_op: Any) -> bool:
    """Whether ``conv_op`` (a class name from the plans) is a 2D convolution."""
    return OP_CLASSES.get(conv_op) == "Conv2d"


def stride_product(strides: Sequence[Any], conv_op: Any) -> Tuple[int, int, int]:
    """Product of the per-stage strides per axis, (z, y, x) in nnU-Net's array order (z = 1 for 2D)."""
    dims = 2 if is_2d(conv_op) else 3
    total = [1] * dims
    for stride in strides:
        per_axis = [int(stride)] * dims if isinstance(stride, (int, float)) else [int(s) for s in stride]
        if len(per_axis) != dims:
            raise ModelPackageError(f"nnU-Net strides entry {stride!r} must have {dims} values")
        total = [t * s for t, s in zip(total, per_axis)]
    if dims == 2:
        total = [1, *total]
    return (total[0], total[1], total[2])


def _resolved(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        if key in CLASS_ARGUMENTS:
            value = resolve_op(key, value)
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[key] = value
    return out


def _finish(net: Any, conv_op: str) -> Any:
    """A 2D network also takes the registry's (B, C, z, y, x) windows (slice by slice); state dict unchanged."""
    if not is_2d(conv_op):
        return net
    forward_2d = net.forward

    def forward(x: Any) -> Any:
        if x.dim() == 4:  # nnU-Net's own 2D windows
            return forward_2d(x)
        b, c, z, h, w = x.shape
        out = forward_2d(x.permute(0, 2, 1, 3, 4).reshape(b * z, c, h, w))
        return out.reshape(b, z, out.shape[1], h, w).permute(0, 2, 1, 3, 4)

    net.forward = forward
    return net


def build_plainconv(
    n_stages: int,
    features_per_stage: Any,
    conv_op: str,
    kernel_sizes: Any,
    strides: Any,
    n_conv_per_stage: Any,
    n_conv_per_stage_decoder: Any,
    in_channels: int = 1,
    out_channels: int = 2,
    conv_bias: bool = False,
    norm_op: Optional[str] = None,
    norm_op_kwargs: Optional[Dict[str, Any]] = None,
    dropout_op: Optional[str] = None,
    dropout_op_kwargs: Optional[Dict[str, Any]] = None,
    nonlin: Optional[str] = None,
    nonlin_kwargs: Optional[Dict[str, Any]] = None,
    nonlin_first: bool = False,
) -> Any:
    """nnU-Net's ``PlainConvUNet`` (dynamic_network_architectures) from its plans kwargs."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    args = _resolved(dict(
        n_stages=n_stages, features_per_stage=features_per_stage, conv_op=conv_op, kernel_sizes=kernel_sizes,
        strides=strides, n_conv_per_stage=n_conv_per_stage, n_conv_per_stage_decoder=n_conv_per_stage_decoder,
        conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
        dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, nonlin_first=nonlin_first,
    ))
    net = PlainConvUNet(input_channels=in_channels, num_classes=out_channels, deep_supervision=False, **args)
    return _finish(net, conv_op)


def build_resenc(
    n_stages: int,
    features_per_stage: Any,
    conv_op: str,
    kernel_sizes: Any,
    strides: Any,
    n_blocks_per_stage: Any,
    n_conv_per_stage_decoder: Any,
    in_channels: int = 1,
    out_channels: int = 2,
    conv_bias: bool = False,
    norm_op: Optional[str] = None,
    norm_op_kwargs: Optional[Dict[str, Any]] = None,
    dropout_op: Optional[str] = None,
    dropout_op_kwargs: Optional[Dict[str, Any]] = None,
    nonlin: Optional[str] = None,
    nonlin_kwargs: Optional[Dict[str, Any]] = None,
    block: str = "dynamic_network_architectures.building_blocks.residual.BasicBlockD",
    bottleneck_channels: Any = None,
    stem_channels: Optional[int] = None,
) -> Any:
    """nnU-Net's ``ResidualEncoderUNet`` (ResEnc presets) from its plans kwargs."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    args = _resolved(dict(
        n_stages=n_stages, features_per_stage=features_per_stage, conv_op=conv_op, kernel_sizes=kernel_sizes,
        strides=strides, n_blocks_per_stage=n_blocks_per_stage, n_conv_per_stage_decoder=n_conv_per_stage_decoder,
        conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
        dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, block=block,
        bottleneck_channels=bottleneck_channels, stem_channels=stem_channels,
    ))
    net = ResidualEncoderUNet(input_channels=in_channels, num_classes=out_channels, deep_supervision=False, **args)
    return _finish(net, conv_op)


def size_divisor(kwargs: Dict[str, Any]) -> Tuple[int, int, int]:
    """Window sides (z, y, x) must be multiples of the product of the strides."""
    return stride_product(kwargs.get("strides", ()), kwargs.get("conv_op"))
