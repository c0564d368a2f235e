"""Training: tiny runs end to end, checkpoints, exact resume, DDP (gloo), CLI round trip."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from dataset_factory import write_labelled_case  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tumorseg_core.errors import CancelledError, InputError  # noqa: E402
from tumorseg_core.training import checkpoint as ckpt  # noqa: E402
from tumorseg_core.training.trainer import train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "architecture": "unet3d",
    "kwargs": {"features": [4, 8]},
    "patch_size": [32, 32, 32],
    "spacing": [2.0, 2.0, 2.0],
    "epochs": 2,
    "iterations_per_epoch": 2,
    "batch_size": 1,
    "val_fraction": 0.25,
    "device": "cpu",
    "seed": 1,
    "name": "tiny-test",
}


def _make_volumes(root: Path, n: int = 4) -> Path:
    """n cases of 30x28x24 voxels (1.5x1.5x2 mm) with one bright spherical lesion each."""
    z, y, x = np.mgrid[:24, :28, :30]
    for i in range(n):
        rng = np.random.default_rng(i)
        c = rng.integers(8, 16, 3)
        label = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < 16).astype(np.uint8)
        image = (100 + 10 * rng.standard_normal(label.shape) + 80 * label).astype(np.float32)
        img = sitk.GetImageFromArray(image)
        img.SetSpacing((1.5, 1.5, 2.0))
        img.SetOrigin((10.0, -5.0, 3.0))
        write_labelled_case(root, f"case{i}", img, sitk.GetImageFromArray(label))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return _make_volumes(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    """An uninterrupted 2-epoch run: (package, workdir)."""
    out = tmp_path_factory.mktemp("full")
    config = dict(TINY, data=str(data_dir), workdir=str(out / "work"))
    package = train(config, out / "pkg", command="tumorseg train ... (test)")
    return package, out / "work"


def _log_rows(workdir: Path) -> list[dict[str, str]]:
    with open(workdir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_checkpoint_structure_roundtrip_without_pickle():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": ckpt.rng_state(), "nan": float("nan")}
    tensors: dict = {}
    structure = json.loads(json.dumps(ckpt.flatten(state, tensors)))
    back = ckpt.unflatten(structure, tensors)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)
    assert set(back["optimizer"]["state"]) == {0, 1}  # integer keys survive JSON
    torch.testing.assert_close(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    np.testing.assert_array_equal(back["rng"]["numpy"][1], np.random.get_state()[1])
    assert back["rng"]["numpy"][1].dtype == np.random.get_state()[1].dtype
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.1
    np.random.seed(0)
    expected = np.random.random()
    np.random.seed(0)
    saved = ckpt.rng_state()
    np.random.random()
    ckpt.set_rng_state(ckpt.unflatten(json.loads(json.dumps(ckpt.flatten(saved, tensors := {}))), tensors))
    assert np.random.random() == expected


def test_train_writes_checkpoints_log_and_an_openable_package(full_run):
    from tumorseg_core.modelpkg.package import open_package

    package, workdir = full_run
    for name in ("last.safetensors", "best.safetensors", "last.state.safetensors", "last.state.json", "state.json"):
        assert (workdir / name).is_file(), name
    state = json.loads((workdir / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2
    rows = _log_rows(workdir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_dice"]) <= 1 for r in rows)
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # poly decay reached the end of the run

    pkg = open_package(package)
    manifest = pkg.manifest.to_dict()
    assert manifest["kwargs"]["in_channels"] == 1 and manifest["kwargs"]["out_channels"] == 2
    assert manifest["output"]["labels"][0]["name"] == "Tumor"
    assert manifest["output"]["labels"][0]["terminology"]["type"] == ["SCT", "108369006", "Neoplasm"]
    assert manifest["spacing"] == [2.0, 2.0, 2.0] and manifest["patch_size"] == [32, 32, 32]
    validation = manifest["metrics"]["validation"]
    assert validation["cases"] == 1 and validation["epochs"] == 2
    assert validation["dice"] == state["history"][state["best_epoch"] - 1]["val_dice"]
    (net,) = pkg.load_networks("cpu")
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)
    best = load_file(str(workdir / "best.safetensors"))
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, best[key])
    readme = (Path(package) / "README.md").read_text()
    assert "tumorseg train ... (test)" in readme
    stored = json.loads((Path(package) / "training_config.json").read_text())
    assert stored["epochs"] == 2 and stored["inputs"] == manifest["inputs"] and "workdir" not in stored


def test_interrupted_run_resumes_exactly_where_it_stopped(full_run, data_dir, tmp_path):
    _, full_workdir = full_run
    workdir = tmp_path / "work"
    config = dict(TINY, data=str(data_dir), workdir=str(workdir))

    def cancel() -> bool:  # "Ctrl+C" as soon as epoch 1 is checkpointed
        return (workdir / "state.json").is_file()

    with pytest.raises(CancelledError):
        train(config, tmp_path / "pkg", cancel=cancel)
    assert json.loads((workdir / "state.json").read_text())["epoch"] == 1
    assert [r["epoch"] for r in _log_rows(workdir)] == ["1"]
    assert not (tmp_path / "pkg").exists()

    with pytest.raises(InputError, match="already holds a checkpoint"):
        train(config, tmp_path / "pkg", resume=False)
    package = train(config, tmp_path / "pkg", resume=True)
    assert package is not None and (tmp_path / "pkg" / "manifest.json").is_file()
    state = json.loads((workdir / "state.json").read_text())
    assert state["epoch"] == 2
    assert [r["epoch"] for r in _log_rows(workdir)] == ["1", "2"]
    # Same weights and optimizer moments as the run that was never interrupted.
    for name in ("last.safetensors", "last.state.safetensors"):
        resumed, full = load_file(str(workdir / name)), load_file(str(full_workdir / name))
        assert resumed.keys() == full.keys()
        for key in full:
            torch.testing.assert_close(resumed[key], full[key], rtol=1e-5, atol=1e-6, msg=f"{name}:{key}")
    full_state = json.loads((full_workdir / "state.json").read_text())
    assert [r["train_loss"] for r in state["history"]] == pytest.approx(
        [r["train_loss"] for r in full_state["history"]], rel=1e-5
    )


def test_init_weights_fine_tunes_from_a_verified_package(full_run, data_dir, tmp_path):
    from tumorseg_core.errors import ModelPackageError

    package, _ = full_run
    config = dict(TINY, data=str(data_dir), workdir=str(tmp_path / "work"), epochs=1, iterations_per_epoch=1,
                  init_weights=str(package), lr=1e-12)
    tuned = train(config, tmp_path / "tuned")
    start = load_file(str(Path(package) / "fold0.safetensors"))
    after = load_file(str(Path(tuned) / "fold0.safetensors"))
    # With a vanishing learning rate the fine-tuned weights are the package's weights.
    for key in start:
        torch.testing.assert_close(after[key], start[key], rtol=1e-4, atol=1e-6, msg=key)
    scratch = train(dict(config, init_weights=None, workdir=str(tmp_path / "w2")), tmp_path / "scratch")
    first = next(iter(start))
    assert not torch.allclose(load_file(str(Path(scratch) / "fold0.safetensors"))[first], start[first])
    # Wrong architecture size: a one-line package error, nothing written.
    with pytest.raises(ModelPackageError, match="do not match"):
        train(dict(config, kwargs={"features": [8, 16]}, workdir=str(tmp_path / "w3")), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_val_every_skips_validation_but_always_validates_the_last_epoch(data_dir, tmp_path):
    config = dict(TINY, data=str(data_dir), workdir=str(tmp_path / "work"), epochs=3, iterations_per_epoch=1,
                  val_every=2)
    train(config, tmp_path / "pkg")
    rows = _log_rows(tmp_path / "work")
    assert [r["val_dice"] != "" for r in rows] == [False, True, True]
    assert [float(r["val_seconds"]) > 0 for r in rows] == [False, True, True]
    assert all(0 <= float(r["data_seconds"]) <= float(r["seconds"]) for r in rows)
    with pytest.raises(InputError, match="val_every"):
        train(dict(config, val_every=0, workdir=str(tmp_path / "w0")), tmp_path / "bad")


def test_epochs_that_fit_counts_whole_epochs_left_in_the_limit():
    from tumorseg_core.training.trainer import epochs_that_fit

    assert epochs_that_fit(None, 1e9, 10.0) == float("inf")
    assert epochs_that_fit(1.0, 50.0, 0.0) == float("inf")  # nothing measured yet
    assert epochs_that_fit(1.0, 20.0, 10.0) == 4  # 40 s left
    assert epochs_that_fit(1.0, 45.0, 10.0) == 1
    assert epochs_that_fit(1.0, 55.0, 10.0) == 0
    assert epochs_that_fit(1.0, 90.0, 10.0) == 0


def test_time_limit_validates_the_last_epoch_that_fits_writes_the_package_and_resumes(data_dir, tmp_path,
                                                                                    monkeypatch):
    import tumorseg_core.training.trainer as train_module

    calls = []

    def scripted(answers):
        it = iter(answers)

        def fit(limit, elapsed_s, longest_s):
            calls.append((limit, elapsed_s, longest_s))
            return next(it)
        return fit

    # After epoch 1's training another epoch fits; after epoch 2's none does.
    monkeypatch.setattr(train_module, "epochs_that_fit", scripted([5.0, 0.0]))
    config = dict(TINY, data=str(data_dir), workdir=str(tmp_path / "work"), epochs=4, iterations_per_epoch=1,
                  val_every=3, time_limit_minutes=5.0)
    package = train(config, tmp_path / "pkg")
    rows = _log_rows(tmp_path / "work")
    assert [r["val_dice"] != "" for r in rows] == [False, True]  # the last epoch that fit is validated
    validation = json.loads((Path(package) / "manifest.json").read_text())["metrics"]["validation"]
    assert validation["epochs"] == 2 and validation["dice"] is not None
    # Elapsed time counts from the call (data preparation included); epochs are measured.
    assert [c[0] for c in calls] == [5.0, 5.0] and calls[0][1] > calls[0][2] > 0
    assert calls[1][1] > calls[0][1] and calls[1][2] >= calls[0][2]
    # The same command (same package folder, --overwrite) resumes: one more epoch fits.
    monkeypatch.setattr(train_module, "epochs_that_fit", scripted([0.0]))
    train(config, tmp_path / "pkg", overwrite=True)
    assert [r["val_dice"] != "" for r in _log_rows(tmp_path / "work")] == [False, True, True]
    monkeypatch.setattr(train_module, "epochs_that_fit", scripted([]))  # no limit: never asked
    train(dict(config, time_limit_minutes=None), tmp_path / "pkg", overwrite=True)
    assert [r["epoch"] for r in _log_rows(tmp_path / "work")] == ["1", "2", "3", "4"]
    for bad in (0, -1.0, float("inf"), float("nan"), True):
        with pytest.raises(InputError, match="time_limit_minutes"):
            train(dict(config, time_limit_minutes=bad, workdir=str(tmp_path / "w0")), tmp_path / "bad")


def test_separate_validation_set_trains_on_every_case_and_selects_on_it(data_dir, tmp_path, caplog):
    """val_data: all of ``data`` trains, checkpoints are chosen on the separate set."""
    val_dir = _make_volumes(tmp_path / "val", n=2)
    config = dict(TINY, data=str(data_dir), val_data=str(val_dir), workdir=str(tmp_path / "work"), epochs=1,
                  iterations_per_epoch=1, augment={"fg_sampling": "lesion"})
    with caplog.at_level("INFO", logger="tumorseg_core.training.setup"):
        package = train(config, tmp_path / "pkg")
    assert "4 training, 2 validation cases" in caplog.text
    validation = json.loads((Path(package) / "manifest.json").read_text())["metrics"]["validation"]
    assert validation["cases"] == 2
    assert "validation:" in validation["data"]
    # Synthetic validation phantoms are new ones (own seed), never the training phantoms.
    synth = dict(TINY, data="synthetic:2", val_data="synthetic:2", workdir=str(tmp_path / "w-syn"), epochs=1,
                 iterations_per_epoch=1, synthetic={"fov_mm": [40, 60], "max_size": 32},
                 val_synthetic={"fov_mm": [40, 60], "max_size": 32},
                 augment={"rotation_prob": 0.0, "scale_prob": 0.0})
    train(synth, tmp_path / "pkg-syn")
    folders = sorted((tmp_path / "w-syn" / "cache" / "synthetic").glob("phantoms-*"))
    assert len(folders) == 2
    first, second = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / "images" / "syn_000.nii.gz"))) for f in folders)
    assert first.shape != second.shape or not np.array_equal(first, second)
    # Errors: the training cases themselves, or together with k-fold.
    with pytest.raises(InputError, match="repeats training cases"):
        train(dict(config, val_data=str(data_dir), workdir=str(tmp_path / "w2")), tmp_path / "bad")
    with pytest.raises(InputError, match="exclude each other"):
        train(dict(config, folds=2, workdir=str(tmp_path / "w3")), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_settings_added_later_keep_older_checkpoints_resumable():
    """val_data, val_synthetic and augment.fg_sampling enter the resume hash only when set."""
    from tumorseg_core.training.augment import augment_config
    from tumorseg_core.training.config import config_hash, merge_config

    new = merge_config({"data": "synthetic:4"}, {})
    new["augment"] = augment_config({})
    old = {k: v for k, v in new.items() if k not in ("val_data", "val_synthetic")}
    old["augment"] = {k: v for k, v in new["augment"].items() if k != "fg_sampling"}
    assert config_hash(old) == config_hash(new)
    assert config_hash({**new, "val_data": "synthetic:4"}) != config_hash(new)
    assert config_hash({**new, "augment": {**new["augment"], "fg_sampling": "lesion"}}) != config_hash(new)


def test_configuration_errors_are_user_errors(data_dir, tmp_path):
    base = dict(TINY, data=str(data_dir), workdir=str(tmp_path / "work"))
    with pytest.raises(InputError, match="multiple"):
        train(dict(base, kwargs={"features": [4, 8, 16, 32]}, patch_size=[36, 36, 36]), tmp_path / "a")
    with pytest.raises(InputError, match="no checkpoint"):
        train(base, tmp_path / "a", resume=True)
    with pytest.raises(InputError, match="synthetic:N"):
        train(dict(base, data="synthetic:x"), tmp_path / "a")
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="already exists"):
        train(base, tmp_path / "exists")
    # A checkpoint from another configuration is never continued silently.
    ckpt.save_checkpoint(tmp_path / "work", torch.nn.Linear(1, 1), {}, {"epoch": 1, "config_hash": "other"}, False)
    with pytest.raises(InputError, match="different training configuration"):
        train(base, tmp_path / "b")


def test_cli_trains_on_synthetic_phantoms_and_the_package_segments(tmp_path, data_dir, caplog):
    """``tumorseg train synthetic:4`` then ``tumorseg segment`` with the new package."""
    from tumorseg_core.cli import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": "synthetic:4", "synthetic": {"fov_mm": [40, 60], "max_size": 32},
                                  "augment": {"rotation_prob": 0.0, "scale_prob": 0.0}}))
    argv = ["train", str(config), "-o", str(tmp_path / "pkg"), "--workdir", str(tmp_path / "work"),
            "--kwargs", '{"features": [4, 8]}', "--patch-size", "32", "32", "32", "--spacing", "2", "2", "2",
            "--epochs", "2", "--iterations-per-epoch", "2", "--batch-size", "1", "--device", "cpu",
            "--val-fraction", "0.25", "--seed", "3"]
    assert main(argv) == 0
    # stderr is not a terminal here: no bar, so the log shows one line per epoch (without -v).
    epochs = [r.getMessage() for r in caplog.records if r.name == "tumorseg_core.training.trainer" and "epoch" in r.getMessage()]
    assert [m.split(":")[0] for m in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert logging.getLogger("tumorseg_core.training.trainer").level == logging.NOTSET  # restored after the run
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert "synthetic phantoms" in manifest["metrics"]["validation"]["data"]
    assert "--iterations-per-epoch 2" in (tmp_path / "pkg" / "README.md").read_text()

    image = sorted((tmp_path / "work" / "cache" / "synthetic").glob("phantoms-*/images/syn_000.nii.gz"))[0]
    out = tmp_path / "seg.nii.gz"
    result = subprocess.run(
        [sys.executable, "-m", "tumorseg_core", "segment", str(image), "-o", str(out),
         "--model", str(tmp_path / "pkg"), "--device", "cpu"],
        cwd=REPO, capture_output=True, encoding="utf-8", timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    seg, ref = sitk.ReadImage(str(out)), sitk.ReadImage(str(image))
    assert seg.GetSize() == ref.GetSize()
    assert seg.GetSpacing() == pytest.approx(ref.GetSpacing())


@pytest.mark.slow
def test_two_process_ddp_on_cpu_writes_one_package(data_dir, tmp_path):
    launcher = tmp_path / "launch_train.py"
    launcher.write_text(textwrap.dedent("""
        import argparse, logging, sys
        from tumorseg_core.commands import train
        logging.basicConfig(level=logging.INFO)
        parser = argparse.ArgumentParser()
        train.add_arguments(parser)
        sys.exit(train.run(parser.parse_args()))
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(launcher),
           str(data_dir), "-o", str(tmp_path / "pkg"), "--workdir", str(tmp_path / "work"),
           "--kwargs", '{"features": [4, 8]}', "--patch-size", "32", "32", "32", "--spacing", "2", "2", "2",
           "--epochs", "2", "--iterations-per-epoch", "2", "--batch-size", "1", "--device", "cpu",
           "--val-fraction", "0.25"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 of 2 (gloo)" in result.stderr and "rank 0 of 2 (gloo)" in result.stderr
    assert result.stderr.count("wrote model package") == 2  # package.py + train.py lines, rank 0 only
    from tumorseg_core.modelpkg.package import open_package

    pkg = open_package(tmp_path / "pkg")
    assert pkg.manifest.to_dict()["metrics"]["validation"]["epochs"] == 2
    assert [r["epoch"] for r in _log_rows(tmp_path / "work")] == ["1", "2"]
    # only rank 0 wrote the package: no leftover temporary package folders
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".pkg")) == []
    # A time limit already spent: both ranks stop after the same (validated) epoch, without a hang.
    cmd[cmd.index("--epochs") + 1] = "5"
    result = subprocess.run(cmd + ["--overwrite", "--time-limit", "0.001"], cwd=REPO, capture_output=True,
                            encoding="utf-8", timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("stopped after epoch 3 of 5") == 1
    assert [r["val_dice"] != "" for r in _log_rows(tmp_path / "work")] == [True, True, True]
