"""tumorseg import: nnU-Net v2 checkpoints read weights-only with a numpy allowlist; payloads never run."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_error_line, run_cli

import tumorseg_core
from tumorseg_core.errors import ModelPackageError
from tumorseg_core.modelpkg.convert import read_checkpoint
from tumorseg_core.modelpkg.package import installed_models, open_package
from tumorseg_core.models.registry import build_network

ROOT = Path(__file__).resolve().parents[2]
KWARGS = {"in_channels": 1, "out_channels": 2, "features": [2, 4]}
LABELS = [{"value": 1, "name": "Tumor", "color": [0.9, 0.3, 0.2]}]
FIELDS = {
    "inputs": [{"modality": "T1", "normalization": {"type": "zscore"}}],
    "spacing": [1.0, 1.0, 1.0],
    "patch_size": [8, 8, 8],
    "output": {"type": "softmax", "labels": LABELS},
}


def _options(name: str = "imported") -> list:
    return ["--architecture", "unet3d", "--kwargs", json.dumps(KWARGS), "--name", name,
            "--spacing", "1", "1", "1", "--patch-size", "8", "8", "8", "--modality", "T1",
            "--labels", json.dumps(LABELS)]


class Payload:
    """Pickles as a call that creates ``marker``: a loader that ran it would leave the file behind."""

    def __init__(self, how: str, marker: Path) -> None:
        self.how, self.marker = how, marker

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch {self.marker}",)
        return shutil.copyfile, (__file__, str(self.marker))  # a module that torch does not block


@pytest.fixture
def state():
    torch.manual_seed(5)
    return build_network("unet3d", KWARGS).state_dict()


def nnunet_checkpoint(state, **extra) -> dict:
    """What nnU-Net v2's trainer saves, in miniature (numpy scalars, torch.device, optimizer state)."""
    return {
        "network_weights": state,
        "optimizer_state": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                            "param_groups": [{"lr": 0.01, "momentum": 0.99, "nesterov": True, "params": [0]}]},
        "grad_scaler_state": None,
        "_best_ema": np.float32(0.8),
        "logging": {"x": [np.float64(1.0)], "mean_fg_dice": [np.float32(0.5)], "epoch_end_timestamps": [1.5],
                    "current_epoch": np.int64(3)},
        "current_epoch": 4,
        "init_args": {"plans": {"configurations": {"3d_fullres": {"patch_size": [8, 8, 8]}}}, "fold": 0,
                      "dataset_json": {"labels": {"background": 0, "tumor": 1}}, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
        **extra,
    }


def plain_load_refuses(pt: Path) -> None:
    with pytest.raises(Exception, match="numpy"):
        torch.load(str(pt), map_location="cpu", weights_only=True)


