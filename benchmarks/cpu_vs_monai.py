"""Inference on CPU or CUDA: MONAI's sliding_window_inference (torch eager) vs TumorSeg's default path.

Both sides get the same input file, the same weights, the same window, overlap and
Gaussian blending, the same input pipeline (read, align, resample to the model grid,
normalize: TumorSeg's own) and the same output steps (argmax, postprocess, labels back
to the input grid). Only the network/stitching engine differs:

- baseline: ``monai.inferers.sliding_window_inference(mode="gaussian")`` on torch
  eager, float32, softmax probabilities stitched, folds averaged, argmax;
  ``sw_batch_size`` = the window batch TumorSeg's Predictor picks for the device (the
  manifest's ``window_batch``, else the engine default: 1 on the CPU, 4 on CUDA).
- tumorseg: ``tumorseg_core.segment(path, model, device=...)``, i.e. the default
  backend (``auto``: OpenVINO/ONNX Runtime on the CPU, torch with float16 AMP on CUDA)
  and the default cascade setting, with a warm export cache (the one-time export/load
  is timed separately and reported as ``export_s``).

Each run is its own subprocess (peak RSS from ``VmHWM``, which restarts at exec); runs are
interleaved (baseline/tumorseg, order alternating) and the median time is reported.
Both sides use every usable core. The phantom of each case is written once and reused.

``--device cuda``: the baseline's input tensor, networks and stitching live on the GPU
(MONAI's usual use); TumorSeg stitches on the CPU as it always does. The first CUDA
call in a process pays context creation, lazy kernel loading and cuDNN/cuBLAS set-up
(and cuDNN autotuning where ``cudnn.benchmark`` is on; neither side turns it on), so
each worker first runs its own side once, untimed, on a small random image at the
model spacing (2 windows per axis, so full and partial window batches both occur),
then the timed run, with ``torch.cuda.synchronize()`` before starting and before
stopping the clock. Both sides still load the model inside the timed region, as on
the CPU. Also reported: peak GPU memory of the timed run
(``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``; the CUDA
context itself is not included), the GPU name and the torch/MONAI versions. Usage::

    python benchmarks/cpu_vs_monai.py [--json] [--device cpu|cuda] [--model default|PATH|random]
        [--cases mri160 mri256 ct512] [--repeats 3] [--cascade]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (size_xyz, spacing_xyz mm, modality, seed)
CASES = {
    "mri160": ((160, 160, 128), (1.0, 1.0, 1.0), "mri", 11),
    "mri256": ((256, 256, 160), (1.0, 1.0, 1.0), "mri", 12),
    "ct512": ((512, 512, 300), (0.7, 0.7, 1.0), "ct", 13),
}


def make_case(name: str, work: Path) -> Path:
    """Write the phantom of benchmark case ``name`` into ``work`` once; return its path."""
    import SimpleITK as sitk

    from tumorseg_core.synthetic import make_phantom

    size, spacing, modality, seed = CASES[name]
    image_path = work / f"{name}.nii.gz"
    if not image_path.exists():
        sitk.WriteImage(make_phantom(seed, size_xyz=size, spacing_xyz=spacing, modality=modality).image,
                        str(image_path))
    return image_path


def random_package(folder: Path) -> Path:
    """A random-init unet3d (16, 32, 64, 128) package at 1.5 mm with a 96^3 window."""
    import torch

    from tumorseg_core.modelpkg.package import write_package
    from tumorseg_core.models.registry import build_network

    if (folder / "manifest.json").is_file():
        return folder
    manifest = {
        "format_version": 1, "name": "bench-random-unet3d", "version": "0.0.1", "license": "Apache-2.0",
        "description": "random-init unet3d for benchmarks", "architecture": "unet3d",
        "kwargs": {"in_channels": 1, "out_channels": 2, "features": [16, 32, 64, 128], "norm": "instance"},
        "inputs": [{"modality": "MRI", "normalization": {"type": "zscore", "nonzero": False}}],
        "spacing": [1.5, 1.5, 1.5], "orientation": "LPS", "patch_size": [96, 96, 96],
        "output": {"type": "softmax", "labels": [{"value": 1, "name": "Tumor", "color": [0.9, 0.3, 0.2],
                   "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                                   "type": ["SCT", "108369006", "Neoplasm"]}}]},
        "postprocessing": [], "inference": {"overlap": 0.5}, "files": {},
    }
    torch.manual_seed(0)
    net = build_network("unet3d", manifest["kwargs"])
    return write_package(folder, manifest, [{k: v.detach().clone() for k, v in net.state_dict().items()}])


def peak_mb() -> float:
    """Peak resident memory of this process, MB.

    Linux: ``VmHWM`` from /proc/self/status, which starts afresh at ``exec``.
    ``getrusage().ru_maxrss`` does NOT: a worker started by a parent that had just
    generated a 512x512x300 phantom reported the parent's 6 GB peak as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


