"""nnU-Net's 3D U-Nets run slab by slab along z: the same arithmetic in a fraction of the memory.

A ``PlainConvUNet`` or ``ResidualEncoderUNet`` window of nnU-Net's default plans (32
features at full resolution, 128³ patch) holds several 256 MiB activations at once in
torch eager: a convolution's input and output, the up-sampled tensor and its
concatenation with the skip (512 MiB), and the layout copies oneDNN makes of them. Here
every layer whose output is large runs over z-slabs instead, and its output is kept as
those slabs (:class:`Chunks`):

- a convolution's output slab ``[o0, o1)`` reads input rows ``[o0·s - p, (o1 - 1)·s - p + k)``
  (zero rows added at the volume's ends), so no output voxel is computed twice and none
  differs in what it sums;
- once the *last* reader of an activation has passed a slab, that slab is released: a
  convolution's input shrinks while its output grows, so the two never both exist whole
  (an encoder stage's output is read last by its decoder stage, as the skip);
- elementwise layers (non-linearity, eval-mode dropout and batch norm) run on each slab in
  place;
- instance norm needs the whole channel's statistics: each slab's mean and variance are
  taken as it is made and combined (float64), then the norm is applied slab by slab in place;
- a decoder stage's first convolution reads ``cat(transposed_conv(below), skip)`` slab by
  slab (a kernel = stride transposed convolution maps each input row to its own output
  rows), so neither the up-sampled tensor nor the concatenation exists whole.

Blocks and layers this module does not know (squeeze-excitation, stochastic depth, a
transposed convolution that overlaps, 2D networks) and small tensors run through the
module itself, unchanged. Results equal the module's own forward up to float32 summation
order in instance norm (max |logit difference| ~5e-6 on nnU-Net's default plan).

    >>> logits = slab_forward(network, window)   # (B, C, z, y, x) -> (B, K, z, y, x)

Cancel: inside ``with polling(check):`` every convolution layer, and every slab of a
slab-wise one, first calls ``check()``, which may raise (e.g. CancelledError): a cancel
waits for one slab (well under a second here), not for the window's forward pass (~11 s
for nnU-Net's default plan on 2 cores).

torch and dynamic_network_architectures are imported inside the functions.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

from tumorseg_core.inference import heap

#: A layer runs slab-wise when its input or output holds more than this many bytes.
LARGE_BYTES = 48 * 2**20
#: Bytes of output per slab (sets the slab depth for each layer's channels and plane) ...
SLAB_BYTES = 16 * 2**20
#: ... but never fewer rows than this: a thin slab re-reads its halo rows too often (4 MiB slabs,
#: 2 rows of 32 x 128², ran the window 2.2x slower than 16 MiB slabs on a 2-core AVX2 CPU).
MIN_ROWS = 8

_CHECK: ContextVar[Optional[Callable[[], None]]] = ContextVar("tumorseg_slab_check", default=None)


@contextlib.contextmanager
def polling(check: Optional[Callable[[], None]]) -> Iterator[None]:
    """Call ``check()`` before every convolution layer and slab run inside this block (it may raise)."""
    token = _CHECK.set(check)
    try:
        yield
    finally:
        _CHECK.reset(token)


def _poll() -> None:
    check = _CHECK.get()
    if check is not None:
        check()


class Chunks:
    """A (B, C, z, y, x) activation held as consecutive z-slabs, released as its last reader passes."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.parts: List[Tuple[int, int, Any]] = []  # (z0, z1, tensor), in z order

    def append(self, z0: int, z1: int, tensor: Any) -> None:
        self.parts.append((z0, z1, tensor))

    def rows(self, z0: int, z1: int) -> Any:
        """Rows [z0, z1) as one tensor (a view when they lie in one slab)."""
        import torch

        pieces = [t[:, :, max(z0, a) - a: min(z1, b) - a] for a, b, t in self.parts if a < z1 and b > z0]
        if sum(int(p.shape[2]) for p in pieces) != z1 - z0:
            raise RuntimeError(f"rows {z0}:{z1} of a slab-wise activation were already released")
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 2)

    def release_below(self, z: int) -> None:
        """Drop the slabs that end at or before row ``z`` (no reader needs them any more)."""
        self.parts = [part for part in self.parts if part[1] > z]

    def whole(self) -> Any:
        return self.rows(0, self.shape[2])


Activation = Union[Any, Chunks]  # a tensor or its slabs


