"""Size / speed / Dice trade-off of structured pruning (issue #23 part 2).

For each keep ratio (default 0.75, 0.5, 0.25) the model (default: the shipped default)
is pruned with ``tumorseg_core.training.prune.prune_package``, once without fine-tune and
once with a short CPU fine-tune; the parent and every pruned package are then measured
on the same evaluation phantoms (``benchmarks/make_eval_phantoms.py``, seeds 500000+):

- parameters and weight-file size (bytes of ``fold0.safetensors``),
- seconds per case: ``Segmenter(package, device="cpu").segment(image)`` wall time and
  process CPU time (every thread), median over the cases after one warm-up case (same
  inputs, same threads, default backend); ``--retime`` measures them again for every
  finished package, interleaved case by case (fairer on a shared, busy machine),
- Dice vs the truth: median and mean over the cases; lesions found / truth.

Every configuration (``keepK``, ``keepK-ftN`` or ``keepK-ftN-lrR``; the package is the folder
of that name) is checkpointed into ``OUT/results.json`` as soon as it is done, so a rerun
skips what is there (the fine-tunes resume from their own checkpoints too)::

    nohup python benchmarks/prune_tradeoff.py /tmp/prune_bench --iterations 80 > /tmp/prune.log 2>&1 &
    python benchmarks/prune_tradeoff.py /tmp/prune_bench --retime    # times again, interleaved
    python benchmarks/prune_tradeoff.py /tmp/prune_bench --table     # the Markdown table so far
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("prune_tradeoff")


def _save(path: Path, results: Dict[str, Any]) -> None:
    """Write ``results`` over what ``path`` holds (rows another run of this script added stay)."""
    merged = {**(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}), **results}
    results.update(merged)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _eval_cases(folder: Path, n: int) -> List[tuple]:
    if not (folder / "labels").is_dir():
        import subprocess

        subprocess.run([sys.executable, str(Path(__file__).with_name("make_eval_phantoms.py")), str(folder),
                        "-n", str(n)], check=True)
    images = sorted((folder / "images").glob("case_*.nii.gz"))[:n]
    return [(p, folder / "labels" / p.name) for p in images]


def measure(package: Path | str, cases: List[tuple]) -> Dict[str, Any]:
    """Parameters, file size, seconds per case and Dice of one package on ``cases``."""
    import numpy as np
    import SimpleITK as sitk

    from tumorseg_core.evaluation.metrics import dice
    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.modelpkg.package import open_package
    from tumorseg_core.training.prune import count_parameters

    pkg = open_package(package)
    manifest = pkg.manifest.to_dict()
    segmenter = Segmenter(str(pkg.root), device="cpu")
    segmenter.segment(str(cases[0][0]))  # warm-up: export cache, threads
    seconds, cpu_seconds, dices, found, truth_lesions = [], [], [], 0, 0
    from scipy import ndimage

    for image, label in cases:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = segmenter.segment(str(image))
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        pred = sitk.GetArrayFromImage(result) > 0
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label))) > 0
        dices.append(dice(pred, truth))
        lesions, n = ndimage.label(truth, structure=np.ones((3, 3, 3)))
        truth_lesions += n
        found += sum(1 for i in range(1, n + 1) if pred[lesions == i].any())
    return {
        "parameters": count_parameters(manifest["architecture"], manifest["kwargs"]),
        "file_bytes": sum((pkg.root / f).stat().st_size for f in pkg.weight_files),
        "features": manifest["kwargs"].get("features"),
        "seconds_per_case": statistics.median(seconds),
        "cpu_seconds_per_case": statistics.median(cpu_seconds),
        "dice_median": statistics.median(dices),
        "dice_mean": statistics.fmean(dices),
        "lesions_found": found,
        "lesions_truth": truth_lesions,
        "cases": len(cases),
        "validation": (manifest.get("metrics") or {}).get("validation"),
    }


def retime(packages: Dict[str, Path | str], cases: List[tuple]) -> Dict[str, Dict[str, float]]:
    """Wall and CPU seconds per case of every package, interleaved case by case (medians)."""
    from tumorseg_core.inference.segmenter import Segmenter

    segmenters = {key: Segmenter(str(path), device="cpu") for key, path in packages.items()}
    for segmenter in segmenters.values():
        segmenter.segment(str(cases[0][0]))  # warm-up
    wall: Dict[str, List[float]] = {k: [] for k in packages}
    cpu: Dict[str, List[float]] = {k: [] for k in packages}
    for image, _ in cases:
        for key, segmenter in segmenters.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            segmenter.segment(str(image))
            wall[key].append(time.perf_counter() - started)
            cpu[key].append(time.process_time() - cpu_started)
    return {k: {"seconds_per_case": statistics.median(wall[k]), "cpu_seconds_per_case": statistics.median(cpu[k])}
            for k in packages}


def table(results: Dict[str, Any]) -> str:
    rows = ["| model | keep | features | parameters | weights MB | s / case (wall) | CPU s / case | Dice median "
            "| Dice mean | lesions found | fine-tune |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    parent = results.get("parent")
    rest = [k for k in results if k not in ("parent", "settings") and isinstance(results[k], dict)]
    order = ["parent"] + sorted(rest, key=lambda k: (-float(results[k].get("keep", 1.0)), "-ft" in k, k))
    for key in order:
        r = results.get(key)
        if not isinstance(r, dict) or "parameters" not in r:
            continue
        times = {**r, **r.get("retime", {})}
        base = {**parent, **parent.get("retime", {})} if parent else None
        speed = []
        for name in ("seconds_per_case", "cpu_seconds_per_case"):
            if name not in times:
                speed.append("—")
                continue
            text = f"{times[name]:.2f}"
            if base and key != "parent" and name in base:
                text += f" ({base[name] / times[name]:.2f}×)"
            speed.append(text)
        tune = r.get("fine_tune", "—")
        rows.append(f"| {key} | {r.get('keep', 1.0):g} | {r['features']} | {r['parameters']:,} | "
                    f"{r['file_bytes'] / 1e6:.2f} | {speed[0]} | {speed[1]} | {r['dice_median']:.3f} | "
                    f"{r['dice_mean']:.3f} | {r['lesions_found']}/{r['lesions_truth']} | {tune} |")
    return "\n".join(rows)


def parent_augment(model: str) -> Dict[str, Any]:
    """The augmentation settings of the package's training config ({} without one)."""
    from tumorseg_core.modelpkg.package import open_package

    stored = open_package(model).root / "training_config.json"
    return dict(json.loads(stored.read_text(encoding="utf-8")).get("augment") or {}) if stored.is_file() else {}