def sync(device: str) -> None:
    """Wait for queued GPU work, so a clock read after it counts it (no-op on the CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run_baseline(source, model: str, out: str | None, device: str = "cpu", sw_batch: int = 1) -> float:
    """MONAI sliding window (``sw_batch`` windows a batch) on the TumorSeg-prepared volume; returns seconds."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from tumorseg_core.imaging import geometry, postprocess
    from tumorseg_core.imaging.io import read_images
    from tumorseg_core.inference.segmenter import Segmenter

    sync(device)
    started = time.perf_counter()
    segmenter = Segmenter(model, device)
    manifest = segmenter.manifest
    networks = segmenter.package.load_networks(device)
    inputs = read_images([source])
    volume, grid = segmenter.prepare_aligned(geometry.align_to_reference(inputs))
    overlap = float((manifest.inference or {}).get("overlap", 0.5))
    x = torch.from_numpy(volume)[None].to(device)
    with torch.inference_mode():
        probs = None
        for net in networks:
            p = sliding_window_inference(x, tuple(manifest.patch_size_zyx), sw_batch,
                                         lambda t, n=net: torch.softmax(n(t), 1),
                                         overlap=overlap, mode="gaussian", sigma_scale=0.125)
            probs = p if probs is None else probs + p
        labels = torch.argmax(probs[0], 0).to(torch.uint8).cpu().numpy()
    if manifest.postprocessing:
        labels = postprocess.postprocess_labels(labels, manifest.spacing_xyz, manifest.postprocessing)
    image = grid.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(labels)))
    result = geometry.labels_to_reference(image, inputs[0])
    sync(device)
    seconds = time.perf_counter() - started
    if out:
        sitk.WriteImage(result, out)
    return seconds


def run_tumorseg(source, model: str, out: str | None, cascade: bool | None, device: str = "cpu",
                 **more_options) -> float:
    """``tumorseg_core.segment`` timed (``more_options``: other ``SegmentOptions``); returns seconds."""
    import SimpleITK as sitk

    from tumorseg_core import segment

    sync(device)
    started = time.perf_counter()
    options = dict(more_options) if cascade is None else {**more_options, "cascade": cascade}
    result = segment(source, model=model, device=device, **options)
    sync(device)
    seconds = time.perf_counter() - started
    if out:
        sitk.WriteImage(result, out)
    return seconds


def warm_up_image(model: str):
    """A random image of 2 windows per axis at the model spacing (in memory) for the warm-up."""
    import numpy as np
    import SimpleITK as sitk

    from tumorseg_core.modelpkg.package import open_package

    manifest = open_package(model).manifest
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(100.0, 20.0, [2 * p for p in manifest.patch_size_zyx]).astype("float32"))
    image.SetSpacing([float(s) for s in manifest.spacing_xyz])
    return image


