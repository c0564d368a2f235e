"""INT8 quantization on the CPU (issue #23): the shipped default model, float32 vs INT8 vs MONAI.

One script, one run, same input per case (the ``mri256`` and ``ct512`` phantoms of
``cpu_vs_monai.py``, written once):

1. ``tumorseg quantize default`` (``training/quantize.py``, calibration ``synthetic:8``,
   ``--max-dice-drop``, default 0.02) writes the INT8 package into the work folder (timed once).
2. Per case, interleaved, each run its own subprocess (``cpu_vs_monai.py``'s functions):
   - **monai**: ``cpu_vs_monai.run_baseline``, MONAI's ``sliding_window_inference`` on torch eager;
   - **fp32**: ``cpu_vs_monai.run_tumorseg`` on the default package (``backend=auto``: OpenVINO, float32);
   - **int8**: ``cpu_vs_monai.run_tumorseg`` on the INT8 package (``precision=auto``: its INT8
     graph on OpenVINO).
   TumorSeg's other defaults apply to both of its sides alike (cascade off, window skipping
   as ``SegmentOptions`` sets it). The float32 export cache is warmed first (untimed).
3. Median of ``--repeats`` wall times (read to label image), peak RSS, and the Dice of
   the INT8 labels to the float32 labels (target >= 0.98) and of float32 to MONAI.

Usage::

    python benchmarks/quantize_speed.py [--cases mri256 ct512] [--repeats 3] [--repeats-for ct512=1]
        [--max-dice-drop 0.02] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import cpu_vs_monai  # noqa: E402 - the benchmark's shared functions (cases, runs, Dice)

SIDES = ("monai", "fp32", "int8")


def worker(args: argparse.Namespace) -> None:
    """One timed run of one side in this process; prints {"seconds", "peak_mb"} as JSON."""
    from tumorseg_core.inference.devices import configure_threads

    configure_threads()
    if args.worker == "monai":
        seconds = cpu_vs_monai.run_baseline(args.image, "default", args.out, "cpu", 1)
    else:
        seconds = cpu_vs_monai.run_tumorseg(args.image, args.model, args.out, None, "cpu")
    print(json.dumps({"seconds": seconds, "peak_mb": cpu_vs_monai.peak_mb()}))


def spawn(*extra: str) -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *extra], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"worker {' '.join(extra[:2])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def quantize_default(work: Path, max_dice_drop: float) -> tuple[Path, dict]:
    """The INT8 package of the shipped default model in ``work`` (made once); (its folder, what quantize said)."""
    out = work / "tumorseg-default-int8"
    info_path = work / "quantize.json"
    if (out / "manifest.json").is_file() and info_path.is_file():
        return out, json.loads(info_path.read_text(encoding="utf-8"))
    from tumorseg_core.training.quantize import quantize_package

    started = time.perf_counter()
    report = quantize_package("default", out, calibration="synthetic:8", max_dice_drop=max_dice_drop, overwrite=True)
    info = {"seconds": round(time.perf_counter() - started, 1), "max_dice_drop": max_dice_drop,
            "dice_to_fp32": round(report.dice_to_fp32, 4), "case_dice": [round(d, 4) for d in report.case_dice],
            "min_case_dice": round(min(report.case_dice), 4), "windows": report.windows,
            "float_nodes": list(report.float_nodes), "backend": report.backend,
            "int8_bytes": (out / "fold0.int8.onnx").stat().st_size}
    info_path.write_text(json.dumps(info), encoding="utf-8")
    return out, info


def bench_case(name: str, int8_model: Path, repeats: int, work: Path) -> dict:
    image = cpu_vs_monai.make_case(name, work)
    models = {"monai": "default", "fp32": "default", "int8": str(int8_model)}
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    peaks: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(repeats):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        for side in order:
            res = spawn("--worker", side, "--image", str(image), "--model", models[side],
                        "--out", str(work / f"{name}-{side}.nii.gz"))
            times[side].append(res["seconds"])
            peaks[side].append(res["peak_mb"])
    med = {side: statistics.median(times[side]) for side in SIDES}

    def out(side: str) -> str:
        return str(work / f"{name}-{side}.nii.gz")

    return {
        "case": name, "size_xyz": list(cpu_vs_monai.CASES[name][0]), "repeats": repeats,
        "monai_s": round(med["monai"], 2), "fp32_s": round(med["fp32"], 2), "int8_s": round(med["int8"], 2),
        "int8_vs_fp32": round(med["fp32"] / med["int8"], 2), "int8_vs_monai": round(med["monai"] / med["int8"], 2),
        "fp32_vs_monai": round(med["monai"] / med["fp32"], 2),
        "dice_int8_fp32": round(cpu_vs_monai.dice(out("int8"), out("fp32")), 4),
        "dice_fp32_monai": round(cpu_vs_monai.dice(out("fp32"), out("monai")), 4),
        "peak_mb": {side: round(max(peaks[side])) for side in SIDES},
        "runs_s": {side: [round(t, 1) for t in times[side]] for side in SIDES},
    }


def cpu_flags() -> str:
    """The CPU's model and its SIMD flags that matter for INT8 (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return model + "; " + ", ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["mri256", "ct512"], choices=list(cpu_vs_monai.CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-for", nargs="*", default=[], metavar="CASE=N",
                        help="fewer (or more) runs for some cases, e.g. ct512=1 where a run takes minutes")
    parser.add_argument("--max-dice-drop", type=float, default=0.02,
                        help="tumorseg quantize's budget on the calibration phantoms (default 0.02)")
    parser.add_argument("--work", default=None, help="folder for phantoms, the INT8 package and outputs")
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tumorseg-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    repeats = {name: args.repeats for name in args.cases}
    repeats.update({k: int(v) for k, v in (item.split("=", 1) for item in args.repeats_for)})
    int8_model, info = quantize_default(work, args.max_dice_drop)
    export = cpu_vs_monai.spawn("--worker", "export", "--model", "default", "--device", "cpu")  # warm fp32 cache
    print(f"{cpu_flags()}; {os.cpu_count()} CPUs; fp32 backend {export['backend']}")
    print(f"quantize: {info}")
    if not args.json:
        print(f"{'case':8} {'MONAI s':>8} {'fp32 s':>8} {'INT8 s':>8} {'INT8/fp32':>9} {'INT8/MONAI':>10} "
              f"{'Dice INT8-fp32':>14} {'Dice fp32-MONAI':>15}")
    for name in args.cases:
        row = bench_case(name, int8_model, repeats[name], work)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{name:8} {row['monai_s']:8.2f} {row['fp32_s']:8.2f} {row['int8_s']:8.2f} "
                  f"{row['int8_vs_fp32']:8.2f}x {row['int8_vs_monai']:9.2f}x {row['dice_int8_fp32']:14.4f} "
                  f"{row['dice_fp32_monai']:15.4f}  peak MB {row['peak_mb']}  runs {row['runs_s']}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
