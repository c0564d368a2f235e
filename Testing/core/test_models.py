"""Architecture registry: every allowed network builds and runs on a tiny input; bad names/kwargs are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.models.registry import (
    ARCHITECTURES,
    build_network,
    effective_kwargs,
    size_divisor,
    validate_kwargs,
)

# name -> (kwargs as JSON would give them, input shape (B, C, z, y, x), expected divisor (z, y, x))
TINY = {
    "unet3d": ({"in_channels": 2, "out_channels": 3, "features": [2, 4, 8]}, (1, 2, 8, 4, 12), (4, 4, 4)),
    "vnet": ({"in_channels": 2, "out_channels": 2}, (1, 2, 16, 16, 16), (16, 16, 16)),
    "unet2d": ({"in_channels": 1, "out_channels": 2, "features": [2, 2, 4, 4, 8, 2]}, (2, 1, 3, 16, 32), (1, 16, 16)),
    "unet25d": ({"in_channels": 2, "out_channels": 2, "context": 1, "features": [2, 2, 4, 4, 8, 2]}, (2, 2, 3, 16, 32),
                (1, 16, 16)),
    "segresnet": (
        {"in_channels": 1, "out_channels": 2, "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]},
        (1, 1, 4, 6, 8), (2, 2, 2),
    ),
    "dynunet": (
        {"in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3], "strides": [1, 2, [1, 2, 2]],
         "upsample_kernel_size": [2, [1, 2, 2]], "filters": [4, 8, 16], "deep_supervision": True},
        (1, 1, 4, 8, 8), (2, 4, 4),
    ),
    "monai_unet": ({"in_channels": 1, "out_channels": 2, "channels": [2, 4, 8], "strides": [2, 2], "num_res_units": 1,
                    "norm": "batch"}, (1, 1, 4, 8, 12), (4, 4, 4)),
    "monai_segresnet": ({"in_channels": 1, "out_channels": 2, "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]},
                        (1, 1, 4, 6, 8), (2, 2, 2)),
    "monai_basicunet": ({"in_channels": 1, "out_channels": 2, "features": [2, 2, 4, 4, 8, 2]}, (1, 1, 16, 16, 32),
                        (16, 16, 16)),
    "monai_swinunetr": ({"in_channels": 1, "out_channels": 2, "feature_size": 12, "depths": [1, 1, 1, 1]},
                        (1, 1, 32, 32, 64), (32, 32, 32)),
    "nnunet_plainconv": (
        {"in_channels": 1, "out_channels": 3, "n_stages": 2, "features_per_stage": [4, 8],
         "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[1, 3, 3], [3, 3, 3]],
         "strides": [[1, 1, 1], [1, 2, 2]], "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1],
         "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
         "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        (1, 1, 4, 8, 8), (1, 2, 2),
    ),
    "nnunet_resenc": (
        {"in_channels": 2, "out_channels": 2, "n_stages": 2, "features_per_stage": [4, 8],
         "conv_op": "torch.nn.Conv3d", "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
         "n_blocks_per_stage": [1, 1], "n_conv_per_stage_decoder": [1], "conv_bias": True,
         "norm_op": "torch.nn.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
         "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        (1, 2, 4, 8, 8), (2, 2, 2),
    ),
}


def test_allowlist_is_exactly_the_documented_set():
    assert set(ARCHITECTURES) == set(TINY) | {"onnx"}  # onnx: a stored graph (test_import_onnx.py)
    assert all(spec.spatial_dims == 3 and spec.description for spec in ARCHITECTURES.values())


@pytest.mark.parametrize("name", sorted(TINY))
def test_builds_and_runs_forward(name):
    kwargs, shape, divisor = TINY[name]
    assert size_divisor(name, kwargs) == divisor
    assert all(s % d == 0 for s, d in zip(shape[2:], divisor))
    torch.manual_seed(0)
    net = build_network(name, kwargs).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor)  # dynunet's deep supervision heads stay out of eval output
    assert tuple(y.shape) == (shape[0], kwargs["out_channels"], *shape[2:])
    assert torch.isfinite(y).all()


def test_unet2d_is_slicewise():
    kwargs, shape, _ = TINY["unet2d"]
    torch.manual_seed(1)
    net = build_network("unet2d", kwargs).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        y = net(x)
        # The wrapper is a BasicUNet: its parent forward is the plain 2D net.
        one = super(type(net), net).forward(x[1, :, 2][None])  # (1, C, y, x)
    torch.testing.assert_close(y[1, :, 2], one[0])


def test_unet3d_reacts_to_input():
    kwargs, shape, _ = TINY["unet3d"]
    net = build_network("unet3d", kwargs).eval()
    with torch.no_grad():
        a = net(torch.zeros(*shape))
        b = net(torch.randn(*shape))
    assert not torch.allclose(a, b)


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(ModelPackageError, match="unknown architecture 'resnet_evil'.*unet3d"):
        build_network("resnet_evil", {})


def test_unknown_kwarg_is_named():
    with pytest.raises(ModelPackageError, match="no kwarg 'evil'"):
        build_network("unet3d", {"in_channels": 1, "evil": 3})
    with pytest.raises(ModelPackageError, match="no kwarg 'spatial_dims'"):
        build_network("segresnet", {"spatial_dims": 2})


def test_missing_required_and_bad_values_refused():
    with pytest.raises(ModelPackageError, match="needs kwarg"):
        validate_kwargs("dynunet", {"kernel_size": [3, 3]})
    with pytest.raises(ModelPackageError, match="JSON types"):
        validate_kwargs("unet3d", {"features": object()})
    with pytest.raises(ModelPackageError, match="finite"):
        validate_kwargs("unet3d", {"dropout": float("nan")})
    with pytest.raises(ModelPackageError, match="must be a JSON object"):
        validate_kwargs("unet3d", [1, 2])
    with pytest.raises(ModelPackageError, match="rejected its kwargs"):
        build_network("unet3d", {"features": [4]})
    with pytest.raises(ModelPackageError, match="divid"):
        build_network("vnet", {"in_channels": 3})


def test_json_lists_become_tuples_and_defaults_fill_in():
    kw = effective_kwargs("segresnet", {"blocks_down": [1, 2], "act": ["RELU", {"inplace": True}]})
    assert kw["blocks_down"] == (1, 2) and kw["act"] == ("RELU", {"inplace": True})
    assert kw["in_channels"] == 1 and kw["init_filters"] == 8


def test_registry_import_does_not_load_torch():
    code = (
        "import sys; import tumorseg_core.models.registry, tumorseg_core.modelpkg.manifest; "
        "bad = [m for m in ('torch', 'monai') if m in sys.modules]; sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
