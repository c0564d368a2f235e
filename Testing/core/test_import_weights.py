"""import-weights: PyTorch state dicts become safe packages; anything but tensors is refused."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from tumorseg_core.commands import import_weights as cmd
from tumorseg_core.errors import ModelPackageError, TumorSegError
from tumorseg_core.modelpkg.convert import import_weights
from tumorseg_core.modelpkg.package import open_package
from tumorseg_core.models.registry import build_network

KWARGS = {"in_channels": 2, "out_channels": 2, "features": [2, 4]}
LABELS = [{"value": 1, "name": "Tumor", "color": [0.9, 0.3, 0.2]}]
FIELDS = {
    "name": "imported",
    "inputs": [{"modality": "T1", "normalization": {"type": "zscore"}},
               {"modality": "FLAIR", "normalization": {"type": "minmax"}}],
    "spacing": [1.0, 1.0, 1.0],
    "patch_size": [8, 8, 8],
    "output": {"type": "softmax", "labels": LABELS},
}


class NotATensor:
    """A custom object: a weights-only load must refuse to rebuild it."""

    def __init__(self) -> None:
        self.payload = "anything"


@pytest.fixture
def net():
    torch.manual_seed(3)
    return build_network("unet3d", KWARGS).eval()


def _same_outputs(a, b) -> None:
    x = torch.randn(1, 2, 4, 8, 6)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_plain_state_dict_imports(tmp_path, net):
    pt = tmp_path / "model.pt"
    torch.save(net.state_dict(), pt)
    out = import_weights(pt, "unet3d", KWARGS, tmp_path / "pkg", **FIELDS)
    pkg = open_package(out)
    assert pkg.manifest.license == "unknown" and pkg.manifest.orientation == "LPS"
    assert pkg.manifest.input_modalities == ["T1", "FLAIR"]
    assert "model.pt" in (out / "README.md").read_text()
    (loaded,) = pkg.load_networks()
    _same_outputs(loaded, net)


def test_nested_and_prefixed_checkpoint_imports(tmp_path, net):
    pt = tmp_path / "ckpt.pth"
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, pt)
    pt2 = tmp_path / "nnunet_style.pt"
    torch.save({"network_weights": net.state_dict(), "trainer_name": "x"}, pt2)
    out = import_weights([pt, pt2], "unet3d", KWARGS, tmp_path / "pkg", **FIELDS)
    nets = open_package(out).load_networks()
    assert len(nets) == 2
    for loaded in nets:
        _same_outputs(loaded, net)


def test_wrong_architecture_weights_refused(tmp_path, net):
    pt = tmp_path / "model.pt"
    torch.save(net.state_dict(), pt)
    with pytest.raises(ModelPackageError, match="do not match the architecture"):
        import_weights(pt, "unet3d", {**KWARGS, "features": [2, 4, 8]}, tmp_path / "pkg", **FIELDS)
    assert not (tmp_path / "pkg").exists()


def test_arbitrary_objects_refused(tmp_path):
    pt = tmp_path / "evil.pt"
    torch.save({"weight": NotATensor()}, pt)
    with pytest.raises(ModelPackageError, match="weights-only"):
        import_weights(pt, "unet3d", KWARGS, tmp_path / "pkg", **FIELDS)
    pt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelPackageError, match="weights-only"):
        import_weights(pt, "unet3d", KWARGS, tmp_path / "pkg", **FIELDS)
    torch.save({"weight": torch.zeros(2), "note": "text"}, pt)
    with pytest.raises(ModelPackageError, match="'note' is not a tensor"):
        import_weights(pt, "unet3d", KWARGS, tmp_path / "pkg", **FIELDS)
    assert not (tmp_path / "pkg").exists()


def test_bad_manifest_fields_refused(tmp_path, net):
    pt = tmp_path / "model.pt"
    torch.save(net.state_dict(), pt)
    with pytest.raises(ModelPackageError, match="missing required field.*spacing"):
        import_weights(pt, "unet3d", KWARGS, tmp_path / "pkg", **{k: v for k, v in FIELDS.items() if k != "spacing"})
    with pytest.raises(ModelPackageError, match="unknown architecture"):
        import_weights(pt, "resnet_evil", KWARGS, tmp_path / "pkg", **FIELDS)


def _parse(argv):
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return parser.parse_args(argv)


def test_command_line(tmp_path, net, capsys):
    pt = tmp_path / "model.pt"
    torch.save(net.state_dict(), pt)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(LABELS))
    out = tmp_path / "pkg"
    args = _parse([
        str(pt), "--architecture", "unet3d", "--kwargs", json.dumps(KWARGS), "--name", "cli-model",
        "--spacing", "0.8", "0.8", "2.5", "--patch-size", "8", "8", "4",
        "--modality", "T1", "--modality", "FLAIR", "--normalization", '{"type": "zscore", "nonzero": true}',
        "--labels", f"@{labels}", "--license", "MIT", "--inference", '{"overlap": 0.25}', "-o", str(out),
    ])
    assert cmd.run(args) == 0
    assert str(out) in capsys.readouterr().out
    m = open_package(out).manifest
    assert m.name == "cli-model" and m.license == "MIT" and m.spacing_xyz == (0.8, 0.8, 2.5)
    assert m.patch_size_zyx == (4, 8, 8) and m.inference == {"overlap": 0.25}
    assert [n["nonzero"] for n in m.normalizations] == [True, True]
    with pytest.raises(TumorSegError, match="not valid JSON"):
        cmd.run(_parse([str(pt), "--architecture", "unet3d", "--kwargs", "{bad", "--name", "x", "--spacing", "1", "1", "1",
                        "--patch-size", "8", "8", "8", "--modality", "T1", "--labels", "[]", "-o", str(tmp_path / "o")]))
    with pytest.raises(TumorSegError, match="--normalization"):
        cmd.run(_parse([str(pt), "--architecture", "unet3d", "--name", "x", "--spacing", "1", "1", "1",
                        "--patch-size", "8", "8", "8", "--modality", "T1", "--modality", "T2", "--modality", "T3",
                        "--normalization", "{}", "--normalization", "{}", "--labels", "[]", "-o", str(tmp_path / "o")]))
