"""Training that respects the machine (issue #21): CPU-sized defaults, the early time estimate,
checkpoints inside an epoch (timed, on cancel, on SIGINT/SIGTERM) that resume at the saved
iteration, progress lines when piped, "not validated" packages and the modality from the data."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from dataset_factory import write_labelled_case  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tumorseg_core.errors import CancelledError, ModelPackageError  # noqa: E402
from tumorseg_core.training.trainer import train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "architecture": "unet3d",
    "kwargs": {"features": [4, 8]},
    "patch_size": [16, 16, 16],
    "spacing": [3.0, 3.0, 3.0],
    "epochs": 1,
    "iterations_per_epoch": 4,
    "batch_size": 1,
    "val_fraction": 0.34,
    "device": "cpu",
    "seed": 2,
    "augment": {"rotation_prob": 0.0, "scale_prob": 0.0},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """3 cases of 24x22x20 voxels (2x2x3 mm, flipped x) with one bright ball each."""
    root = tmp_path_factory.mktemp("data")
    z, y, x = np.mgrid[:20, :22, :24]
    for i in range(3):
        rng = np.random.default_rng(i)
        c = rng.integers(7, 13, 3)
        label = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < 12).astype(np.uint8)
        image = sitk.GetImageFromArray((100 + 10 * rng.standard_normal(label.shape) + 80 * label).astype(np.float32))
        image.SetSpacing((2.0, 2.0, 3.0))
        image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
        write_labelled_case(root, f"case{i}", image, sitk.GetImageFromArray(label))
    return root


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted run that asks for a validation Dice of 1.0: (package, workdir)."""
    out = tmp_path_factory.mktemp("full")
    package = train(dict(TINY, data=str(data_dir), workdir=str(out / "work"), min_val_dice=1.0, name="weak"),
                    out / "weak")
    return package, out / "work"


# --- CPU-sized defaults and the estimate -------------------------------------------------

def test_sizes_left_open_are_filled_for_the_machine():
    from tumorseg_core.training.config import MACHINE_DEFAULTS, apply_machine_defaults, merge_config

    config = merge_config({"data": "synthetic:4"}, {"epochs": 1})
    cpu, gpu = apply_machine_defaults(config, "cpu"), apply_machine_defaults(config, "cuda")
    for key in ("patch_size", "batch_size", "iterations_per_epoch"):
        assert cpu[key] == MACHINE_DEFAULTS["cpu"][key] and gpu[key] == MACHINE_DEFAULTS["gpu"][key]
    assert cpu["epochs"] == gpu["epochs"] == 1  # what the user gave stays
    cpu_voxels = np.prod(cpu["patch_size"]) * cpu["batch_size"] * cpu["iterations_per_epoch"]
    gpu_voxels = np.prod(gpu["patch_size"]) * gpu["batch_size"] * gpu["iterations_per_epoch"]
    assert cpu_voxels * 10 < gpu_voxels  # an epoch on the CPU is a small fraction of a GPU epoch
    assert apply_machine_defaults(dict(config, patch_size=[32, 32, 32]), "cpu")["patch_size"] == [32, 32, 32]


def test_train_help_shows_every_default():
    from tumorseg_core.cli import build_parser
    from tumorseg_core.training.config import MACHINE_DEFAULTS

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    parser = sub.choices["train"]
    missing = [a.dest for a in parser._actions
               if a.option_strings and a.dest not in ("help", "output") and "default" not in (a.help or "")]
    assert missing == []
    cpu = " ".join(str(v) for v in MACHINE_DEFAULTS["cpu"]["patch_size"])
    assert f"{cpu} on a CPU" in " ".join(parser.format_help().split())


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_estimate_comes_after_a_few_iterations_and_warns_when_too_long(caplog):
    from tumorseg_core.training.eta import TIMED_ITERATIONS, TrainingClock

    caplog.set_level(logging.INFO, logger="tumorseg_core.training.eta")
    clock = FakeClock()
    eta = TrainingClock(10, 100, "cpu", None, 0, clock=clock)
    eta.start_epoch()
    clock.now += 12.0  # the first iteration (warm-up) is slower and not counted
    eta.iteration_done(0, 1, 1.0)
    for i in range(TIMED_ITERATIONS):
        assert not [r for r in caplog.records if "estimate" in r.getMessage()]
        clock.now += 8.0
        eta.iteration_done(0, 2 + i, 1.0)
    (line,) = [r.getMessage() for r in caplog.records if "estimate" in r.getMessage()]
    assert "8.00 s per iteration" in line and "13 min 20 s per epoch" in line
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "CPU" in warning.getMessage() and "2 h" in warning.getMessage()

    caplog.clear()
    eta = TrainingClock(10, 100, "cuda", None, 0, clock=clock)
    eta.start_epoch()
    clock.now += 45.0  # a first iteration this slow is the estimate: it comes within the first minute
    eta.iteration_done(0, 1, 1.0)
    assert any("45.00 s per iteration" in r.getMessage() for r in caplog.records)
    caplog.clear()
    for device, limit, expected in (("cuda", None, 0), ("cuda", 60.0, 1), ("cpu", 600.0, 0)):
        eta = TrainingClock(10, 100, device, limit, 0, clock=clock)
        eta.start_epoch()
        for i in range(1 + TIMED_ITERATIONS):
            clock.now += 8.0
            eta.iteration_done(0, 1 + i, 1.0)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == expected, (device, limit, warnings)
        assert all("--time-limit" in w for w in warnings)
        caplog.clear()


