"""The benchmark scripts' measured code paths run (no timing: they are only smoke-tested here).

``benchmarks/`` is not imported by the package, so an engine change that breaks a script
would otherwise go unnoticed until the next benchmark session.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

pytest.importorskip("monai")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from model_factory import make_tiny_package, tiny_manifest  # noqa: E402

from tumorseg_core.modelpkg.package import write_package  # noqa: E402
from tumorseg_core.models.registry import build_network  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def oblique_image(tmp_path, make_sphere_image, rotation_direction):
    image, _ = make_sphere_image(radius_mm=6.0, noise=2.0, size_xyz=(30, 26, 14), spacing=(0.9, 1.1, 2.5),
                                 origin=(4.0, -7.0, 12.0), direction=rotation_direction("z", 25.0))
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, image


def test_cpu_vs_monai_sides_give_labels_on_the_input_grid(tmp_path, oblique_image):
    bench = _load("cpu_vs_monai")
    package = str(make_tiny_package(tmp_path / "pkg", postprocessing=[{"label": 1, "min_volume_mm3": 5.0}]))
    path, image = oblique_image
    outs = {}
    for side, run in (("baseline", bench.run_baseline), ("tumorseg", lambda *a: bench.run_tumorseg(*a, None))):
        outs[side] = tmp_path / f"{side}.nii.gz"
        assert run(str(path), package, str(outs[side])) > 0
        result = sitk.ReadImage(str(outs[side]))
        assert result.GetSize() == image.GetSize() and result.GetDirection() == pytest.approx(image.GetDirection())
    # Same window grid and Gaussian on both sides: the same labels.
    assert bench.dice(str(outs["baseline"]), str(outs["tumorseg"])) == pytest.approx(1.0)


def test_stage_breakdown_reports_every_stage(tmp_path, monkeypatch, capsys):
    bench = _load("stage_breakdown")
    package = str(make_tiny_package(tmp_path / "pkg"))
    monkeypatch.setitem(bench.CASES, "mri160", ((24, 24, 16), (2.0, 2.0, 2.0), "mri", 3))  # a small phantom
    bench.main(["--case", "mri160", "--model", package, "--backend", "torch", "--json", "--work", str(tmp_path)])
    report = capsys.readouterr().out
    for stage in ("read", "resample+normalize", "network+stitching", "postprocess", "labels to input grid"):
        assert stage in report
    assert float(report.split('"total_s": ')[1].split("}")[0]) > 0


def test_realtime_3d_compare_runs_every_side_on_one_input(tmp_path, monkeypatch, capsys):
    """realtime_3d_compare.py: MONAI + fp32/INT8/pruned with and without skipping, in-process workers."""
    from tumorseg_core.training.prune import prune_package

    bench = _load("realtime_3d_compare")
    fp32 = make_tiny_package(tmp_path / "fp32", seed=2)
    pruned = prune_package(str(fp32), tmp_path / "pruned", 0.5, fine_tune_iterations=0, criterion="l1")
    monkeypatch.setitem(bench.cpu_vs_monai.CASES, "mri256", ((28, 24, 18), (2.0, 2.0, 2.0), "mri", 3))
    monkeypatch.setattr(bench.cpu_vs_monai, "spawn", lambda *extra: {})  # the export warm-up

    def in_process(*extra):
        capsys.readouterr()
        assert bench.main(list(extra)) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    monkeypatch.setattr(bench, "spawn", in_process)
    try:  # a package without an INT8 graph runs in float32: the glue, not the quantizer, is under test here
        assert bench.main(["--model", str(fp32), "--int8", str(fp32), "--pruned", str(pruned), "--cases", "mri256",
                           "--repeats", "1", "--work", str(tmp_path / "work"), "--json"]) == 0
    finally:
        torch.set_num_threads(1)  # the workers' configure_threads
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(row["seconds"]) == set(bench.SIDES) == {"monai", "fp32", "fp32-noskip", "int8", "int8-noskip",
                                                      "pruned", "pruned-noskip"}
    assert all(t > 0 for t in row["seconds"].values())
    for side in ("fp32", "fp32-noskip", "int8", "int8-noskip", "monai"):  # same network, same labels
        assert row["dice_to_fp32"][side] == pytest.approx(1.0), side
    assert 0.0 <= row["dice_to_fp32"]["pruned"] <= 1.0
    assert row["x_monai"]["monai"] == 1.0
    saved = json.loads((tmp_path / "work" / "realtime_3d.json").read_text())
    assert saved["cases"] == [row] and "avx2=" in saved["cpu"]
    labels = sitk.ReadImage(str(tmp_path / "work" / "mri256-pruned-noskip.nii.gz"))
    assert labels.GetSize() == (28, 24, 18)
    assert bench.table([row]).count("| mri256 |") == len(bench.SIDES)


def test_make_eval_phantoms_writes_pairs_on_the_requested_grid(tmp_path):
    bench = _load("make_eval_phantoms")
    assert bench.main([str(tmp_path), "-n", "2", "--first-seed", "7", "--size", "40", "36", "24",
                       "--spacing", "2", "2", "3"]) == 0
    for name in ("case_00", "case_01"):
        image = sitk.ReadImage(str(tmp_path / "images" / f"{name}.nii.gz"))
        truth = sitk.ReadImage(str(tmp_path / "labels" / f"{name}.nii.gz"))
        assert image.GetSize() == truth.GetSize() == (40, 36, 24)
        assert image.GetSpacing() == pytest.approx((2.0, 2.0, 3.0))
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path / "x"), "--size", "40", "36", "24"])


def test_distillation_set_and_attach_cascade_make_a_package_whose_cascade_runs(tmp_path, monkeypatch, capsys,
                                                                               oblique_image):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    fine = make_tiny_package(tmp_path / "fine")
    distill = _load("make_distillation_set")
    assert distill.main([str(tmp_path / "set"), "-n", "2", "--model", str(fine), "--max-size", "24",
                         "--input-clip", "-1", "1.5"]) == 0
    spacing = json.loads((fine / "manifest.json").read_text())["spacing"]
    clipped = []
    for image in sorted((tmp_path / "set" / "images").iterdir()):
        label = sitk.ReadImage(str(tmp_path / "set" / "labels" / image.name))
        pooled = sitk.ReadImage(str(image))
        assert label.GetSize() == pooled.GetSize() and label.GetOrigin() == pooled.GetOrigin()
        assert pooled.GetSpacing() == pytest.approx([2 * s for s in spacing])  # the coarse grid, exactly
        assert pooled.GetPixelID() == sitk.sitkFloat32 and label.GetPixelID() == sitk.sitkUInt8
        values = sitk.GetArrayFromImage(pooled)
        assert -1.0 <= values.min() and values.max() <= 1.5
        clipped.append(bool(np.isin(values, [-1.0, 1.5]).any()))
    assert any(clipped)  # z-scored phantoms reach past the range
    # The coarse network is fed the package's normalized volume: its package normalizes nothing.
    manifest = tiny_manifest(spacing=[2 * s for s in spacing])
    manifest["inputs"] = [{"modality": "MRI", "normalization": {"type": "none"}}]
    torch.manual_seed(1)
    network = build_network(manifest["architecture"], manifest["kwargs"])
    coarse = write_package(tmp_path / "coarse", manifest, [{k: v.detach().clone() for k, v in network.state_dict().items()}])
    attach = _load("attach_cascade")
    assert attach.main([str(fine), str(coarse), "-o", str(tmp_path / "both"), "--threshold", "0.2",
                        "--input-clip", "-1", "1.5"]) == 0
    manifest["inputs"] = [{"modality": "MRI", "normalization": {"type": "minmax"}}]
    other = write_package(tmp_path / "minmax", manifest, [{k: v.detach().clone() for k, v in network.state_dict().items()}])
    with pytest.raises(SystemExit):  # another normalization would be fed the wrong intensities
        attach.main([str(fine), str(other), "-o", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
    # cascade_agreement compares each package's cascade with the first one's exhaustive pass.
    assert _load("make_eval_phantoms").main([str(tmp_path / "eval"), "-n", "2", "--size", "40", "36", "24",
                                             "--spacing", "2", "2", "3"]) == 0
    capsys.readouterr()
    assert _load("cascade_agreement").main([str(tmp_path / "eval"), "--model", str(fine), str(tmp_path / "both"),
                                            "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["case"], r["model"]) for r in rows] == [(c, str(m)) for c in ("case_00", "case_01")
                                                        for m in (fine, tmp_path / "both")]
    assert all(0.0 <= r["dice_agreement"] <= 1.0 and r["lesions_lost"] >= 0 for r in rows)
    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.modelpkg.package import open_package

    package = open_package(tmp_path / "both")
    spec = package.manifest.cascade
    assert (spec.factor, spec.threshold, spec.default, spec.input_clip) == (2.0, 0.2, True, (-1.0, 1.5))
    assert [p.name for p in package.weight_files] == ["fold0.safetensors"]
    path, _ = oblique_image
    image = sitk.ReadImage(str(path))  # the file's grid (NIfTI stores the direction in float32)
    result = Segmenter(package, device="cpu", backend="torch").segment([str(path)])
    assert result.GetSize() == image.GetSize() and result.GetDirection() == image.GetDirection()
    assert result.GetOrigin() == image.GetOrigin() and result.GetSpacing() == image.GetSpacing()


def test_coarse_pair_is_the_cascade_pooling_with_any_foreground_labels(rotation_direction):
    from tumorseg_core.imaging.geometry import GridGeometry

    distill = _load("make_distillation_set")
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(1, 7, 10, 9)).astype(np.float32)  # (C, z, y, x), two odd axes
    labels = np.zeros((7, 10, 9), dtype=np.uint8)
    labels[3, 5, 1] = 1  # one voxel: a lesion smaller than a coarse voxel must survive
    labels[6, 0, 0] = 1  # in the cropped last slice (odd z): gone with it
    grid = GridGeometry((9, 10, 7), (1.5, 1.2, 2.0), (10.0, -4.0, 3.0), rotation_direction("x", 30.0))
    image, label = distill.coarse_pair(volume, labels, grid, 2)
    assert image.GetSize() == label.GetSize() == (4, 5, 3)
    assert image.GetSpacing() == pytest.approx((3.0, 2.4, 4.0))
    pooled = sitk.GetArrayFromImage(image)
    blocks = volume[0, :6, :10, :8].reshape(3, 2, 5, 2, 4, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(pooled, blocks, rtol=1e-5, atol=1e-6)
    flagged = np.argwhere(sitk.GetArrayFromImage(label))
    assert flagged.tolist() == [[1, 2, 0]]
    # A coarse voxel's centre is the centre of the fine voxels it averages.
    fine = grid.located()
    corners = [fine.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])
               for index in ((2, 4, 2), (3, 5, 3))]  # x y z of fine voxels 2..3, 4..5, 2..3
    centre = np.mean(corners, axis=0)
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((1, 2, 1)), centre, atol=1e-9)
    assert image.GetDirection() == pytest.approx(grid.direction)


def test_distillation_set_labelled_in_worker_processes_equals_the_serial_set(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    fine = make_tiny_package(tmp_path / "fine")
    common = ["-n", "3", "--model", str(fine), "--max-size", "24", "--input-clip", "-1", "1.5"]
    assert _load("make_distillation_set").main([str(tmp_path / "serial"), *common]) == 0
    # Spawned workers must re-import the script, so it runs as a user runs it.
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_distillation_set.py"),
                           str(tmp_path / "pool"), *common, "--jobs", "2"],
                          capture_output=True, text=True, timeout=300, )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith("/3 cases with flagged voxels")
    for folder in ("images", "labels"):
        names = sorted(p.name for p in (tmp_path / "serial" / folder).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "pool" / folder).iterdir()) and len(names) == 3
        for name in names:
            a, b = (sitk.ReadImage(str(tmp_path / run / folder / name)) for run in ("serial", "pool"))
            assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
            np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_gpu_coarse_cascade_recipe_runs_end_to_end_on_tiny_settings(tmp_path):
    """The device recipe gets one try per lent session: its glue (flags, paths) must be right."""
    import os
    import shutil
    import subprocess

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    fine = make_tiny_package(tmp_path / "fine")
    env = {**os.environ, "PYTHON": sys.executable, "MODEL": str(fine), "N": "3", "TUNE_N": "1", "EVAL_N": "1",
           "MAX_SIZE": "24", "PHANTOM_ARGS": "--size 40 36 24 --spacing 2 2 3", "DEVICE": "cpu", "JOBS": "1",
           "WORKERS": "0", "EPOCHS": "2", "ITERS": "1", "BATCH": "2", "THRESHOLDS": "0.1 0.03",
           "KWARGS": '{"features": [4, 8], "norm": "instance"}',
           "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    done = subprocess.run([bash, str(REPO / "benchmarks" / "gpu_coarse_cascade.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "out"
    assert len((out / "log.csv").read_text().splitlines()) == 3  # header + 2 epochs
    from tumorseg_core.modelpkg.package import open_package

    coarse = open_package(out / "coarse")
    assert coarse.manifest.kwargs["features"] == [4, 8]
    assert coarse.manifest.spacing_xyz == pytest.approx([2 * s for s in open_package(fine).manifest.spacing_xyz])
    for name in ("tune", "eval"):
        rows = [json.loads(line) for line in (out / f"agreement_{name}.jsonl").read_text().splitlines()]
        assert [Path(r["model"]).name for r in rows] == ["fine", "cascade-0.1", "cascade-0.03"]
    summary = (out / "summary.txt").read_text()
    assert summary.count("median") == 6 and summary.rstrip().endswith("done")


def test_gpu_finetune_recipe_runs_end_to_end_on_tiny_settings(tmp_path):
    """configs/gpu_finetune_default.sh: train with hard negatives, score both models, demo seeds."""
    import os
    import shutil
    import subprocess

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    init = make_tiny_package(tmp_path / "init", seed=3)
    small = {"fov_mm": [40.0, 60.0], "max_size": 24, "spacing_mm": [1.5, 2.5]}
    config = {
        "architecture": "unet3d", "kwargs": {"features": [2, 4], "norm": "none"},
        "inputs": [{"modality": "MRI", "normalization": {"type": "zscore", "nonzero": False}}],
        "spacing": [2.0, 2.0, 2.0], "patch_size": [16, 16, 16], "val_data": "synthetic:2",
        "synthetic": small, "val_synthetic": small, "hard_negatives": {"fraction": 0.5}, "seed": 1,
    }
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHON": sys.executable, "CONFIG": str(tmp_path / "tiny.json"), "INIT": str(init),
           "N": "3", "EPOCHS": "1", "ITERS": "2", "BATCH": "1", "WORKERS": "0", "DEVICE": "cpu", "TUNE_N": "1",
           "EVAL_N": "1", "PHANTOM_ARGS": "--size 40 36 24 --spacing 2 2 3", "DEMO_SEEDS": "1", "FREE_SEEDS": "2",
           "SCORE_INIT": "1", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    done = subprocess.run([bash, str(REPO / "configs" / "gpu_finetune_default.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "out"
    from tumorseg_core.modelpkg.package import open_package

    assert open_package(out / "model").manifest.patch_size_zyx == (16, 16, 16)
    assert {p.name for p in out.glob("*.csv")} == {"log.csv", "new_tune.csv", "init_tune.csv", "new_eval.csv",
                                                   "init_eval.csv"}
    summary = (out / "summary.txt").read_text()
    assert summary.count("median Dice") == 4 and summary.rstrip().endswith("done")
    demo_lines = [line for line in summary.splitlines() if "demo Dice" in line]
    assert [line.split(":")[0].strip() for line in demo_lines] == ["model", "init"]
    for line in demo_lines:  # one Dice value and one false-positive count, both numbers
        dice, fp = line.split("demo Dice ")[1].split("; lesion-free false positives ")
        assert 0.0 <= float(dice) <= 1.0 and int(fp) >= 0


def test_gpu_finetune_recipe_trains_on_real_anatomy_from_the_carried_sources_only(tmp_path, real_anatomy_sources):
    """DATA=real: the training split built from a cache holding only what ``export_sources("train")`` copies
    (what a lent GPU gets: no registry there), mixed with phantoms into one --data folder, trained."""
    import os
    import shutil
    import subprocess

    from benchmarks.real_anatomy import fetch_sources
    from benchmarks.real_anatomy.sources import export_sources

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    cache = tmp_path / "carried"
    export_sources("train", cache)
    assert not (cache / "debian").exists() and fetch_sources.missing_files(cache)  # the eval sources are absent
    init = make_tiny_package(tmp_path / "init", seed=3)
    config = {
        "architecture": "unet3d", "kwargs": {"features": [2, 4], "norm": "none"},
        "inputs": [{"modality": "CT or MRI", "normalization": {"type": "zscore", "nonzero": False}}],
        "spacing": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16], "val_fraction": 0.25, "seed": 1,
    }
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHON": sys.executable, "CONFIG": str(tmp_path / "tiny.json"), "INIT": str(init),
           "DATA": "real", "REAL_CACHE": str(cache), "N_REAL": "3", "REAL_JOBS": "2", "N": "2", "EPOCHS": "1", "ITERS": "2",
           "BATCH": "1", "WORKERS": "0", "DEVICE": "cpu", "TUNE_N": "1", "EVAL_N": "1",
           "PHANTOM_ARGS": "--size 40 36 24 --spacing 2 2 3", "DEMO_SEEDS": "1", "FREE_SEEDS": "2",
           "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    done = subprocess.run([bash, str(REPO / "configs" / "gpu_finetune_default.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = sorted(p.name for p in (tmp_path / "work" / "data" / "images").iterdir())
    assert data == ["phantoms_case_00.nii.gz", "phantoms_case_01.nii.gz", "real0_case_00.nii.gz",  # 2 jobs: 2 + 1 cases
                    "real0_case_01.nii.gz", "real1_case_00.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "work" / "data" / "labels").iterdir()) == data
    records = [r for j in (0, 1) for r in json.loads((tmp_path / "work" / f"real{j}" / "cases.json").read_text())["cases"]]
    assert len(records) == 3 and {r["source"] for r in records} <= {"icbm152", "ct_right"}  # training anatomy only
    assert [r["seed"] for r in records] == [1, 1, 2]
    assert not (cache / "debian").exists()  # nothing was fetched
    from tumorseg_core.modelpkg.package import open_package

    assert open_package(tmp_path / "out" / "model").manifest.spacing_xyz == (4.0, 4.0, 4.0)
    assert (tmp_path / "out" / "summary.txt").read_text().rstrip().endswith("done")


def test_compute_bound_counts_a_tumorseg_models_flops_and_windows(tmp_path):
    """compute_bound.py on TumorSeg's own package: the FLOPs are the convolutions' multiply-adds, the windows
    the sliding-window grid of the model-grid volume, the window run by the exported backend (smoke, no timing)."""
    from tumorseg_core.inference.roi_windows import windows_to_run
    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.inference.sliding_window import pad_to_window
    from tumorseg_core.modelpkg.package import open_package
    from tumorseg_core.synthetic import make_phantom

    bench = _load("compute_bound")
    package = make_tiny_package(tmp_path / "pkg")
    case = tmp_path / "case.nii.gz"
    sitk.WriteImage(make_phantom(3, size_xyz=(40, 36, 30), spacing_xyz=(1.5, 1.7, 2.5)).image, str(case))
    result = bench.measure(str(package), case, mirror=True, baseline_seconds=5.0, repeats=1, baseline="MONAI")

    opened = open_package(package)
    network = opened.load_networks(torch.device("cpu"))[0].eval()
    macs = []

    def hook(mod, inp, out):
        spatial = out.shape[2:].numel() if isinstance(mod, torch.nn.Conv3d) else inp[0].shape[2:].numel()
        macs.append(mod.in_channels * mod.out_channels * int(np.prod(mod.kernel_size)) * spatial // mod.groups)

    for module in network.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            module.register_forward_hook(hook)
    with torch.inference_mode():
        network(torch.zeros(1, 1, *opened.manifest.patch_size_zyx))
    assert result["flops_per_window"] == 2 * sum(macs) > 0
    volume = Segmenter(opened, "cpu").prepare(str(case))[0]
    padded, _ = pad_to_window(volume, opened.manifest.patch_size_zyx)
    windows = windows_to_run(padded.shape[1:], opened.manifest.patch_size_zyx,
                             float(opened.manifest.inference.get("overlap", 0.5)))
    assert result["grid_zyx"] == list(volume.shape[1:]) and result["windows"] == len(windows) > 1
    assert result["forward_passes"] == result["windows"] and result["mirror"] is False  # no nnU-Net mirroring
    assert result["as_run"] in ("openvino", "onnxruntime", "torch") and result["baseline"] == "MONAI"
    peak = max(result["gflops_matmul_4096"], result["gflops_best_conv_layer"]) * 1e9
    assert result["max_speedup_vs_baseline"] == pytest.approx(5.0 * peak / (result["windows"] * result["flops_per_window"]),
                                                              rel=0.01)


def test_gpu_nnunet_recipe_runs_end_to_end_on_tiny_settings(tmp_path):
    """benchmarks/gpu_nnunet_cuda.sh on the CPU with a tiny nnU-Net plan: nnunetv2 builds the model, both tools
    predict, the JSON and summary come back (its one try per lent GPU session must not fail on glue)."""
    import os
    import shutil
    import subprocess

    pytest.importorskip("nnunetv2")
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SIZE": "40 40 30", "REPEATS": "1",
           "MIRRORS": "no-mirror", "TRAIN_SIZE": "48 48 32", "WORK": str(tmp_path / "work"), "OUT": str(out)}
    done = subprocess.run([bash, str(REPO / "benchmarks" / "gpu_nnunet_cuda.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "nnunet_cpu_no-mirror.json").read_text())
    assert report["device"] == "cpu" and report["gpu"] is None and report["mirror"] is False
    assert [r["tool"] for r in report["runs"]] == ["tumorseg", "nnunet"]
    assert report["summary"]["dice"]["voxels_labelled_nnunet"] > 0
    assert report["summary"]["dice"]["voxels_differing"] <= 5  # the same prediction, up to summation order
    summary = (out / "summary.txt").read_text()
    assert "TumorSeg" in summary and summary.rstrip().endswith("done")
