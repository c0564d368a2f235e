"""CPU inference: MONAI's sliding_window_inference (torch eager) vs TumorSeg's default path.

Both sides get the same input file, the same weights, the same window, overlap and
Gaussian blending, the same input pipeline (read, align, resample to the model grid,
normalize: TumorSeg's own) and the same output steps (argmax, postprocess, labels back
to the input grid). Only the network/stitching engine differs:

- baseline: ``monai.inferers.sliding_window_inference(mode="gaussian")`` on torch
  eager CPU, softmax probabilities stitched, folds averaged, argmax.
- tumorseg: ``tumorseg_core.segment(path, model, device="cpu")``, i.e. the default
  backend (``auto``) and the default cascade setting, with a warm export cache (the
  one-time export is timed separately and reported as ``export_s``).

Each run is its own subprocess (peak RSS from ``getrusage`` is then clean); runs are
interleaved (baseline/tumorseg, order alternating) and the median time is reported.
Both sides use every usable core. Usage::

    python benchmarks/cpu_vs_monai.py [--json] [--model PATH|default|random]
        [--cases mri160 mri256 ct512] [--repeats 3] [--cascade]
"""

from __future__ import annotations

import argparse
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

    from tumorseg_core.models.registry import build_network
    from tumorseg_core.package import write_package

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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_baseline(image_path: str, model: str, out: str) -> float:
    """MONAI sliding window on the TumorSeg-prepared volume; returns seconds."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from tumorseg_core import geometry, postprocess
    from tumorseg_core.io import read_images
    from tumorseg_core.pipeline import Segmenter

    started = time.perf_counter()
    segmenter = Segmenter(model, "cpu")
    manifest = segmenter.manifest
    networks = segmenter.package.load_networks("cpu")
    inputs = read_images([image_path])
    volume, grid = segmenter._prepare(geometry.align_to_reference(inputs))
    overlap = float((manifest.inference or {}).get("overlap", 0.5))
    x = torch.from_numpy(volume)[None]
    with torch.inference_mode():
        probs = None
        for net in networks:
            p = sliding_window_inference(x, tuple(manifest.patch_size_zyx), 1, lambda t, n=net: torch.softmax(n(t), 1),
                                         overlap=overlap, mode="gaussian", sigma_scale=0.125)
            probs = p if probs is None else probs + p
        labels = torch.argmax(probs[0], 0).to(torch.uint8).numpy()
    if manifest.postprocessing:
        labels = postprocess.postprocess_labels(labels, manifest.spacing_xyz, manifest.postprocessing)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels))
    image.CopyInformation(grid)
    result = geometry.labels_to_reference(image, inputs[0])
    seconds = time.perf_counter() - started
    sitk.WriteImage(result, out)
    return seconds


def run_tumorseg(image_path: str, model: str, out: str, cascade: bool | None) -> float:
    import SimpleITK as sitk

    from tumorseg_core import segment

    started = time.perf_counter()
    options = {} if cascade is None else {"cascade": cascade}
    result = segment(image_path, model=model, device="cpu", **options)
    seconds = time.perf_counter() - started
    sitk.WriteImage(result, out)
    return seconds


def worker(args: argparse.Namespace) -> None:
    from tumorseg_core.inference.devices import configure_threads

    configure_threads()
    if args.worker == "export":
        from tumorseg_core.inference.predictor import Predictor
        from tumorseg_core.package import open_package

        started = time.perf_counter()
        backend = Predictor.from_package(open_package(args.model), device="cpu", backend="auto").backend
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "backend": backend}))
        return
    cascade = True if args.cascade else None
    if args.worker == "baseline":
        seconds = run_baseline(args.image, args.model, args.out)
    else:
        seconds = run_tumorseg(args.image, args.model, args.out, cascade)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb()}))


def spawn(*extra: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *extra]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def dice(a_path: str, b_path: str) -> float:
    import numpy as np
    import SimpleITK as sitk

    a = sitk.GetArrayViewFromImage(sitk.ReadImage(a_path)) > 0
    b = sitk.GetArrayViewFromImage(sitk.ReadImage(b_path)) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def bench_case(name: str, model: str, repeats: int, cascade: bool, work: Path) -> dict:

    image_path = make_case(name, work)
    times: dict[str, list[float]] = {"baseline": [], "tumorseg": []}
    peaks: dict[str, list[float]] = {"baseline": [], "tumorseg": []}
    for r in range(repeats):
        for side in (("baseline", "tumorseg") if r % 2 == 0 else ("tumorseg", "baseline")):
            extra = ["--cascade"] if cascade and side == "tumorseg" else []
            res = spawn("--worker", side, "--image", str(image_path), "--model", model,
                        "--out", str(work / f"{name}-{side}.nii.gz"), *extra)
            times[side].append(res["seconds"])
            peaks[side].append(res["peak_mb"])
    base, ours = statistics.median(times["baseline"]), statistics.median(times["tumorseg"])
    return {
        "case": name, "size_xyz": list(CASES[name][0]), "baseline_s": round(base, 2), "tumorseg_s": round(ours, 2),
        "speedup": round(base / ours, 2),
        "dice_agreement": round(dice(str(work / f"{name}-baseline.nii.gz"), str(work / f"{name}-tumorseg.nii.gz")), 4),
        "baseline_peak_mb": round(max(peaks["baseline"])), "tumorseg_peak_mb": round(max(peaks["tumorseg"])),
        "baseline_runs_s": [round(t, 1) for t in times["baseline"]],
        "tumorseg_runs_s": [round(t, 1) for t in times["tumorseg"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    parser.add_argument("--model", default="random", help="package path, 'default', or 'random' (random-init unet3d)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cascade", action="store_true", help="TumorSeg side with cascade=True")
    parser.add_argument("--work", default=None, help="folder for phantoms and outputs (default: a temp folder)")
    parser.add_argument("--worker", choices=("baseline", "tumorseg", "export"), help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tumorseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = str(random_package(work / "random-unet3d")) if args.model == "random" else args.model
    export = spawn("--worker", "export", "--model", model)  # fills the export cache once
    if not args.json:
        print(f"model {model}; backend {export['backend']}; first-use export+load {export['seconds']:.1f} s; "
              f"{os.cpu_count()} CPUs")
        print(f"{'case':8} {'baseline s':>10} {'tumorseg s':>10} {'speedup':>7} {'dice':>6} {'base MB':>8} {'ours MB':>8}")
    for name in args.cases:
        row = bench_case(name, model, args.repeats, args.cascade, work)
        row.update(backend=export["backend"], export_s=round(export["seconds"], 1))
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{name:8} {row['baseline_s']:10.1f} {row['tumorseg_s']:10.1f} {row['speedup']:7.2f} "
                  f"{row['dice_agreement']:6.3f} {row['baseline_peak_mb']:8d} {row['tumorseg_peak_mb']:8d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