def worker(args: argparse.Namespace) -> None:
    from tumorseg_core.inference.devices import configure_threads

    configure_threads()
    if args.worker == "export":
        import monai
        import torch

        from tumorseg_core.inference.predictor import Predictor
        from tumorseg_core.modelpkg.package import open_package

        started = time.perf_counter()
        predictor = Predictor.from_package(open_package(args.model), device=args.device, backend="auto")
        sync(args.device)
        seconds = time.perf_counter() - started
        info = {"seconds": seconds, "backend": predictor.backend, "window_batch": predictor.window_batch,
                "amp": predictor.amp and predictor.device.type == "cuda",
                "torch": torch.__version__, "monai": monai.__version__}
        if args.device == "cuda":
            info["gpu_name"] = torch.cuda.get_device_name()
        print(json.dumps(info))
        return
    cascade = True if args.cascade else None

    def run(image, out):
        if args.worker == "baseline":
            return run_baseline(image, args.model, out, args.device, args.sw_batch)
        return run_tumorseg(image, args.model, out, cascade, args.device)

    if args.device == "cuda":
        import torch

        run(warm_up_image(args.model), None)  # untimed: CUDA context, kernels, cuDNN/cuBLAS set-up
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    report = {"seconds": run(args.image, args.out), "peak_mb": peak_mb()}
    if args.device == "cuda":
        report["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(report))


def spawn(*extra: str, script: str | Path | None = None) -> dict:
    """Run ``script`` (default: this file) with ``extra`` in a fresh interpreter; its last stdout line as JSON."""
    cmd = [sys.executable, str(Path(script or __file__).resolve()), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"worker {' '.join(extra[:2])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def dice(a_path: str, b_path: str) -> float:
    import numpy as np
    import SimpleITK as sitk

    # GetArrayFromImage (a copy): a view of a temporary image segfaults once the image is freed.
    a = sitk.GetArrayFromImage(sitk.ReadImage(a_path)) > 0
    b = sitk.GetArrayFromImage(sitk.ReadImage(b_path)) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def bench_case(name: str, model: str, repeats: int, cascade: bool, work: Path, device: str = "cpu",
               sw_batch: int = 1) -> dict:
    image_path = make_case(name, work)  # written once, reused by every run
    times: dict[str, list[float]] = {"baseline": [], "tumorseg": []}
    peaks: dict[str, list[float]] = {"baseline": [], "tumorseg": []}
    gpu_peaks: dict[str, list[float]] = {"baseline": [], "tumorseg": []}
    for r in range(repeats):
        for side in (("baseline", "tumorseg") if r % 2 == 0 else ("tumorseg", "baseline")):
            extra = ["--cascade"] if cascade and side == "tumorseg" else []
            extra += ["--sw-batch", str(sw_batch)] if side == "baseline" else []
            res = spawn("--worker", side, "--image", str(image_path), "--model", model, "--device", device,
                        "--out", str(work / f"{name}-{side}.nii.gz"), *extra)
            times[side].append(res["seconds"])
            peaks[side].append(res["peak_mb"])
            if "gpu_peak_mb" in res:
                gpu_peaks[side].append(res["gpu_peak_mb"])
    base, ours = statistics.median(times["baseline"]), statistics.median(times["tumorseg"])
    row = {
        "case": name, "size_xyz": list(CASES[name][0]), "baseline_s": round(base, 2), "tumorseg_s": round(ours, 2),
        "speedup": round(base / ours, 2),
        "dice_agreement": round(dice(str(work / f"{name}-baseline.nii.gz"), str(work / f"{name}-tumorseg.nii.gz")), 4),
        "baseline_peak_mb": round(max(peaks["baseline"])), "tumorseg_peak_mb": round(max(peaks["tumorseg"])),
        "baseline_runs_s": [round(t, 1) for t in times["baseline"]],
        "tumorseg_runs_s": [round(t, 1) for t in times["tumorseg"]],
    }
    if device == "cuda":
        row.update(baseline_gpu_peak_mb=round(max(gpu_peaks["baseline"])),
                   tumorseg_gpu_peak_mb=round(max(gpu_peaks["tumorseg"])),
                   baseline_runs_s=[round(t, 2) for t in times["baseline"]],
                   tumorseg_runs_s=[round(t, 2) for t in times["tumorseg"]])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both sides run (default cpu)")
    parser.add_argument("--model", default="default",
                        help="package path, 'default' (the shipped model, the issue's setting) or 'random' (random-init unet3d)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cascade", action="store_true", help="TumorSeg side with cascade=True")
    parser.add_argument("--work", default=None, help="folder for phantoms and outputs (default: a temp folder)")
    parser.add_argument("--worker", choices=("baseline", "tumorseg", "export"), help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--sw-batch", type=int, default=1, help=argparse.SUPPRESS)  # = TumorSeg's window batch
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    cuda = args.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            print(f"error: --device cuda was given but torch.cuda.is_available() is False (torch {torch.__version__}, "
                  f"CUDA build {torch.version.cuda}); use --device cpu", file=sys.stderr)
            return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tumorseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = str(random_package(work / "random-unet3d")) if args.model == "random" else args.model
    export = spawn("--worker", "export", "--model", model, "--device", args.device)  # fills the export cache once
    gpu_mb = f" {'base GPU MB':>11} {'ours GPU MB':>11}" if cuda else ""
    if not args.json:
        print(f"model {model}; backend {export['backend']}; first-use export+load {export['seconds']:.1f} s; "
              f"{os.cpu_count()} CPUs")
        if cuda:
            precision = "AMP float16" if export["amp"] else "float32"
            print(f"GPU {export['gpu_name']}; torch {export['torch']}, MONAI {export['monai']}; TumorSeg {precision}, "
                  f"MONAI float32; {export['window_batch']} windows per batch on both sides")
        print(f"{'case':8} {'baseline s':>10} {'tumorseg s':>10} {'speedup':>7} {'dice':>6} {'base MB':>8} "
              f"{'ours MB':>8}{gpu_mb}")
    for name in args.cases:
        row = bench_case(name, model, args.repeats, args.cascade, work, args.device, export["window_batch"])
        row.update(backend=export["backend"], export_s=round(export["seconds"], 1))
        if cuda:
            row.update(device="cuda", gpu_name=export["gpu_name"], torch=export["torch"], monai=export["monai"],
                       sw_batch_size=export["window_batch"], amp=export["amp"])
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            gpu = f" {row['baseline_gpu_peak_mb']:11d} {row['tumorseg_gpu_peak_mb']:11d}" if cuda else ""
            digits = 2 if cuda else 1
            print(f"{name:8} {row['baseline_s']:10.{digits}f} {row['tumorseg_s']:10.{digits}f} {row['speedup']:7.2f} "
                  f"{row['dice_agreement']:6.3f} {row['baseline_peak_mb']:8d} {row['tumorseg_peak_mb']:8d}{gpu}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
