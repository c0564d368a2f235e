"""``inference/slab_forward.py``: nnU-Net's U-Nets run slab by slab give the module's own logits.

The networks are nnU-Net's own classes (dynamic_network_architectures) with seeded random
weights; the thresholds are lowered so that every layer runs slab-wise (one-row slabs,
which also puts slab ends on odd rows of the up-sampling), and a counter checks that the
slab branch really ran for the layers it should.
"""

from __future__ import annotations

import pytest
import torch

from tumorseg_core.inference import slab_forward
from tumorseg_core.models.nnunet_networks import build_plainconv, build_resenc

CONV3D = "torch.nn.modules.conv.Conv3d"
NORM = "torch.nn.modules.instancenorm.InstanceNorm3d"


def _common(stages: int, strides, features):
    return dict(
        n_stages=stages, features_per_stage=features, conv_op=CONV3D, kernel_sizes=[[3, 3, 3]] * stages,
        strides=strides, n_conv_per_stage_decoder=[2] * (stages - 1), conv_bias=True, norm_op=NORM,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin="torch.nn.LeakyReLU",
        nonlin_kwargs={"inplace": True}, in_channels=2, out_channels=3,
    )


def _plain(**extra):
    kwargs = _common(4, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], [8, 16, 24, 24])
    kwargs.update(extra)
    return build_plainconv(n_conv_per_stage=[2] * 4, **kwargs)


def _resenc(block: str, **extra):
    kwargs = _common(3, [[1, 1, 1], [2, 2, 2], [1, 2, 2]], [8, 16, 24])
    kwargs.update(extra)
    return build_resenc(n_blocks_per_stage=[1, 2, 2], block=f"dynamic_network_architectures.building_blocks.residual.{block}",
                        bottleneck_channels=[4, 8, 12] if block == "BottleneckD" else None, **kwargs)


@pytest.fixture
def every_layer_in_slabs(monkeypatch):
    """Every layer slab-wise in one-row slabs; returns the counts of slab passes and of whole Conv3d calls."""
    monkeypatch.setattr(slab_forward, "LARGE_BYTES", 0)
    monkeypatch.setattr(slab_forward, "SLAB_BYTES", 1)
    monkeypatch.setattr(slab_forward, "MIN_ROWS", 1)
    counts = {"slab passes": 0, "whole convolutions": 0}
    slabs, conv_forward = slab_forward.slabs, torch.nn.Conv3d.forward

    def counted_slabs(shape, in_shape=None):
        counts["slab passes"] += 1
        return slabs(shape, in_shape)

    def counted_forward(self, x):
        counts["whole convolutions"] += 1
        return conv_forward(self, x)

    monkeypatch.setattr(slab_forward, "slabs", counted_slabs)
    monkeypatch.setattr(torch.nn.Conv3d, "forward", counted_forward)
    return counts


@pytest.mark.parametrize("make", [
    lambda: _plain(),
    lambda: _plain(nonlin_first=True, dropout_op="torch.nn.Dropout3d", dropout_op_kwargs={"p": 0.5}),
    lambda: _resenc("BasicBlockD"),
    lambda: _resenc("BottleneckD"),
], ids=["plainconv", "plainconv-nonlin-first-dropout", "resenc-basic", "resenc-bottleneck"])
def test_slab_forward_matches_the_module(make, every_layer_in_slabs):
    torch.manual_seed(0)
    network = make().eval()
    with torch.no_grad():  # random InstanceNorm affine parameters, so the norms matter
        for module in network.modules():
            if isinstance(module, torch.nn.InstanceNorm3d):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    x = torch.randn(1, 2, 12, 16, 24)  # one-row slabs end on odd rows of every up-sampling too
    with torch.inference_mode():
        expected = network(x.clone())
        every_layer_in_slabs["whole convolutions"] = 0
        got = slab_forward.slab_forward(network, x.clone())
    assert got.shape == expected.shape == (1, 3, 12, 16, 24)
    assert float((got - expected).abs().max()) < 1e-5
    assert float(expected.abs().max()) > 0.1
    # every convolution in use ran slab-wise (none as a whole module); only the last seg layer is in use
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
    assert every_layer_in_slabs["whole convolutions"] == 0
    assert every_layer_in_slabs["slab passes"] == len(convs) - (len(network.decoder.seg_layers) - 1)


def test_large_layers_only_and_batches(monkeypatch):
    """Default slab size, threshold between the layers' sizes: mixed whole and slab-wise layers; batch of 2."""
    monkeypatch.setattr(slab_forward, "LARGE_BYTES", 8 * 24 * 32 * 32 * 4 - 1)  # full-resolution layers only
    monkeypatch.setattr(slab_forward, "SLAB_BYTES", 8 * 32 * 32 * 4 * 5)  # 5 rows
    monkeypatch.setattr(slab_forward, "MIN_ROWS", 1)
    torch.manual_seed(1)
    network = _plain().eval()
    x = torch.randn(2, 2, 24, 32, 32)
    with torch.inference_mode():
        expected = network(x)
        got = slab_forward.SlabUNet(network).eval()(x)
    assert float((got - expected).abs().max()) < 1e-5


def test_other_networks_are_called_as_they_are(every_layer_in_slabs):
    """A 2D nnU-Net network and a module that is no nnU-Net U-Net run unchanged."""
    torch.manual_seed(2)
    kwargs = _common(3, [[1, 1], [2, 2], [2, 2]], [4, 8, 8])
    kwargs.update(conv_op="torch.nn.modules.conv.Conv2d", kernel_sizes=[[3, 3]] * 3,
                  norm_op="torch.nn.modules.instancenorm.InstanceNorm2d")
    network = build_plainconv(n_conv_per_stage=[2] * 3, **kwargs).eval()
    x = torch.randn(1, 2, 3, 16, 16)
    other = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    with torch.inference_mode():
        assert torch.equal(slab_forward.slab_forward(network, x), network(x))
        assert torch.equal(slab_forward.slab_forward(other, x), other(x))
    assert every_layer_in_slabs["slab passes"] == 0


def test_a_cancel_stops_the_forward_within_one_slab(every_layer_in_slabs):
    """``polling(check)``: every layer and every slab calls check() first, so a cancel raised by it stops the
    forward there (not after the window), through nnU-Net's window loop too; outside the block nothing is called."""
    from tumorseg_core.errors import CancelledError
    from tumorseg_core.inference.nnunet_windows import sliding_window_logits

    torch.manual_seed(0)
    network = _plain().eval()
    x = torch.randn(1, 2, 12, 16, 24)
    polls = []

    def check():
        polls.append(every_layer_in_slabs["slab passes"])
        if len(polls) == 5:
            raise CancelledError()

    with torch.inference_mode():
        with pytest.raises(CancelledError), slab_forward.polling(check):
            slab_forward.slab_forward(network, x)
        assert len(polls) == 5 and every_layer_in_slabs["slab passes"] == 1  # stopped in the first layer's slabs
        full = slab_forward.slab_forward(network, x)  # outside: no check, the forward completes
    assert len(polls) == 5 and full.shape == (1, 3, 12, 16, 24)

    calls = {"n": 0}

    def cancel():  # the window loop asks once before the window; the slabs ask from then on
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(CancelledError):
        sliding_window_logits(slab_forward.SlabUNet(network), x[0], (12, 16, 24), 3, None, cancel=cancel)
    assert calls["n"] == 4