def assert_weights_equal(package: Path, state) -> None:
    (net,) = open_package(package).load_networks()
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def rename_global(pt: Path, old: bytes, new: bytes) -> None:
    """Rewrite the pickle's GLOBAL opcode text (newline-terminated, so lengths may differ)."""
    with zipfile.ZipFile(pt) as zf:
        records = {info.filename: zf.read(info) for info in zf.infolist()}
    pkl = next(name for name in records if name.endswith("/data.pkl"))
    assert old in records[pkl]
    records[pkl] = records[pkl].replace(old, new)
    with zipfile.ZipFile(pt, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            zf.writestr(name, data)


# ---------------------------------------------------------------- (a) nnU-Net checkpoints


def test_nnunet_checkpoint_imports_with_the_numpy_allowlist(tmp_path, state):
    pt = tmp_path / "checkpoint_final.pth"
    torch.save(nnunet_checkpoint(state), pt)
    plain_load_refuses(pt)  # the allowlist is what reads it
    out = tumorseg_core.import_model(pt, tmp_path / "pkg", architecture="unet3d", kwargs=KWARGS, **FIELDS)
    assert out == tmp_path / "pkg"
    assert open_package(out).manifest.name == "pkg"  # default name: the output folder's
    assert_weights_equal(out, state)
    plain_load_refuses(pt)  # the allowlist does not outlive the read


def test_numpy1_scalar_name_is_aliased(tmp_path, state):
    """Checkpoints saved under numpy 1.x name numpy.core.multiarray.scalar."""
    pt = tmp_path / "checkpoint_final.pth"
    torch.save(nnunet_checkpoint(state), pt)
    rename_global(pt, b"numpy._core.multiarray\nscalar\n", b"numpy.core.multiarray\nscalar\n")
    got = read_checkpoint(pt)
    assert got.keys() == state.keys()
    torch.testing.assert_close(got, dict(state), rtol=0, atol=0)


def test_other_numpy_and_non_tensor_weights_refused(tmp_path, state):
    pt = tmp_path / "array.pth"
    torch.save(nnunet_checkpoint(state, logging={"arr": np.zeros(3)}), pt)  # an ndarray: not in the allowlist
    with pytest.raises(ModelPackageError, match=r"refusing array.pth: .*numpy\._core\.multiarray\._reconstruct"):
        read_checkpoint(pt)
    pt = tmp_path / "int16.pth"
    torch.save(nnunet_checkpoint(state, _best_ema=np.int16(3)), pt)  # a dtype class outside the list
    with pytest.raises(ModelPackageError, match=r"Int16DType"):
        read_checkpoint(pt)
    pt = tmp_path / "mixed.pth"
    torch.save(nnunet_checkpoint({**state, "extra": np.float32(1.0)}), pt)  # the chosen state dict must be tensors
    with pytest.raises(ModelPackageError, match="'extra' is not a tensor"):
        read_checkpoint(pt)


# ---------------------------------------------------------------- (b) pickle payloads


@pytest.mark.parametrize("how", ["os.system", "shutil.copyfile"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, state, how):
    marker = tmp_path / "marker"
    pt = tmp_path / "evil.pth"
    # Hidden among the entries that are allowed to be non-tensors, next to real numpy scalars.
    torch.save(nnunet_checkpoint(state, logging={"x": [np.float32(1.0)], "hook": Payload(how, marker)}), pt)
    assert not marker.exists()
    line = one_error_line(run_cli("import", str(pt), *_options(), "-o", str(tmp_path / "pkg")))
    assert "evil.pth" in line and ("system" if how == "os.system" else "shutil.copyfile") in line
    assert "state_dict" in line  # says what to do
    with pytest.raises(ModelPackageError, match="refusing evil.pth"):
        read_checkpoint(pt)
    assert not marker.exists()
    assert not (tmp_path / "pkg").exists()


# ---------------------------------------------------------------- (c) the command and its alias


def test_import_command_and_import_weights_alias(tmp_path, state):
    pt = tmp_path / "model.pt"
    torch.save(state, pt)
    for command in ("import", "import-weights"):
        out = tmp_path / f"pkg-{command}"
        result = run_cli(command, str(pt), *_options(f"from-{command}"), "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(out)
        assert open_package(out).manifest.name == f"from-{command}"
        assert_weights_equal(out, state)
    # The alias keeps its interface: every manifest option is required, and there is no --install.
    assert one_error_line(run_cli("import-weights", str(pt), "--architecture", "unet3d", "-o", str(tmp_path / "x")))
    assert one_error_line(run_cli("import-weights", str(pt), *_options(), "--install"))
    # `import` asks for what a bare state dict lacks, in one line.
    line = one_error_line(run_cli("import", str(pt), "-o", str(tmp_path / "y")))
    assert "--architecture" in line and "--spacing" in line and "--labels" in line
    assert one_error_line(run_cli("import", str(pt), *_options()))  # neither -o nor --install
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ---------------------------------------------------------------- (d) --install


def test_install_lists_the_model_and_refuses_a_second_install(tmp_path, state, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv("TUMORSEG_MODELS", str(models))
    pt = tmp_path / "model.pt"
    torch.save(nnunet_checkpoint(state), pt)
    env = {"TUMORSEG_MODELS": str(models)}
    result = run_cli("import", str(pt), *_options("my-model"), "--install", env_extra=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(models / "my-model")
    listed = {info.key: info for info in installed_models()}
    assert "my-model" in listed and listed["my-model"].source == "user"
    assert_weights_equal(models / "my-model", state)
    before = (models / "my-model" / "manifest.json").read_bytes()
    line = one_error_line(run_cli("import", str(pt), *_options("my-model"), "--install", env_extra=env))
    assert "already installed" in line
    assert (models / "my-model" / "manifest.json").read_bytes() == before
    result = run_cli("import", str(pt), *_options("my-model"), "--install", "--overwrite", env_extra=env)
    assert result.returncode == 0, result.stderr
    # The Python API installs the same way.
    with pytest.raises(ModelPackageError, match="already installed"):
        tumorseg_core.import_model(pt, install=True, architecture="unet3d", kwargs=KWARGS, name="my-model", **FIELDS)
    out = tumorseg_core.import_model(pt, install=True, architecture="unet3d", kwargs=KWARGS, name="api", **FIELDS)
    assert out == models / "api" and "api" in {info.key for info in installed_models()}
    assert sorted(p.name for p in models.iterdir()) == ["api", "my-model"]  # no temporary folders left


# ---------------------------------------------------------------- (e) sources this version cannot import


def _unsupported_sources(tmp_path: Path, state) -> list:
    nnunet = tmp_path / "Dataset001_Tumor" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (nnunet / "fold_0").mkdir(parents=True)
    (nnunet / "plans.json").write_text("{}")
    (nnunet / "dataset.json").write_text("{}")
    torch.save(nnunet_checkpoint(state), nnunet / "fold_0" / "checkpoint_final.pth")
    bundle = tmp_path / "spleen_ct_segmentation"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text("{}")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("plans.json", "{}")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07")
    return [nnunet, bundle, archive, onnx]


def test_unsupported_sources_are_refused_in_one_line(tmp_path, state, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv("TUMORSEG_MODELS", str(models))
    # nnU-Net folders, MONAI bundles and .onnx files are imported (test_import_nnunet.py,
    # test_monai_import.py, test_import_onnx.py)
    for source in _unsupported_sources(tmp_path, state)[2:3]:
        for where in (["-o", str(tmp_path / "pkg")], ["--install"]):
            line = one_error_line(run_cli("import", str(source), *where, env_extra={"TUMORSEG_MODELS": str(models)}))
            assert "cannot import" in line and "PyTorch state dict (.pt/.pth)" in line, line
            assert source.name in line
        # With every state-dict option given too: still refused, never read as something else.
        line = one_error_line(run_cli("import", str(source), *_options(), "-o", str(tmp_path / "pkg")))
        assert "cannot import" in line
        with pytest.raises(ModelPackageError, match="cannot import"):
            tumorseg_core.import_model(source, tmp_path / "pkg", architecture="unet3d", kwargs=KWARGS, **FIELDS)
    assert not (tmp_path / "pkg").exists() and not models.exists()


def test_source_kind_is_named(tmp_path, state):
    nnunet, bundle, archive, onnx = _unsupported_sources(tmp_path, state)
    # nnU-Net folders are imported now (test_import_nnunet.py); this one's empty plans.json is refused, named.
    # This MONAI bundle folder has no configs/metadata.json: the bundle reader says so, naming it.
    expected = {nnunet: "plans.json", bundle: "(?i)bundle", archive: ".zip", onnx: "ONNX"}
    for source, what in expected.items():
        with pytest.raises(ModelPackageError, match=what):
            tumorseg_core.import_model(source, tmp_path / "pkg", architecture="unet3d", kwargs=KWARGS, **FIELDS)
    with pytest.raises(ModelPackageError, match="does not exist"):
        tumorseg_core.import_model(tmp_path / "nope.pt", tmp_path / "pkg", architecture="unet3d", **FIELDS)
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pt)
    with pytest.raises(ModelPackageError, match="architecture"):
        tumorseg_core.import_model(pt, tmp_path / "pkg", **FIELDS)
    with pytest.raises(ModelPackageError, match="not both"):
        tumorseg_core.import_model(pt, tmp_path / "pkg", install=True, architecture="unet3d", **FIELDS)


def test_torchscript_is_refused(tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    pt = tmp_path / "model.pt"
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    pt.write_bytes(buffer.getvalue())
    with pytest.raises(ModelPackageError, match="TorchScript"):
        read_checkpoint(pt)


def test_a_tumorseg_package_is_installed_as_it_is(tmp_path, state, monkeypatch):
    """``tumorseg import PACKAGE --install`` (what Slicer's Import model does) verifies and installs it."""
    models = tmp_path / "models"
    monkeypatch.setenv("TUMORSEG_MODELS", str(models))
    pt = tmp_path / "model.pt"
    torch.save(state, pt)
    package = tumorseg_core.import_model(pt, tmp_path / "pkg", architecture="unet3d", kwargs=KWARGS, **FIELDS)
    installed = tumorseg_core.import_model(package, install=True)
    assert (installed / "manifest.json").read_bytes() == (package / "manifest.json").read_bytes()
    with pytest.raises(ModelPackageError, match="already a TumorSeg model package"):
        tumorseg_core.import_model(package, tmp_path / "copy")
    line = one_error_line(run_cli("import", str(package), "--install", env_extra={"TUMORSEG_MODELS": str(models)}))
    assert "already installed" in line