class Source:
    """What a layer reads: rows of an activation, and whether this reader is its last (may release)."""

    def __init__(self, rows: Callable[[int, int], Any], shape: Sequence[int],
                 release: Optional[Callable[[int], None]] = None) -> None:
        self.rows, self.shape, self.release = rows, tuple(int(n) for n in shape), release

    @staticmethod
    def of(x: Activation, last_reader: bool) -> "Source":
        if isinstance(x, Chunks):
            return Source(x.rows, x.shape, x.release_below if last_reader else None)
        return Source(lambda z0, z1: x[:, :, z0:z1], x.shape)

    def whole(self) -> Any:
        return self.rows(0, self.shape[2])


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
        h: Activation = x
        if getattr(encoder, "stem", None) is not None:
            h = run(encoder.stem, h, last_reader=False)
        skips: List[Activation] = []
        for i, stage in enumerate(encoder.stages):
            # the stem's output is read by the first stage only; each stage's output is read
            # by the next stage and then by its decoder stage, as the skip
            h = run(stage, h, last_reader=i == 0)
            skips.append(h)
        del h
        below = skips.pop()
        for s, stage in enumerate(decoder.stages):
            below = _decoder_stage(decoder.transpconvs[s], stage, below, skips.pop())
        logits = run(decoder.seg_layers[-1], below, last_reader=True)
        return logits.whole() if isinstance(logits, Chunks) else logits