def row_key(keep: float, criterion: str, iterations: int, lr: float | None, distill_weight: float) -> str:
    """The configuration's name (and package folder): ``[taylor-]keepK[-ftN[-lrR][-dW]]``.

    L1 rows without distillation keep the names of the first session's results."""
    key = ("" if criterion == "l1" else f"{criterion}-") + f"keep{keep:g}"
    if iterations:
        key += f"-ft{iterations}" + (f"-lr{lr:g}" if lr else "") + (f"-d{distill_weight:g}" if distill_weight else "")
    return key


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="work folder: results.json, packages, phantoms")
    parser.add_argument("--model", default="default")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.25, 0.75])
    parser.add_argument("--iterations", type=int, default=80, help="fine-tune steps per configuration")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch-size", type=int, default=48,
                        help="fine-tune crop side in voxels (the packages keep the parent's 64³ window)")
    parser.add_argument("--data", default="synthetic:16", help="fine-tune data")
    parser.add_argument("--lr", type=float, help="fine-tune learning rate (default: the parent's training lr)")
    parser.add_argument("--criterion", default="taylor", choices=("taylor", "l1"),
                        help="channel ranking (prune_package's criterion); 'l1' rows keep their old names")
    parser.add_argument("--distill-weight", type=float, default=1.0,
                        help="weight of the distillation loss to the parent in the fine-tune (0: labels only)")
    parser.add_argument("--pos", type=float,
                        help="foreground-centred crops per background-centred one in the fine-tune "
                             "(default: the parent's, 3 for the shipped default)")
    parser.add_argument("--cases", type=int, default=6, help="evaluation phantoms")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="print the Markdown table of results.json and stop")
    parser.add_argument("--retime", action="store_true",
                        help="time every finished package again, interleaved, into results.json, and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results: Dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if args.table:
        print(table(results))
        return 0
    import torch

    from tumorseg_core.training.prune import prune_package

    torch.set_num_threads(args.threads)
    results["settings"] = {"model": args.model, "iterations": args.iterations, "batch_size": args.batch_size,
                           "data": args.data, "cases": args.cases, "patch_size": args.patch_size, "threads": args.threads,
                           "cpu": os.uname().machine, "cpu_count": os.cpu_count()}
    cases = _eval_cases(args.out / "eval", args.cases)
    if args.retime:
        done = {k: (args.model if k == "parent" else args.out / k) for k, v in results.items()
                if isinstance(v, dict) and "parameters" in v}
        for key, row in retime(done, cases).items():
            results[key]["retime"] = row
        _save(path, results)
        print(table(results))
        return 0
    if "parent" not in results:
        results["parent"] = measure(args.model, cases)
        _save(path, results)
        logger.info("parent: %s", results["parent"])
    # Pruned without fine-tune first (cheap), then the fine-tunes.
    for tuned in (False, True):
        for keep in args.keep:
            key = row_key(keep, args.criterion, args.iterations if tuned else 0, args.lr, args.distill_weight)
            key += f"-pos{args.pos:g}" if tuned and args.pos else ""
            if key in results:
                continue
            out = args.out / key
            started = time.perf_counter()
            if not out.is_dir():
                prune_package(args.model, out, keep, fine_tune_iterations=args.iterations if tuned else 0,
                              data=args.data, workdir=args.out / f"{key}.work", criterion=args.criterion,
                              distill_weight=args.distill_weight,
                              config_overrides={"batch_size": args.batch_size,
                                                "patch_size": [args.patch_size] * 3,
                                                **({"lr": args.lr} if args.lr else {}),
                                                **({"augment": {**parent_augment(args.model), "pos": args.pos,
                                                                "neg": 1.0}} if args.pos else {}),
                                                "cache_dir": str(args.out / "cache")})
            made = time.perf_counter() - started
            row = measure(out, cases)
            distill = f", distil {args.distill_weight:g}" if args.distill_weight else ", labels only"
            row.update(keep=keep, make_seconds=made, criterion=args.criterion,
                       fine_tune=(f"{args.iterations} it × {args.batch_size} × {args.patch_size}³, lr {args.lr or 'parent'}"
                                  f"{distill}" + (f", pos:neg {args.pos:g}:1" if args.pos else "")
                                  if tuned else "none"))
            results[key] = row
            _save(path, results)
            logger.info("%s: %s", key, row)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
