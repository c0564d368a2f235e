"""A package with a dedicated coarse network (manifest ``cascade``): format, verification, pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")

from tumorseg_core.errors import ModelPackageError  # noqa: E402
from tumorseg_core.inference.cascade import area_pool  # noqa: E402
from tumorseg_core.inference.segmenter import Segmenter  # noqa: E402
from tumorseg_core.modelpkg.manifest import Manifest  # noqa: E402
from tumorseg_core.modelpkg.package import open_package, write_package  # noqa: E402
from tumorseg_core.models.registry import build_network  # noqa: E402

FINE = {"in_channels": 1, "out_channels": 2, "features": [4, 8]}
COARSE = {"in_channels": 1, "out_channels": 2, "features": [2, 4]}


def _constant_net(kwargs: dict, foreground: bool) -> dict:
    """State dict of a U-Net whose logits are its head bias everywhere (every weight zero)."""
    torch.manual_seed(0)
    state = build_network("unet3d", kwargs).state_dict()
    state = {k: torch.zeros_like(v) for k, v in state.items()}
    state["head.bias"] = torch.tensor([0.0, 6.0] if foreground else [6.0, 0.0])
    return state


def _manifest(**cascade) -> dict:
    section = {"weights": "coarse.safetensors", "architecture": "unet3d", "kwargs": dict(COARSE),
               "patch_size": [8, 8, 8], **cascade}
    return {
        "name": "cascade-test", "version": "1.0.0", "license": "Apache-2.0", "description": "test",
        "architecture": "unet3d", "kwargs": dict(FINE),
        "inputs": [{"modality": "MRI", "normalization": {"type": "zscore"}}],
        "spacing": [2.0, 2.0, 2.0], "orientation": "LPS", "patch_size": [16, 16, 16],
        "output": {"type": "softmax", "labels": [{"value": 1, "name": "Tumor", "color": [0.9, 0.3, 0.2]}]},
        "inference": {"overlap": 0.25}, "cascade": section,
    }


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORSEG_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))


def _package(tmp_path: Path, name: str, coarse_foreground: bool, **cascade) -> Path:
    return write_package(tmp_path / name, _manifest(**cascade), [_constant_net(FINE, True)],
                         cascade_state_dict=_constant_net(COARSE, coarse_foreground))


def _image() -> sitk.Image:
    """An oblique, anisotropic 40x36x30 image (the output must keep this exact grid)."""
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray((100 + 10 * rng.standard_normal((30, 36, 40))).astype(np.float32))
    image.SetSpacing((1.5, 1.7, 2.5))
    image.SetOrigin((-20.0, 14.0, 3.5))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    return image


def test_the_coarse_network_is_verified_loaded_and_kept_out_of_the_ensemble(tmp_path):
    package = open_package(_package(tmp_path, "pkg", True))
    assert [p.name for p in package.weight_files] == ["fold0.safetensors"]
    spec = package.manifest.cascade
    assert (spec.weights, spec.factor, spec.threshold, spec.margin_mm, spec.default) == \
        ("coarse.safetensors", 2.0, 0.1, 10.0, True)
    assert spec.patch_size_zyx == (8, 8, 8)
    net = package.load_cascade_network()
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in package.load_networks()[0].parameters())
    # A changed coarse file is refused like any package file.
    weights = tmp_path / "pkg" / "coarse.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ModelPackageError, match="coarse.safetensors"):
        open_package(tmp_path / "pkg")


@pytest.mark.parametrize("change, field", [
    ({"weights": "other.safetensors"}, "cascade.weights"),
    ({"weights": "../coarse.safetensors"}, "cascade.weights"),
    ({"factor": 1.0}, "cascade.factor"),
    ({"threshold": 1.5}, "cascade.threshold"),
    ({"margin_mm": -1}, "cascade.margin_mm"),
    ({"default": "yes"}, "cascade.default"),
    ({"patch_size": [8, 8, 7]}, "cascade.patch_size"),
    ({"kwargs": {**COARSE, "in_channels": 2}}, "cascade.kwargs.in_channels"),
    ({"architecture": "nope"}, "cascade.architecture"),
    ({"speed": "max"}, "cascade.speed"),
    ({"input_clip": [4.0, -2.0]}, "cascade.input_clip"),
    ({"input_clip": [-2.0]}, "cascade.input_clip"),
    ({"input_clip": [-2.0, "4"]}, "cascade.input_clip"),
    ({"input_clip": [-2.0, True]}, "cascade.input_clip"),
])
def test_bad_cascade_sections_name_the_field(tmp_path, change, field):
    data = {**_manifest(**change), "files": {"fold0.safetensors": "0" * 64, "coarse.safetensors": "0" * 64}}
    with pytest.raises(ModelPackageError, match=field.replace(".", r"\.")):
        Manifest(data)
    with pytest.raises(ModelPackageError, match="only network"):  # no full-resolution network left
        Manifest({**_manifest(weights="fold0.safetensors"), "files": {"fold0.safetensors": "0" * 64}})
    with pytest.raises(ModelPackageError, match="cascade"):  # a section without its weights
        write_package(tmp_path / "bad", _manifest(), [_constant_net(FINE, True)])
    with pytest.raises(ModelPackageError, match="ensemble member"):  # coarse weights over fold 1
        write_package(tmp_path / "bad", _manifest(weights="fold1.safetensors"),
                      [_constant_net(FINE, True)] * 2, cascade_state_dict=_constant_net(COARSE, True))
    with pytest.raises(ModelPackageError, match="'cascade' must be a JSON object"):
        write_package(tmp_path / "bad", {**_manifest(), "cascade": ["x"]}, [_constant_net(FINE, True)])
    assert not (tmp_path / "bad").exists()


def test_the_coarse_network_decides_where_the_full_model_runs(tmp_path):
    image = _image()
    # The full network says "tumor" everywhere; exhaustive: every voxel is labelled.
    finds = Segmenter(_package(tmp_path, "finds", True), device="cpu", backend="torch")
    everywhere = finds.segment(image, cascade=False)
    assert sitk.GetArrayViewFromImage(everywhere).all()
    # The cascade is this package's default: a coarse network that flags everything gives
    # the exhaustive result; one that flags nothing leaves the full network unused.
    cascaded = finds.segment(image)
    assert np.array_equal(sitk.GetArrayFromImage(cascaded), sitk.GetArrayFromImage(everywhere))
    blind = Segmenter(_package(tmp_path, "blind", False), device="cpu", backend="torch")
    full_network, calls = blind.predictor(blind.options), []
    predict = full_network.predict
    full_network.predict = lambda *a, **k: calls.append(1) or predict(*a, **k)
    empty = blind.segment(image)
    assert not sitk.GetArrayViewFromImage(empty).any() and calls == []
    for result in (everywhere, cascaded, empty):
        assert result.GetSize() == image.GetSize() and result.GetSpacing() == image.GetSpacing()
        assert result.GetOrigin() == image.GetOrigin() and result.GetDirection() == image.GetDirection()
    # A new window batch reaches the warm coarse network too (no rebuild).
    coarse = blind.coarse_predictor(blind.options)
    blind.segment(image, window_batch=3)
    assert blind.coarse_predictor(blind.options) is coarse and coarse.window_batch == 3
    # --no-cascade still means the exhaustive pass; "default": false makes the cascade opt-in.
    assert sitk.GetArrayViewFromImage(blind.segment(image, cascade=False)).all() and calls == [1]
    off = Segmenter(_package(tmp_path, "off", False, default=False), device="cpu", backend="torch")
    assert sitk.GetArrayViewFromImage(off.segment(image)).all()
    assert not sitk.GetArrayViewFromImage(off.segment(image, cascade=True)).any()


def test_the_coarse_network_runs_on_an_exported_backend_from_its_own_cache_entry(tmp_path):
    pytest.importorskip("onnxruntime")
    image = _image()
    # Same window as the full network: only the identities can tell the two exports apart.
    segmenter = Segmenter(_package(tmp_path, "pkg", True, patch_size=[16, 16, 16]), device="cpu",
                          backend="onnxruntime")
    result = segmenter.segment(image)
    assert sitk.GetArrayViewFromImage(result).all()
    assert segmenter.coarse_predictor(segmenter.options).backend == "onnxruntime"
    exports = sorted(p.name for p in (tmp_path / "cache").rglob("*.onnx"))
    assert len(exports) == 2  # one per network, never the same file


def test_area_pool_equals_torch_area_interpolation():
    rng = np.random.default_rng(0)
    for shape, small in [((1, 20, 17, 9), (10, 8, 5)), ((2, 31, 13, 8), (15, 7, 8)), ((1, 7, 7, 7), (3, 3, 3))]:
        volume = rng.standard_normal(shape).astype(np.float32)
        expected = torch.nn.functional.interpolate(torch.from_numpy(volume)[None], size=small, mode="area")[0]
        np.testing.assert_allclose(area_pool(volume, small), expected.numpy(), atol=1e-6)


def test_input_clip_is_read_and_kept(tmp_path):
    package = open_package(_package(tmp_path, "clip", True, input_clip=[-2, 4.5]))
    assert package.manifest.cascade.input_clip == (-2.0, 4.5)
    assert json.loads((tmp_path / "clip" / "manifest.json").read_text())["cascade"]["input_clip"] == [-2, 4.5]
    assert open_package(_package(tmp_path, "noclip", True)).manifest.cascade.input_clip is None


def test_manifest_round_trip_keeps_the_section(tmp_path):
    path = _package(tmp_path, "pkg", True, factor=2.5, threshold=0.05)
    data = json.loads((path / "manifest.json").read_text())
    assert data["cascade"]["factor"] == 2.5 and "coarse.safetensors" in data["files"]
    # Format 2: a format-1 reader refuses the package ("newer than this TumorSeg supports")
    # instead of loading the coarse weights as an ensemble member; packages without a
    # cascade stay format 1.
    assert data["format_version"] == 2
    with pytest.raises(ModelPackageError, match="format_version"):
        Manifest({**data, "format_version": 1})
    plain = write_package(tmp_path / "plain", {k: v for k, v in _manifest().items() if k != "cascade"},
                          [_constant_net(FINE, True)])
    assert json.loads((plain / "manifest.json").read_text())["format_version"] == 1
    assert open_package(path).manifest.cascade.threshold == 0.05
