"""nnU-Net's 3D U-Nets run slab by slab along z: the same arithmetic in a fraction of the memory.

A ``PlainConvUNet`` or ``ResidualEncoderUNet`` window of nnU-Net's default plans (32
features at full resolution, 128³ patch) holds several 256 MiB activations at once in
torch eager: a convolution's input and output, the up-sampled tensor and its
concatenation with the skip (512 MiB), and the layout copies oneDNN makes of them. Here
every layer whose output is large runs over z-slabs instead:

- a convolution's output slab ``[o0, o1)`` reads input ``[o0·s - p, (o1 - 1)·s - p + k)``
  (zero rows added at the volume's ends), so no output voxel is computed twice and none
  differs in what it sums;
- elementwise layers (non-linearity, eval-mode dropout and batch norm) run on each slab in
  place;
- instance norm needs the whole channel's statistics: they are summed over the slabs in
  float64 while the slabs are made, then applied slab by slab in place;
- a decoder stage's first convolution reads ``cat(transposed_conv(below), skip)`` slab by
  slab (a kernel = stride transposed convolution maps each input row to its own output
  rows), so neither the up-sampled tensor nor the concatenation exists whole; each skip
  is released once its decoder stage has read it.

Blocks and layers this module does not know (squeeze-excitation, stochastic depth, a
transposed convolution that overlaps, 2D networks) and small tensors run through the
module itself, unchanged. Results equal the module's own forward up to float32 summation
order in instance norm (measured max |logit difference| ~1e-5 on nnU-Net's default plan).

    >>> logits = slab_forward(network, window)   # (B, C, z, y, x) -> (B, K, z, y, x)

torch and dynamic_network_architectures are imported inside the functions.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

#: A layer's output runs slab-wise when it holds more than this many bytes.
LARGE_BYTES = 48 * 2**20
#: Bytes of output per slab (sets the slab depth for each layer's channels and plane) ...
SLAB_BYTES = 16 * 2**20
#: ... but never fewer rows than this: a thin slab re-reads its halo rows too often (4 MiB slabs,
#: 2 rows of 32 x 128², ran the window 2.2x slower than 16 MiB slabs on a 2-core AVX2 CPU).
MIN_ROWS = 8

# A source of input rows: (z0, z1) -> (B, C, z1 - z0, y, x) for 0 <= z0 < z1 <= depth.
Rows = Callable[[int, int], Any]


def slab_forward(network: Any, x: Any) -> Any:
    """``network(x)`` for nnU-Net's 3D ``PlainConvUNet`` / ``ResidualEncoderUNet``, slab-wise.

    Args:
        network: an eval-mode nnU-Net U-Net without deep supervision (any other module,
            2D networks included, is simply called).
        x: (B, C, z, y, x) float32 window.

    Returns:
        (B, K, z, y, x) logits.
    """
    import torch

    if not _is_3d_unet(network):
        return network(x)
    encoder, decoder = network.encoder, network.decoder
    with torch.inference_mode():
        if getattr(encoder, "stem", None) is not None:
            x = run(encoder.stem, x)
        skips: List[Any] = []
        for stage in encoder.stages:
            x = run(stage, x)
            skips.append(x)
        del x
        below = skips.pop()
        for s, stage in enumerate(decoder.stages):
            below = _decoder_stage(decoder.transpconvs[s], stage, below, skips)
        return run(decoder.seg_layers[-1], below)


class SlabUNet:
    """A network seen through :func:`slab_forward` (what nnU-Net's window loop calls)."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def eval(self) -> "SlabUNet":
        self.network.eval()
        return self

    def __call__(self, x: Any) -> Any:
        return slab_forward(self.network, x)


def run(module: Any, x: Any) -> Any:
    """``module(x)`` with the blocks this module knows run slab-wise where their output is large."""
    import torch.nn as nn
    from dynamic_network_architectures.building_blocks import residual, simple_conv_blocks

    if isinstance(module, nn.Sequential):
        for child in module:
            x = run(child, x)
        return x
    if isinstance(module, simple_conv_blocks.StackedConvBlocks):
        return run(module.convs, x)
    if isinstance(module, residual.StackedResidualBlocks):
        return run(module.blocks, x)
    if isinstance(module, simple_conv_blocks.ConvDropoutNormReLU):
        layers = list(module.all_modules)
        return conv_layers(layers[0], layers[1:], _tensor_rows(x), x.shape)
    if isinstance(module, nn.Conv3d):
        return conv_layers(module, [], _tensor_rows(x), x.shape)
    if isinstance(module, (residual.BasicBlockD, residual.BottleneckD)) and _plain_residual(module):
        return _residual_block(module, x)
    return module(x)


def conv_layers(conv: Any, after: Sequence[Any], rows: Rows, in_shape: Sequence[int]) -> Any:
    """``after(conv(input))`` where ``rows`` gives the input's z-rows; slab-wise when the output is large.

    Args:
        conv: a ``Conv3d`` (zero padding, no dilation or groups; otherwise it runs whole).
        after: the layers that follow it (dropout, norm, non-linearity, in order).
        rows: the input's rows (z0, z1) -> (B, C, z1 - z0, y, x).
        in_shape: the input's shape (B, C, z, y, x).
    """
    import torch
    import torch.nn.functional as F

    out_shape = _conv_out_shape(conv, in_shape)
    slabbable = _slabbable_conv(conv) and all(_elementwise(m) or _instance_norm(m) for m in after)
    if not slabbable or _bytes(out_shape) <= LARGE_BYTES:
        y = conv(rows(0, int(in_shape[2])))
        for layer in after:
            y = layer(y)
        return y
    (k, _, _), (s, sy, sx), (p, py, px) = conv.kernel_size, conv.stride, conv.padding
    depth = int(in_shape[2])
    out = torch.empty(out_shape, dtype=torch.float32)
    groups = _split_at_norms(after)
    stats = _Stats(out_shape) if groups[0][1] is not None else None
    for o0, o1 in slabs(out_shape):
        i0, i1 = o0 * s - p, (o1 - 1) * s - p + k
        piece = rows(max(i0, 0), min(i1, depth))
        if i0 < 0 or i1 > depth:
            piece = F.pad(piece, (0, 0, 0, 0, max(-i0, 0), max(i1 - depth, 0)))
        y = F.conv3d(piece, conv.weight, conv.bias, (s, sy, sx), (0, py, px))
        del piece
        y = _apply(groups[0][0], y)
        if stats is not None:
            stats.add(y)
        out[:, :, o0:o1] = y
        del y
    for g in range(1, len(groups)):
        norm = groups[g - 1][1]
        scale, shift = stats.affine(norm)
        stats = _Stats(out_shape) if groups[g][1] is not None else None
        for o0, o1 in slabs(out_shape):
            view = out[:, :, o0:o1]
            view.mul_(scale).add_(shift)
            _apply_in_place(groups[g][0], view)
            if stats is not None:
                stats.add(view)
    return out


def slabs(shape: Sequence[int]) -> List[Tuple[int, int]]:
    """z-ranges of about :data:`SLAB_BYTES` each that cover a (B, C, z, y, x) tensor."""
    depth = int(shape[2])
    per_row = max(1, _bytes(shape) // max(depth, 1))
    step = max(MIN_ROWS, SLAB_BYTES // per_row)
    return [(z, min(z + step, depth)) for z in range(0, depth, step)]


# ----------------------------------------------------------------------------- blocks

def _decoder_stage(transpconv: Any, stage: Any, below: Any, skips: List[Any]) -> Any:
    """``stage(cat(transpconv(below), skip))`` with the first convolution reading its input slab-wise.

    ``skip`` is popped from ``skips`` and released as soon as the first convolution has read it.
    """
    import torch
    from dynamic_network_architectures.building_blocks import simple_conv_blocks

    blocks = list(stage.convs) if isinstance(stage, simple_conv_blocks.StackedConvBlocks) else None
    held = [skips.pop()]  # the skip, dropped as soon as the first convolution has read it
    if (blocks is None or not isinstance(blocks[0], simple_conv_blocks.ConvDropoutNormReLU)
            or not _slabbable_transpose(transpconv, below, held[0])):
        return run(stage, torch.cat((transpconv(below), held.pop()), 1))
    stride = int(transpconv.stride[0])

    def rows(z0: int, z1: int) -> Any:
        b0, b1 = z0 // stride, -(-z1 // stride)
        up = transpconv(below[:, :, b0:b1])[:, :, z0 - b0 * stride: z1 - b0 * stride]
        return torch.cat((up, held[0][:, :, z0:z1]), 1)

    first = list(blocks[0].all_modules)
    shape = (below.shape[0], transpconv.out_channels + held[0].shape[1], *held[0].shape[2:])
    x = conv_layers(first[0], first[1:], rows, shape)
    held.clear()
    for block in blocks[1:]:
        x = run(block, x)
    return x


def _residual_block(block: Any, x: Any) -> Any:
    """``BasicBlockD`` / ``BottleneckD`` (no squeeze-excitation, no stochastic depth) with slab-wise convolutions."""
    residual = run(block.skip, x)
    convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
    out = x
    for conv in convs:
        out = run(conv, out)
    del x
    out += residual
    del residual
    nonlin = block.nonlin3 if hasattr(block, "nonlin3") else block.nonlin2
    if _bytes(out.shape) <= LARGE_BYTES:
        return nonlin(out)
    for z0, z1 in slabs(out.shape):
        _apply_in_place([nonlin], out[:, :, z0:z1])
    return out


# ----------------------------------------------------------------------------- layers

class _Stats:
    """Per (batch, channel) mean and variance of a tensor made slab by slab (instance norm).

    Each slab's float32 ``var_mean`` is kept; they are combined in float64 with Chan et al.'s
    pairwise rule (sum of the slabs' squared deviations plus their means' spread), which
    does not cancel when a channel's mean is large against its spread, as E[x²] - E[x]² does.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        self.parts: List[Tuple[int, Any, Any]] = []

    def add(self, y: Any) -> None:
        import torch

        var, mean = torch.var_mean(y, dim=(2, 3, 4), correction=0)
        self.parts.append((int(y.shape[2] * y.shape[3] * y.shape[4]), mean.double(), var.double()))

    def affine(self, norm: Any) -> Tuple[Any, Any]:
        """(scale, shift) of shape (B, C, 1, 1, 1) that apply ``norm`` with these statistics."""
        import torch

        count = sum(n for n, _, _ in self.parts)
        mean = sum(n * m for n, m, _ in self.parts) / count
        var = sum(n * (v + (m - mean) ** 2) for n, m, v in self.parts) / count
        scale = 1.0 / torch.sqrt(var + norm.eps)
        shift = -mean * scale
        if norm.affine:
            weight, bias = norm.weight.double()[None], norm.bias.double()[None]
            scale, shift = scale * weight, shift * weight + bias
        return (scale.float()[:, :, None, None, None], shift.float()[:, :, None, None, None])


def _split_at_norms(layers: Sequence[Any]) -> List[Tuple[List[Any], Optional[Any]]]:
    """[(elementwise layers, the instance norm that follows them or None), ...]."""
    groups: List[Tuple[List[Any], Optional[Any]]] = []
    current: List[Any] = []
    for layer in layers:
        if _instance_norm(layer):
            groups.append((current, layer))
            current = []
        else:
            current.append(layer)
    groups.append((current, None))
    return groups


def _apply(layers: Sequence[Any], y: Any) -> Any:
    for layer in layers:
        y = layer(y)
    return y


def _apply_in_place(layers: Sequence[Any], view: Any) -> None:
    for layer in layers:
        result = layer(view)
        if result.data_ptr() != view.data_ptr():
            view.copy_(result)


def _elementwise(layer: Any) -> bool:
    import torch.nn as nn

    if isinstance(layer, (nn.LeakyReLU, nn.ReLU, nn.ELU, nn.GELU, nn.Identity)):
        return True
    if isinstance(layer, nn.PReLU):
        return True
    if isinstance(layer, (nn.Dropout, nn.Dropout3d)):
        return not layer.training
    if isinstance(layer, nn.BatchNorm3d):
        return not layer.training and layer.track_running_stats
    return False


def _instance_norm(layer: Any) -> bool:
    import torch.nn as nn

    return isinstance(layer, nn.InstanceNorm3d) and not layer.track_running_stats


def _slabbable_conv(conv: Any) -> bool:
    import torch.nn as nn

    return (isinstance(conv, nn.Conv3d) and conv.groups == 1 and tuple(conv.dilation) == (1, 1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def _slabbable_transpose(transpconv: Any, below: Any, skip: Any) -> bool:
    import torch.nn as nn

    if not isinstance(transpconv, nn.ConvTranspose3d):
        return False
    stride = tuple(int(s) for s in transpconv.stride)
    return (tuple(transpconv.kernel_size) == stride and tuple(transpconv.padding) == (0, 0, 0)
            and tuple(transpconv.output_padding) == (0, 0, 0) and transpconv.groups == 1
            and tuple(transpconv.dilation) == (1, 1, 1)
            and all(b * s == k for b, s, k in zip(below.shape[2:], stride, skip.shape[2:])))


def _plain_residual(block: Any) -> bool:
    return not getattr(block, "apply_se", False) and not getattr(block, "apply_stochastic_depth", False)


def _is_3d_unet(network: Any) -> bool:
    import torch.nn as nn
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    return (isinstance(network, (PlainConvUNet, ResidualEncoderUNet))
            and not network.decoder.deep_supervision and network.encoder.conv_op is nn.Conv3d)


def _conv_out_shape(conv: Any, in_shape: Sequence[int]) -> Tuple[int, ...]:
    sizes = [(int(n) + 2 * int(p) - int(k)) // int(s) + 1
             for n, k, s, p in zip(in_shape[2:], conv.kernel_size, conv.stride, _padding(conv))]
    return (int(in_shape[0]), int(conv.out_channels), *sizes)


def _padding(conv: Any) -> Tuple[int, ...]:
    return tuple(conv.padding) if not isinstance(conv.padding, str) else (0, 0, 0)


def _tensor_rows(x: Any) -> Rows:
    return lambda z0, z1: x[:, :, z0:z1]


def _bytes(shape: Sequence[int]) -> int:
    total = 4
    for n in shape:
        total *= int(n)
    return total