# --- checkpoints inside an epoch and exact resume ----------------------------------------

def test_a_run_stopped_mid_epoch_resumes_at_the_saved_iteration_exactly(full_run, data_dir, tmp_path):
    full_work, work = full_run[1], tmp_path / "work"

    seen: list = []

    def cancel() -> bool:  # a timed checkpoint after every iteration (checkpoint_minutes 0); stop after 2
        state_file = work / "state.json"
        seen.append(json.loads(state_file.read_text()).get("iteration") if state_file.is_file() else None)
        return len(seen) > 2

    config = dict(TINY, data=str(data_dir), workdir=str(work), checkpoint_minutes=0)
    with pytest.raises(CancelledError, match=r"iteration 2/4; .*run the same command again to resume"):
        train(config, tmp_path / "pkg", cancel=cancel)
    assert seen == [None, 1, 2]
    state = json.loads((work / "state.json").read_text())
    assert state["epoch"] == 0 and state["iteration"] == 2 and len(state["partial"]["losses"]) == 2
    assert state["history"] == [] and not (tmp_path / "pkg").exists()

    assert train(config, tmp_path / "pkg") is not None
    state, full_state = (json.loads((w / "state.json").read_text()) for w in (work, full_work))
    assert "iteration" not in state and state["epoch"] == 1
    assert state["history"][0]["train_loss"] == pytest.approx(full_state["history"][0]["train_loss"], rel=1e-6)
    for name in ("last.safetensors", "last.state.safetensors"):  # weights, Adam moments, scheduler
        resumed, full = load_file(str(work / name)), load_file(str(full_work / name))
        assert resumed.keys() == full.keys()
        for key in full:
            torch.testing.assert_close(resumed[key], full[key], rtol=1e-5, atol=1e-6, msg=f"{name}:{key}")


# --- the CLI: signals, resume, piped progress --------------------------------------------

def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"tumorseg train ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _iteration(work: Path) -> int:
    try:
        return int(json.loads((work / "state.json").read_text()).get("iteration") or 0)
    except (OSError, ValueError):  # not written yet
        return 0


def test_signals_save_a_checkpoint_and_the_same_command_resumes_from_it(data_dir, tmp_path):
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "tumorseg_core", "train", str(data_dir), "-o", str(tmp_path / "pkg"),
           "--workdir", str(work), "--kwargs", '{"features": [4, 8]}', "--patch-size", "16", "16", "16",
           "--spacing", "3", "3", "3", "--epochs", "1", "--iterations-per-epoch", "500", "--batch-size", "1",
           "--device", "cpu", "--checkpoint-every", "0", "--log-every", "0.001", "--seed", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    results = []
    for sig, number in ((signal.SIGINT, 1), (signal.SIGTERM, 2)):
        log = tmp_path / f"stderr{number}.txt"
        before = _iteration(work)
        with open(log, "w") as err:  # stderr is a file, not a terminal
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=env)
            try:
                _wait_for(lambda log=log, before=before, n=number: ("estimate:" in log.read_text() or n == 2)
                          and _iteration(work) >= before + 2, proc, "the estimate and two checkpointed iterations")
                proc.send_signal(sig)
                assert proc.wait(timeout=120) == 130
            finally:
                if proc.poll() is None:
                    proc.kill()
        text = log.read_text()
        state = json.loads((work / "state.json").read_text())
        results.append((text, state))
        last = text.strip().splitlines()[-1]
        assert last.startswith("error: training stopped at epoch 1/1, iteration ")
        assert f"iteration {state['iteration']}/500" in last and "run the same command again to resume" in last
        assert state["iteration"] > before and len(state["partial"]["losses"]) == state["iteration"]
        assert "\r" not in text  # no bar when piped: one progress line per interval
        progress = [line for line in text.splitlines() if "epoch 1/1, iteration " in line and "s/iteration" in line]
        assert len(progress) >= 2
    assert "per epoch of 500 iterations" in results[0][0] and "in total" in results[0][0]
    (first_text, first), (second_text, second) = results
    assert "resuming" not in first_text
    assert f"at epoch 1, iteration {first['iteration']} of 500" in second_text
    # The second run continued the first: the losses of the first run's iterations are kept.
    assert second["partial"]["losses"][: first["iteration"]] == first["partial"]["losses"]
    assert not (tmp_path / "pkg").exists()


