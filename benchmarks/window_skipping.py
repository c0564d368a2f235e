"""Window skipping (issue #23 part 3): windows skipped, time saved and label agreement, one run.

For every case the same warm Segmenter (the shipped default model unless ``--model``) runs
the case twice, ``skip_background=False`` (every window, the exhaustive pass) and ``True``;
the order alternates from case to case so that a warm-up effect favours neither side. It
prints the windows run and skipped, both times and the Dice agreement and voxel equality of
the two label maps. Cases:

- ``eval``: the 20 evaluation phantoms of ``benchmarks/make_eval_phantoms.py`` (same seeds,
  grids and lesion sizes), made in memory;
- ``mri256``, ``ct512``: the phantoms of ``benchmarks/cpu_vs_monai.py``;
- ``air``: ``eval`` cases 0-3 placed off-centre in a field of view twice as wide (air
  added on one side in x and y, noise like the case's own air), a patient beside the
  centre of a large scan.

Usage::

    python benchmarks/window_skipping.py [--cases eval mri256 ct512 air] [--model default] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

FIRST_SEED = 500_000  # make_eval_phantoms.py


def eval_phantom(i: int):
    """Evaluation phantom ``i`` (0..19) exactly as make_eval_phantoms.py writes it."""
    from tumorseg_core.synthetic import make_phantom

    grid = {"size_xyz": (144, 144, 40), "spacing_xyz": (1.0, 1.0, 3.0)} if i % 4 == 3 else {}
    return make_phantom(FIRST_SEED + i, modality="mri" if i % 2 == 0 else "ct", lesion_radius_mm=(2.5, 20.0), **grid)


def with_air(image, seed: int):
    """``image`` in a field of view twice as wide in x and y, the added half air on the low side."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    corner = array[:4, :4, :4]
    size = image.GetSize()
    pads = ((0, 0), (size[1], 0), (size[0], 0))
    out = np.pad(array, pads)
    added = np.pad(np.zeros(array.shape, dtype=bool), pads, constant_values=True)
    out[added] = np.random.default_rng(seed).normal(float(corner.mean()), float(corner.std()) + 1e-3,
                                                    int(added.sum()))
    result = sitk.GetImageFromArray(out.astype(np.float32))
    result.SetSpacing(image.GetSpacing())
    result.SetDirection(image.GetDirection())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    shift = direction @ (np.array([size[0], size[1], 0]) * np.asarray(image.GetSpacing()))
    result.SetOrigin(tuple(float(v) for v in np.asarray(image.GetOrigin()) - shift))
    return result


def cases(names: list[str]):
    """Yield (name, SimpleITK image) for the chosen case groups."""
    from cpu_vs_monai import CASES

    from tumorseg_core.synthetic import make_phantom

    for name in names:
        if name == "eval":
            for i in range(20):
                yield f"case_{i:02d}", eval_phantom(i).image
        elif name == "air":
            for i in range(4):
                yield f"air_{i:02d}", with_air(eval_phantom(i).image, i)
        else:
            size, spacing, modality, seed = CASES[name]
            yield name, make_phantom(seed, size_xyz=size, spacing_xyz=spacing, modality=modality).image


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Foreground Dice of two label maps (1.0 when both are empty)."""
    fa, fb = a > 0, b > 0
    total = int(fa.sum() + fb.sum())
    return 1.0 if total == 0 else 2.0 * int((fa & fb).sum()) / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["eval", "mri256", "ct512", "air"],
                        choices=["eval", "mri256", "ct512", "air"])
    parser.add_argument("--model", default="default")
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    args = parser.parse_args(argv)

    import SimpleITK as sitk

    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.options import SegmentOptions

    segmenter = Segmenter(args.model, device="cpu")
    predictor = segmenter.predictor(SegmentOptions())
    if not args.json:
        print(f"model {args.model}; backend {predictor.backend}; window {predictor.patch_size_zyx}; "
              f"overlap {predictor.overlap}; {os.cpu_count()} CPUs")
        print(f"{'case':9} {'windows':>7} {'skipped':>7} {'all s':>7} {'skip s':>7} {'saved':>6} {'dice':>6} equal")
    totals = {"windows": 0, "skipped": 0, "all_s": 0.0, "skip_s": 0.0, "equal": 0, "cases": 0}
    for k, (name, image) in enumerate(cases(args.cases)):
        runs: dict[bool, tuple[np.ndarray, float, int, int]] = {}
        for skip in ((False, True) if k % 2 == 0 else (True, False)):
            started = time.perf_counter()
            labels = segmenter.segment(image, skip_background=skip)
            seconds = time.perf_counter() - started
            p = segmenter.predictor(SegmentOptions())
            runs[skip] = (sitk.GetArrayFromImage(labels), seconds, p.windows_skipped, p.windows_total)
        (full, full_s, _, windows), (skipped, skip_s, n_skipped, _) = runs[False], runs[True]
        row = {"case": name, "size": list(image.GetSize()), "windows": windows, "skipped": n_skipped,
               "all_s": round(full_s, 2), "skip_s": round(skip_s, 2),
               "saved": round(1.0 - skip_s / full_s, 3), "dice": round(dice(full, skipped), 4),
               "equal": bool(np.array_equal(full, skipped))}
        for key in ("windows", "skipped", "equal"):
            totals[key] += int(row[key])
        totals["all_s"] += full_s
        totals["skip_s"] += skip_s
        totals["cases"] += 1
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{name:9} {windows:7d} {n_skipped:7d} {full_s:7.1f} {skip_s:7.1f} {row['saved']:6.0%} "
                  f"{row['dice']:6.3f} {row['equal']}", flush=True)
    if not args.json:
        print(f"{'total':9} {totals['windows']:7d} {totals['skipped']:7d} {totals['all_s']:7.1f} "
              f"{totals['skip_s']:7.1f} {1 - totals['skip_s'] / max(totals['all_s'], 1e-9):6.0%} "
              f"  equal label maps: {totals['equal']}/{totals['cases']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
