"""Real-time 3D on the CPU (issue #23): fp32 vs INT8 vs pruned, with and without window skipping, vs MONAI.

One script, one run, the same input per case (the ``mri256`` and ``ct512`` phantoms of
``cpu_vs_monai.py``, written once into ``--work``), every run its own subprocess:

- ``monai``: ``cpu_vs_monai.run_baseline`` (MONAI's ``sliding_window_inference`` on torch
  eager, the same network, window, overlap and Gaussian; TumorSeg's input and output steps);
- ``fp32``: ``cpu_vs_monai.run_tumorseg`` on ``--model`` (``backend=auto``: OpenVINO float32);
- ``int8``: the INT8 package (``--int8 PATH``, else ``quantize_speed.quantize_default`` builds
  it from the shipped default in this run); ``precision=auto`` runs its INT8 graph;
- ``pruned``: ``--pruned PATH`` (e.g. the best package of ``prune_tradeoff.py``), else the
  default pruned to ``--prune-keep`` by the Taylor criterion without fine-tune;
- each TumorSeg side twice: window skipping on (the default) and off (``-noskip``).

Sides are interleaved (the order reversed every other repeat); the median wall time per side
(read to label image, model loading included, export caches warm) is reported with its ratio
to the MONAI median (``x_monai`` > 1: faster than MONAI), and the Dice of each side's labels
to the fp32 labels (window skipping on). JSON: one object per case on stdout (``--json``),
and all of them in ``--work``/realtime_3d.json. Usage::

    python benchmarks/realtime_3d_compare.py --pruned /work/prune2/taylor-keep0.5-ft80-lr0.001-d1 \\
        [--int8 PATH] [--cases mri256 ct512] [--repeats 3] [--repeats-for ct512=1] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import cpu_vs_monai  # noqa: E402 - cases, timed runs, Dice, peak memory
import quantize_speed  # noqa: E402 - the INT8 package of the default model, the CPU's flags

logger = logging.getLogger("realtime_3d_compare")

MODELS = ("fp32", "int8", "pruned")
SIDES = ("monai",) + tuple(f"{m}{tail}" for m in MODELS for tail in ("", "-noskip"))


def worker(args: argparse.Namespace) -> None:
    """One timed run of one side in this process; prints ``{"seconds", "peak_mb"}`` as JSON."""
    from tumorseg_core.inference.devices import configure_threads

    configure_threads()
    if args.worker == "monai":
        seconds = cpu_vs_monai.run_baseline(args.image, args.model, args.out, "cpu", 1)
    else:
        seconds = cpu_vs_monai.run_tumorseg(args.image, args.model, args.out, None, "cpu",
                                            skip_background=not args.worker.endswith("-noskip"))
    print(json.dumps({"seconds": seconds, "peak_mb": cpu_vs_monai.peak_mb()}))


#: This script's worker in a fresh interpreter (its JSON line).
spawn = functools.partial(cpu_vs_monai.spawn, script=__file__)


def packages(args: argparse.Namespace, work: Path) -> Dict[str, str]:
    """The package of each model side: fp32 = ``--model``, INT8 and pruned given or made here."""
    if args.int8:
        int8 = args.int8
    elif args.model == "default":
        int8 = str(quantize_speed.quantize_default(work, args.max_dice_drop)[0])
    else:
        raise SystemExit("--int8 PATH is needed with a --model other than default")
    pruned = args.pruned
    if not pruned:
        from tumorseg_core.training.prune import prune_package

        pruned = str(work / f"pruned{args.prune_keep:g}")
        if not (Path(pruned) / "manifest.json").is_file():
            prune_package(args.model, pruned, args.prune_keep, fine_tune_iterations=0,
                          workdir=work / "pruned.work", overwrite=True)
    return {"fp32": args.model, "int8": int8, "pruned": pruned}


def bench_case(name: str, models: Dict[str, str], repeats: int, work: Path) -> dict:
    """Every side on case ``name``, interleaved; medians, ratios to MONAI and Dice to fp32."""
    image = cpu_vs_monai.make_case(name, work)
    times: Dict[str, List[float]] = {side: [] for side in SIDES}
    peaks: Dict[str, List[float]] = {side: [] for side in SIDES}
    for r in range(repeats):
        for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
            model = models["fp32"] if side == "monai" else models[side.split("-")[0]]
            res = spawn("--worker", side, "--image", str(image), "--model", model,
                        "--out", str(work / f"{name}-{side}.nii.gz"))
            times[side].append(res["seconds"])
            peaks[side].append(res["peak_mb"])
            logger.info("%s %s: %.2f s", name, side, res["seconds"])
    med = {side: statistics.median(times[side]) for side in SIDES}
    reference = str(work / f"{name}-fp32.nii.gz")
    return {
        "case": name, "size_xyz": list(cpu_vs_monai.CASES[name][0]), "repeats": repeats,
        "seconds": {side: round(med[side], 2) for side in SIDES},
        "x_monai": {side: round(med["monai"] / med[side], 2) for side in SIDES},
        "dice_to_fp32": {side: round(cpu_vs_monai.dice(str(work / f"{name}-{side}.nii.gz"), reference), 4)
                         for side in SIDES},
        "peak_mb": {side: round(max(peaks[side])) for side in SIDES},
        "runs_s": {side: [round(t, 2) for t in times[side]] for side in SIDES},
    }


def table(rows: List[dict]) -> str:
    """The Markdown table: one row per case and side."""
    lines = ["| case | side | s (median) | × MONAI | Dice to fp32 | peak MB |", "|---|---|---|---|---|---|"]
    for row in rows:
        for side in SIDES:
            lines.append(f"| {row['case']} | {side} | {row['seconds'][side]:.2f} | {row['x_monai'][side]:.2f} | "
                         f"{row['dice_to_fp32'][side]:.4f} | {row['peak_mb'][side]} |")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="the fp32 package, also MONAI's network (default: default)")
    parser.add_argument("--int8", help="INT8 package (default: tumorseg quantize default, made in --work)")
    parser.add_argument("--max-dice-drop", type=float, default=0.02, help="quantize budget when made here")
    parser.add_argument("--pruned", help="pruned package (default: --model pruned by Taylor to --prune-keep)")
    parser.add_argument("--prune-keep", type=float, default=0.5, help="keep ratio when the pruned package is made")
    parser.add_argument("--cases", nargs="+", default=["mri256", "ct512"], choices=list(cpu_vs_monai.CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-for", nargs="*", default=[], metavar="CASE=N",
                        help="other repeat counts for some cases, e.g. ct512=1")
    parser.add_argument("--work", help="folder for phantoms, packages, outputs and realtime_3d.json")
    parser.add_argument("--json", action="store_true", help="one JSON object per case instead of the table")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tumorseg-rt3d-"))
    work.mkdir(parents=True, exist_ok=True)
    repeats = {name: args.repeats for name in args.cases}
    repeats.update({k: int(v) for k, v in (item.split("=", 1) for item in args.repeats_for)})
    models = packages(args, work)
    for model in dict.fromkeys(models.values()):  # export caches warm, untimed
        cpu_vs_monai.spawn("--worker", "export", "--model", model, "--device", "cpu")
    header = {"cpu": quantize_speed.cpu_flags(), "cpu_count": os.cpu_count(), "models": models}
    logger.info("%s", header)
    rows = []
    for name in args.cases:
        rows.append(bench_case(name, models, repeats[name], work))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    (work / "realtime_3d.json").write_text(json.dumps({**header, "cases": rows}, indent=2) + "\n", encoding="utf-8")
    if not args.json:
        print(header["cpu"])
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
