"""An imported nnU-Net v2 ``3d_fullres`` model: TumorSeg's default path vs ``nnUNetPredictor`` (CPU or GPU).

::

    python benchmarks/nnunet_vs_tumorseg.py [--work DIR] [--size X Y Z] [--spacing X Y Z]
        [--repeats 3] [--folds 0 [1 ...]] [--mirror | --no-mirror] [--device cpu|cuda]
        [--train-size X Y Z] [--out-json FILE] [--estimate-only]

``--device cuda`` (a lent GPU, ``benchmarks/gpu_nnunet_cuda.sh``): both tools predict on the
GPU; TumorSeg's ``Segmenter(PKG, "cuda")`` (autocast as nnU-Net), nnU-Net's predictor with its
GPU default ``perform_everything_on_device=True``. ``--train-size`` sets the synthetic
training cases' size, which decides nnU-Net's default plan (patch, features); the default
gives the realistic 128³ plan, a small one (tests) a tiny network.

1. **Model** (built once, cached under ``--work``): a synthetic skull-stripped MRI dataset
   (``Testing/core/nnunet_fixture.py``: phantoms, labels 0/1/2) large enough that nnU-Net's
   *default* planner (``ExperimentPlanner``, no custom plan) gives a realistic
   ``3d_fullres`` network; fingerprint, plan and preprocessing by nnunetv2 itself; then
   nnU-Net's ``nnUNetTrainer`` built from those plans, its network perturbed with seeded
   noise and saved by the trainer's ``save_checkpoint`` (one ``fold_N`` per fold). The
   planned features, patch and spacing are printed and recorded in the JSON.
2. **Import**: ``tumorseg import FOLDER -o PKG --folds ...`` (cached per fold set).
3. **Test volume**: one phantom case of ``--size`` voxels at ``--spacing`` mm written as
   ``.nii.gz`` (the same file for both tools).
4. **Runs**, interleaved (TumorSeg, nnU-Net, TumorSeg, ...), each a fresh subprocess of
   this script (``--child``):

   - ``tumorseg``: ``Segmenter(PKG, DEVICE, tta=MIRROR).segment_to_file(IMAGE, OUT)``,
     the default path of ``tumorseg segment IMAGE --model PKG -o OUT --device cpu``
     (``--quality fast --overlap 0.5`` for no mirroring).
   - ``nnunet``: ``nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,
     use_mirroring=MIRROR, perform_everything_on_device=(DEVICE is a GPU), device=DEVICE)``,
     ``initialize_from_trained_model_folder(FOLDER, use_folds=FOLDS)``,
     ``predict_from_files([[IMAGE]], [OUT], num_processes_preprocessing=1,
     num_processes_segmentation_export=1)`` (which starts its own worker processes).

   Per run: the process wall time (start of the interpreter to exit: imports, loading the
   weights, reading, predicting, writing: what a user waits for), the in-process split
   (imports / model load / predict incl. reading and writing), the largest single
   process's peak (``ru_maxrss`` from ``wait4``, which covers its descendants: exact, no
   polling) and the peak of the process tree's summed RSS (child + all descendants, read
   from ``/proc/PID/statm`` every 0.25 s; counts the shared library pages of nnU-Net's
   spawned workers once per process). PSS is not polled: reading ``smaps_rollup`` walks
   every page table and cost this benchmark up to two cores of kernel time.
5. **Agreement**: per-label Dice between the two label maps (last run of each).

Both tools use all cores (torch's default thread count). nnU-Net's sliding window caps its
threads at ``nnUNet_def_n_proc`` (default 8); the nnU-Net child runs without that variable
set, as a user's shell would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DATASET_ID = 950
DATASET_NAME = "BenchBrain"
TRAIN_SIZE = (224, 224, 160)  # x, y, z voxels; skull-stripped, so nnU-Net's crop keeps ~157 x 157 x 160
TRAIN_SPACINGS = ((1.0, 1.0, 1.0), (0.95, 0.95, 1.05))
POLL_S = 0.25


# ------------------------------------------------------------------------------ helpers

def _fixture():
    sys.path.insert(0, str(ROOT / "Testing" / "core"))
    import nnunet_fixture  # noqa: PLC0415  (test helper, path added explicitly)

    return nnunet_fixture


def _nnunet_env(work: Path) -> Dict[str, str]:
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(work / "nnunet" / name)
    env.pop("nnUNet_def_n_proc", None)  # nnU-Net's default (8): the predictor then uses every core
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def model_folder(work: Path) -> Path:
    return (work / "nnunet" / "nnUNet_results" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
            / "nnUNetTrainer__nnUNetPlans__3d_fullres")


def build_model(work: Path, folds: Sequence[int], train_size: Sequence[int] = TRAIN_SIZE) -> Path:
    """nnU-Net's own fingerprint, default plan and preprocessing; one perturbed checkpoint per missing fold."""
    folder = model_folder(work)
    missing = [f for f in folds if not (folder / f"fold_{f}" / "checkpoint_final.pth").exists()]
    if not missing:
        return folder
    fx = _fixture()
    fx.set_nnunet_env(work / "nnunet")
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    pre = Path(nnUNet_preprocessed) / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    if not (pre / "nnUNetPlans.json").exists() or not (pre / "nnUNetPlans_3d_fullres").exists():
        t0 = time.perf_counter()
        raw = Path(nnUNet_raw) / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
        (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
        (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
        import SimpleITK as sitk

        for i, spacing in enumerate(TRAIN_SPACINGS):
            images, label = fx.make_case(100 + i, tuple(train_size), spacing)
            sitk.WriteImage(images[0], str(raw / "imagesTr" / f"case_{i:03d}_0000.nii.gz"))
            sitk.WriteImage(label, str(raw / "labelsTr" / f"case_{i:03d}.nii.gz"))
        (raw / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "T1"}, "labels": {"background": 0, "tumor": 1, "core": 2},
            "numTraining": len(TRAIN_SPACINGS), "file_ending": ".nii.gz", "name": DATASET_NAME,
        }, indent=2))
        fx.plan(DATASET_ID)  # the default ExperimentPlanner: no shrink_plans here
        fx.preprocess(DATASET_ID, "3d_fullres")
        print(f"[build] dataset, plan, preprocessing: {time.perf_counter() - t0:.0f} s", flush=True)
    for fold in missing:
        t0 = time.perf_counter()
        fx.save_fold(DATASET_ID, "3d_fullres", fold, seed=1000 * DATASET_ID + fold)
        print(f"[build] fold {fold}: {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def plan_summary(folder: Path) -> Dict[str, Any]:
    plans = json.loads((folder / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    kwargs = config["architecture"]["arch_kwargs"]
    return {
        "network": config["architecture"]["network_class_name"].rsplit(".", 1)[-1],
        "features_per_stage": kwargs["features_per_stage"], "n_stages": kwargs["n_stages"],
        "patch_size_zyx": config["patch_size"], "spacing_zyx": config["spacing"],
        "median_image_size_zyx": config.get("median_image_size_in_voxels"),
        "normalization": config["normalization_schemes"], "use_mask_for_norm": config["use_mask_for_norm"],
        "configurations": sorted(plans["configurations"]),
    }


def import_package(work: Path, folder: Path, folds: Sequence[int]) -> Path:
    pkg = work / f"pkg_folds{'-'.join(map(str, folds))}"
    if not (pkg / "manifest.json").exists():
        cmd = [sys.executable, "-m", "tumorseg_core", "import", str(folder), "-o", str(pkg),
               "--folds", ",".join(map(str, folds)), "--overwrite"]
        subprocess.run(cmd, check=True, env=_nnunet_env(work))
    return pkg


def test_volume(work: Path, size: Sequence[int], spacing: Sequence[float]) -> Path:
    path = work / f"case_{'x'.join(map(str, size))}_{'x'.join(f'{s:g}' for s in spacing)}_0000.nii.gz"
    if not path.exists():
        import SimpleITK as sitk

        images, _ = _fixture().make_case(7, tuple(size), tuple(spacing))
        sitk.WriteImage(images[0], str(path))
    return path


def dice_per_label(a_path: Path, b_path: Path) -> Dict[str, float]:
    import numpy as np
    import SimpleITK as sitk

    a_img, b_img = sitk.ReadImage(str(a_path)), sitk.ReadImage(str(b_path))
    assert a_img.GetSize() == b_img.GetSize(), (a_img.GetSize(), b_img.GetSize())
    a, b = sitk.GetArrayFromImage(a_img), sitk.GetArrayFromImage(b_img)
    out = {}
    for value in sorted(set(np.unique(a).tolist()) | set(np.unique(b).tolist())):
        if value == 0:
            continue
        x, y = a == value, b == value
        total = int(x.sum() + y.sum())
        out[str(value)] = 1.0 if total == 0 else float(2.0 * (x & y).sum() / total)
    out["voxels_differing"] = int((a != b).sum())
    out["voxels_labelled_tumorseg"] = int((a > 0).sum())
    out["voxels_labelled_nnunet"] = int((b > 0).sum())
    return out


# ------------------------------------------------------------------------------- children

def child_tumorseg(spec: Dict[str, Any]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    from tumorseg_core.inference.segmenter import Segmenter

    t1 = time.perf_counter()
    segmenter = Segmenter(spec["package"], spec.get("device", "cpu"), tta=spec["mirror"],
                          backend=spec.get("backend", "auto"))
    segmenter.load()  # the folds' weights (and any backend export), timed apart from the prediction
    t2 = time.perf_counter()
    segmenter.segment_to_file([spec["image"]], spec["output"])
    t3 = time.perf_counter()
    import torch

    return {"import_s": t1 - t0, "load_s": t2 - t1, "predict_s": t3 - t2, "threads": torch.get_num_threads()}


def child_nnunet(spec: Dict[str, Any]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    t1 = time.perf_counter()
    device = torch.device(spec.get("device", "cpu"))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=spec["mirror"],
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(spec["model_folder"], use_folds=tuple(spec["folds"]),
                                                   checkpoint_name="checkpoint_final.pth")
    t2 = time.perf_counter()
    truncated = spec["output"][: -len(".nii.gz")]
    predictor.predict_from_files([[spec["image"]]], [truncated], save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    t3 = time.perf_counter()
    return {"import_s": t1 - t0, "load_s": t2 - t1, "predict_s": t3 - t2, "threads": torch.get_num_threads()}


def run_child(tool: str, spec: Dict[str, Any], env: Dict[str, str], log: Path) -> Dict[str, Any]:
    """One run in a fresh process: wall time, polled tree PSS/RSS peak, ru_maxrss (wait4)."""
    import psutil

    result_file = Path(spec["output"] + ".json")
    result_file.unlink(missing_ok=True)
    Path(spec["output"]).unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", tool, json.dumps(spec)]
    start = time.perf_counter()
    with open(log, "a") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak_rss = 0
    max_procs = 1
    status = rusage = None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid != 0:
            break
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            procs = []
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss  # /proc/PID/statm: cheap (PSS would walk every page table)
            except psutil.Error:
                pass
        peak_rss, max_procs = max(peak_rss, rss), max(max_procs, len(procs))
        time.sleep(POLL_S)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} run failed (exit {proc.returncode}); see {log}")
    inner = json.loads(result_file.read_text())
    return {"tool": tool, "wall_s": wall, **inner, "peak_tree_rss_mib": peak_rss / 2**20, "ru_maxrss_mib": rusage.ru_maxrss / 1024,
            "processes": max_procs}


# ---------------------------------------------------------------------------------- estimate

def estimate(pkg: Path, image: Path, mirror: bool, folds: Sequence[int]) -> Dict[str, Any]:
    """One window's forward time x the number of windows x mirror combinations x folds."""
    import SimpleITK as sitk
    import torch

    from tumorseg_core.imaging import nnunet_preprocess
    from tumorseg_core.inference import nnunet_windows
    from tumorseg_core.inference.nnunet_pipeline import case_arrays
    from tumorseg_core.modelpkg.package import open_package

    package = open_package(pkg)
    section = package.manifest.nnunet
    network = list(package.load_networks(torch.device("cpu")))[0].eval()
    arrays, spacing = case_arrays([sitk.ReadImage(str(image))])
    t0 = time.perf_counter()
    data, _ = nnunet_preprocess.preprocess(arrays, spacing, section)
    prep_s = time.perf_counter() - t0
    patch = section["patch_size"]
    padded = [max(p, s) for p, s in zip(patch, data.shape[1:])]
    windows = len(nnunet_windows.window_slicers(padded, patch, section["tile_step_size"]))
    x = torch.zeros((1, data.shape[0], *patch))
    times = []
    with torch.inference_mode():
        for _ in range(2):
            t0 = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - t0)
    n_axes = len(section["mirror_axes"] or ())
    passes = (2 ** n_axes) if mirror else 1
    forward_s = min(times)
    return {"preprocessed_shape_zyx": list(data.shape[1:]), "preprocess_s": prep_s, "windows": windows,
            "forward_s": forward_s, "forwards_per_window": passes, "folds": len(folds),
            "network_estimate_s": forward_s * windows * passes * len(folds), "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------- main

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnunet_bench"),
                        help="cache folder for the nnU-Net dataset/model, the package and the volumes")
    parser.add_argument("--size", type=int, nargs=3, default=[256, 256, 160], metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.9, 0.9, 1.1], metavar=("X", "Y", "Z"),
                        help="test volume spacing, mm (the plan's is 1 mm-ish: both tools resample)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--backend", default="auto", help="TumorSeg's backend (auto: nnU-Net's own arithmetic in torch; "
                        "openvino / onnxruntime: the windows on that exported backend)")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                        help="nnU-Net's mirroring (TumorSeg: tta) for both tools")
    parser.add_argument("--device", default="cpu", help="where both tools predict: cpu or cuda (default cpu)")
    parser.add_argument("--train-size", type=int, nargs=3, default=list(TRAIN_SIZE), metavar=("X", "Y", "Z"),
                        help="voxels of the synthetic training cases (they decide nnU-Net's plan; built once per --work)")
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--estimate-only", action="store_true",
                        help="build/import, then time one window's forward pass and extrapolate")
    parser.add_argument("--skip-estimate", action="store_true", help="no one-window forward timing first")
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        tool, spec = args.child[0], json.loads(args.child[1])
        out = (child_tumorseg if tool == "tumorseg" else child_nnunet)(spec)
        Path(spec["output"] + ".json").write_text(json.dumps(out))
        return 0

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    folds = sorted(set(args.folds))
    folder = build_model(work, folds, args.train_size)
    plan = plan_summary(folder)
    print("[plan]", json.dumps(plan), flush=True)
    pkg = import_package(work, folder, folds)
    image = test_volume(work, args.size, args.spacing)
    report: Dict[str, Any] = {
        "size_xyz": args.size, "spacing_xyz": args.spacing, "folds": folds, "mirror": args.mirror,
        "repeats": args.repeats, "plan": plan, "cpu": _cpu_model(), "nproc": os.cpu_count(),
        "python": platform.python_version(), "versions": _versions(), "device": args.device,
        "gpu": _gpu_name(args.device),
    }
    if not args.skip_estimate or args.estimate_only:
        report["estimate"] = estimate(pkg, image, args.mirror, folds)
    print("[estimate]", json.dumps(report.get("estimate")), flush=True)
    if args.estimate_only:
        _write(report, args.out_json)
        return 0

    env = _nnunet_env(work)
    tag = f"{'x'.join(map(str, args.size))}_f{'-'.join(map(str, folds))}_{'m' if args.mirror else 'nm'}"
    if args.device != "cpu":
        tag += f"_{str(args.device).replace(':', '')}"
    runs: List[Dict[str, Any]] = []
    outputs = {}
    for r in range(args.repeats):
        for tool in ("tumorseg", "nnunet"):
            out = str(work / f"out_{tool}_{tag}.nii.gz")
            spec = {"package": str(pkg), "model_folder": str(folder), "image": str(image), "output": out,
                    "folds": folds, "mirror": args.mirror, "backend": args.backend, "device": args.device}
            res = run_child(tool, spec, env, work / f"log_{tool}.txt")
            res["repeat"] = r
            runs.append(res)
            outputs[tool] = Path(out)
            print(f"[run {r}] {tool}: wall {res['wall_s']:.1f} s (import {res['import_s']:.1f}, "
                  f"load {res['load_s']:.1f}, predict {res['predict_s']:.1f}), peak tree RSS "
                  f"{res['peak_tree_rss_mib']:.0f} MiB, "
                  f"ru_maxrss {res['ru_maxrss_mib']:.0f} MiB, {res['processes']} process(es)", flush=True)
    report["runs"] = runs
    summary: Dict[str, Any] = {}
    for tool in ("tumorseg", "nnunet"):
        mine = [r for r in runs if r["tool"] == tool]
        summary[tool] = {key: statistics.median(r[key] for r in mine)
                         for key in ("wall_s", "import_s", "load_s", "predict_s", "peak_tree_rss_mib", "ru_maxrss_mib")}
    summary["speedup_wall"] = summary["nnunet"]["wall_s"] / summary["tumorseg"]["wall_s"]
    summary["speedup_predict"] = summary["nnunet"]["predict_s"] / summary["tumorseg"]["predict_s"]
    summary["memory_ratio_tree_rss"] = summary["tumorseg"]["peak_tree_rss_mib"] / summary["nnunet"]["peak_tree_rss_mib"]
    summary["memory_ratio_maxrss"] = summary["tumorseg"]["ru_maxrss_mib"] / summary["nnunet"]["ru_maxrss_mib"]
    summary["dice"] = dice_per_label(outputs["tumorseg"], outputs["nnunet"])
    report["summary"] = summary
    print("[summary]", json.dumps(summary, indent=1), flush=True)
    _write(report, args.out_json)
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _gpu_name(device: str) -> Optional[str]:
    """The GPU's name for a CUDA ``device`` (None on the CPU)."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "nnunetv2", "tumorseg", "SimpleITK", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _write(report: Dict[str, Any], path: Optional[Path]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