class SlabUNet:
    """A network seen through :func:`slab_forward` (what nnU-Net's window loop calls)."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def eval(self) -> "SlabUNet":
        self.network.eval()
        return self

    def __call__(self, x: Any) -> Any:
        return slab_forward(self.network, x)


def run(module: Any, x: Activation, last_reader: bool) -> Activation:
    """``module(x)``, the blocks this module knows slab-wise where their output is large.

    ``last_reader``: nothing reads ``x`` after this module, so its slabs may be released.
    """
    import torch.nn as nn
    from dynamic_network_architectures.building_blocks import residual, simple_conv_blocks

    if isinstance(module, nn.Sequential):
        for i, child in enumerate(module):
            x = run(child, x, last_reader or i > 0)
        return x
    if isinstance(module, simple_conv_blocks.StackedConvBlocks):
        return run(module.convs, x, last_reader)
    if isinstance(module, residual.StackedResidualBlocks):
        return run(module.blocks, x, last_reader)
    if isinstance(module, simple_conv_blocks.ConvDropoutNormReLU):
        layers = list(module.all_modules)
        return conv_layers(layers[0], layers[1:], Source.of(x, last_reader))
    if isinstance(module, nn.Conv3d):
        return conv_layers(module, [], Source.of(x, last_reader))
    if isinstance(module, (residual.BasicBlockD, residual.BottleneckD)) and _plain_residual(module):
        return _residual_block(module, x, last_reader)
    return module(_whole(x))


def conv_layers(conv: Any, after: Sequence[Any], source: Source) -> Activation:
    """``after(conv(input))``; slab-wise, as :class:`Chunks`, when its input or output is large.

    Args:
        conv: a ``Conv3d`` (zero padding, no dilation or groups; otherwise it runs whole).
        after: the layers that follow it (dropout, norm, non-linearity, in order).
        source: the input's rows; if it may release, rows are dropped once no output slab needs them.
    """
    import torch.nn.functional as F

    _poll()
    in_shape = source.shape
    out_shape = _conv_out_shape(conv, in_shape)
    slabbable = _slabbable_conv(conv) and all(_elementwise(m) or _instance_norm(m) for m in after)
    if not slabbable or max(_bytes(out_shape), _bytes(in_shape)) <= LARGE_BYTES:
        y = conv(source.whole())
        for layer in after:
            y = layer(y)
        return y
    (k, _, _), (s, sy, sx), (p, py, px) = conv.kernel_size, conv.stride, conv.padding
    depth = int(in_shape[2])
    out = Chunks(out_shape)
    groups = _split_at_norms(after)
    stats = _Stats() if groups[0][1] is not None else None
    for o0, o1 in slabs(out_shape, in_shape):
        _poll()
        i0, i1 = o0 * s - p, (o1 - 1) * s - p + k
        piece = source.rows(max(i0, 0), min(i1, depth))
        if i0 < 0 or i1 > depth:
            piece = F.pad(piece, (0, 0, 0, 0, max(-i0, 0), max(i1 - depth, 0)))
        y = F.conv3d(piece, conv.weight, conv.bias, (s, sy, sx), (0, py, px))
        del piece
        if source.release is not None:
            source.release(o1 * s - p)  # the next slab's first input row
        y = _apply(groups[0][0], y)
        if stats is not None:
            stats.add(y)
        out.append(o0, o1, y)
        del y
    for g in range(1, len(groups)):
        scale, shift = stats.affine(groups[g - 1][1])
        stats = _Stats() if groups[g][1] is not None else None
        for _, _, part in out.parts:
            part.mul_(scale).add_(shift)
            _apply_in_place(groups[g][0], part)
            if stats is not None:
                stats.add(part)
    heap.trim()  # this layer's freed slab buffers: the next layers' high-water mark starts lower
    return out


def slabs(shape: Sequence[int], in_shape: Optional[Sequence[int]] = None) -> List[Tuple[int, int]]:
    """z-ranges that cover a (B, C, z, y, x) output, each about :data:`SLAB_BYTES` of output
    or of the input ``in_shape`` it reads, whichever is larger."""
    depth = int(shape[2])
    per_row = _bytes(shape) // max(depth, 1)
    if in_shape is not None:
        per_row = max(per_row, _bytes(in_shape) // max(depth, 1))
    step = max(MIN_ROWS, SLAB_BYTES // max(per_row, 1))
    return [(z, min(z + step, depth)) for z in range(0, depth, step)]


# ----------------------------------------------------------------------------- blocks

def _decoder_stage(transpconv: Any, stage: Any, below: Activation, skip: Activation) -> Activation:
    """``stage(cat(transpconv(below), skip))``, the first convolution reading that input slab-wise.

    This stage is the last reader of both ``below`` and ``skip``: their slabs are released as it passes.
    """
    import torch
    from dynamic_network_architectures.building_blocks import simple_conv_blocks

    blocks = list(stage.convs) if isinstance(stage, simple_conv_blocks.StackedConvBlocks) else None
    skip_shape = skip.shape
    if (blocks is None or not isinstance(blocks[0], simple_conv_blocks.ConvDropoutNormReLU)
            or not _slabbable_transpose(transpconv, below.shape, skip_shape)):
        return run(stage, torch.cat((transpconv(_whole(below)), _whole(skip)), 1), last_reader=True)
    stride = int(transpconv.stride[0])
    low, high = Source.of(below, last_reader=True), Source.of(skip, last_reader=True)
    del below, skip

    def rows(z0: int, z1: int) -> Any:
        b0, b1 = z0 // stride, -(-z1 // stride)
        up = transpconv(low.rows(b0, b1))[:, :, z0 - b0 * stride: z1 - b0 * stride]
        return torch.cat((up, high.rows(z0, z1)), 1)

    def release(z: int) -> None:
        if high.release is not None:
            high.release(z)
        if low.release is not None:
            low.release(z // stride)

    shape = (skip_shape[0], transpconv.out_channels + skip_shape[1], *skip_shape[2:])
    first = list(blocks[0].all_modules)
    x = conv_layers(first[0], first[1:], Source(rows, shape, release))
    for block in blocks[1:]:
        x = run(block, x, last_reader=True)
    return x


def _residual_block(block: Any, x: Activation, last_reader: bool) -> Activation:
    """``BasicBlockD`` / ``BottleneckD`` (no squeeze-excitation, no stochastic depth) with slab-wise convolutions.

    ``x`` is read by the first convolution and by the skip path, so neither releases it; the
    residual sum releases it (an identity skip) only if this block is its last reader.
    """
    residual = run(block.skip, x, last_reader=False)
    residual_releases = residual is not x or last_reader
    convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
    out = x
    for i, conv in enumerate(convs):
        out = run(conv, out, last_reader=i > 0)
    del x
    nonlin = block.nonlin3 if hasattr(block, "nonlin3") else block.nonlin2
    if not isinstance(out, Chunks):
        out += _whole(residual)
        return nonlin(out)
    extra = Source.of(residual, last_reader=residual_releases)
    del residual
    for z0, z1, part in out.parts:
        part += extra.rows(z0, z1)
        if extra.release is not None:
            extra.release(z1)
        _apply_in_place([nonlin], part)
    return out


# ----------------------------------------------------------------------------- layers

class _Stats:
    """Per (batch, channel) mean and variance of a tensor made slab by slab (instance norm).

    Each slab's float32 ``var_mean`` is kept; they are combined in float64 with Chan et al.'s
    pairwise rule (sum of the slabs' squared deviations plus their means' spread), which
    does not cancel when a channel's mean is large against its spread, as E[x²] - E[x]² does.
    """

    def __init__(self) -> None:
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


def _slabbable_transpose(transpconv: Any, below: Sequence[int], skip: Sequence[int]) -> bool:
    import torch.nn as nn

    if not isinstance(transpconv, nn.ConvTranspose3d):
        return False
    stride = tuple(int(s) for s in transpconv.stride)
    return (tuple(transpconv.kernel_size) == stride and tuple(transpconv.padding) == (0, 0, 0)
            and tuple(transpconv.output_padding) == (0, 0, 0) and transpconv.groups == 1
            and tuple(transpconv.dilation) == (1, 1, 1)
            and all(b * s == k for b, s, k in zip(below[2:], stride, skip[2:])))


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


def _whole(x: Activation) -> Any:
    return x.whole() if isinstance(x, Chunks) else x


def _bytes(shape: Sequence[int]) -> int:
    total = 4
    for n in shape:
        total *= int(n)
    return total