# --- "not validated" and the modality ----------------------------------------------------

def test_a_package_below_the_dice_threshold_is_marked_and_segmenting_with_it_warns(full_run, data_dir, tmp_path,
                                                                                   caplog):
    from tumorseg_core.cli import main
    from tumorseg_core.inference.segmenter import Segmenter

    package, _ = full_run
    manifest = json.loads((package / "manifest.json").read_text())
    dice = manifest["metrics"]["validation"]["dice"]
    assert dice < 1.0 and manifest["validated"] is False
    assert "not validated" in (package / "README.md").read_text()
    # A folder of images says nothing about its modality: the manifest does not guess "MRI".
    assert [i["modality"] for i in manifest["inputs"]] == ["unspecified"]

    caplog.set_level(logging.WARNING, logger="tumorseg_core.inference.segmenter")
    Segmenter(package, device="cpu")
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "tumorseg_core.inference.segmenter"]
    assert "'weak' is not validated" in warning and f"{dice:.4f}" in warning and "< 1.0" in warning
    caplog.clear()
    image = data_dir / "images" / "case0.nii.gz"
    assert main(["segment", str(image), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(package),
                 "--device", "cpu"]) == 0
    assert any("not validated" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_synthetic_data_name_the_modalities_they_drew(tmp_path):
    from tumorseg_core.training.synthetic_data import synthetic_source

    options = {"fov_mm": [30, 40], "max_size": 16, "lesion_free_fraction": 0.0}
    names = set()
    for n, seed in ((4, 0), (1, 0), (1, 2)):
        source = synthetic_source(n, seed, options, tmp_path / f"{n}-{seed}")
        records = json.loads(next((tmp_path / f"{n}-{seed}").glob("phantoms-*/phantoms.json")).read_text())["cases"]
        drawn = sorted({r["modality"].upper() for r in records}, key=lambda m: m != "MRI")
        assert source.modalities == ["/".join(drawn)]
        names.add(source.modalities[0])
    assert "MRI/CT" in names and names & {"MRI", "CT"}  # mixed and single-modality data both occur


def test_manifests_without_the_field_stay_validated_and_a_bad_value_is_refused():
    from tumorseg_core.modelpkg.manifest import Manifest
    from tumorseg_core.modelpkg.package import read_manifest
    from tumorseg_core.training.outputs import is_validated

    shipped = read_manifest("default")
    assert "validated" not in shipped.to_dict() or shipped.to_dict()["validated"] is True
    assert shipped.validated and shipped.validation_warning() is None
    with pytest.raises(ModelPackageError, match="validated"):
        Manifest({**shipped.to_dict(), "validated": "no"})
    assert not Manifest({**shipped.to_dict(), "validated": False}).validated
    assert is_validated({"dice": 0.5}, 0.5) and not is_validated({"dice": 0.0016}, 0.5)
    assert not is_validated({"dice": None}, 0.5)  # not measured is not validated


def test_modality_comes_from_the_user_or_the_data_never_a_guess(caplog, monkeypatch):
    from tumorseg_core.training import setup
    from tumorseg_core.training.config import default_inputs, merge_config
    from tumorseg_core.training.datasets import DatasetSource

    monkeypatch.setattr(setup, "_count_channels", lambda source: 2)  # two input channels
    config = merge_config({"data": "x"}, {})
    described = DatasetSource([], "a dataset.json", ["CT", "PET"], {})
    assert setup._modalities(config, described) == (["CT", "PET"], 2)
    assert setup._modalities(dict(config, modalities=["MR", "PET"]), described) == (["MR", "PET"], 2)
    caplog.set_level(logging.WARNING, logger="tumorseg_core.training.setup")
    assert setup._modalities(config, DatasetSource([], "a folder", None, {})) == (None, 2)
    assert any("--modality" in r.getMessage() for r in caplog.records)

    assert [i["modality"] for i in default_inputs(None, 2)] == ["unspecified", "unspecified"]
    (ct,) = default_inputs(["CT"], 1)
    assert ct["normalization"]["type"] == "ct"
    (mixed,) = default_inputs(["MRI/CT"], 1)
    assert mixed["modality"] == "MRI/CT" and mixed["normalization"]["type"] == "zscore"
