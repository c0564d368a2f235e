"""ROI cascade vs exhaustive sliding window: agreement, lost lesions and time per case.

The issue's bar for the cascade: Dice >= 0.98 against the exhaustive pass on phantoms
and no lesion >= 5 mm lost. For each phantom written by ``make_eval_phantoms.py`` this
runs one warm :class:`~tumorseg_core.inference.segmenter.Segmenter` twice (``cascade=False`` and
``cascade=True``, same backend) and reports the Dice between the two label maps, the
truth lesions (diameter >= ``--min-diameter``) that the exhaustive pass finds and the
cascade does not, and both wall times. Usage::

    python benchmarks/make_eval_phantoms.py /tmp/eval20
    python benchmarks/cascade_agreement.py /tmp/eval20 [--model default [OTHER ...]] [--json | --json-out ROWS.jsonl] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def lesions_lost(exhaustive: np.ndarray, cascade: np.ndarray, truth: np.ndarray, spacing_xyz, min_diameter_mm: float) -> int:
    """Truth lesions of equivalent-sphere diameter >= ``min_diameter_mm`` hit by ``exhaustive`` but not ``cascade``."""
    from scipy import ndimage

    labels, n = ndimage.label(truth, structure=np.ones((3, 3, 3), dtype=bool))
    voxel = float(np.prod(spacing_xyz))
    lost = 0
    for i in range(1, n + 1):
        lesion = labels == i
        diameter = 2.0 * (3.0 * lesion.sum() * voxel / (4.0 * np.pi)) ** (1.0 / 3.0)
        if diameter >= min_diameter_mm and exhaustive[lesion].any() and not cascade[lesion].any():
            lost += 1
    return lost


def main(argv: list[str] | None = None) -> int:
    import SimpleITK as sitk

    from tumorseg_core.evaluation import metrics
    from tumorseg_core.inference.segmenter import Segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with images/ and labels/ (make_eval_phantoms.py)")
    parser.add_argument("--model", nargs="+", default=["default"],
                        help="package(s): the first gives the exhaustive pass; each one's cascade is compared "
                             "with it (e.g. one package per cascade threshold, same full network)")
    parser.add_argument("--min-diameter", type=float, default=5.0, help="lesions this large must not be lost (mm)")
    parser.add_argument("--json", action="store_true", help="one JSON object per case and model")
    parser.add_argument("--json-out", type=Path, help="also write those JSON objects to this file (one per line)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto: both passes run there")
    args = parser.parse_args(argv)

    segmenters = [Segmenter(model, args.device) for model in args.model]
    images = sorted((args.data / "images").glob("*.nii.gz"))
    if not images:
        parser.error(f"no images in {args.data / 'images'}; run make_eval_phantoms.py first")
    first = sitk.ReadImage(str(images[0]))
    segmenters[0].segment(first, cascade=False)  # warm: load + export each network once
    for segmenter in segmenters:
        segmenter.segment(first, cascade=True)
    rows: dict[str, list] = {model: [] for model in args.model}
    json_out = args.json_out.open("w", encoding="utf-8") if args.json_out else None
    for path in images:
        image = sitk.ReadImage(str(path))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / "labels" / path.name))) > 0
        started = time.perf_counter()
        exhaustive = sitk.GetArrayFromImage(segmenters[0].segment(image, cascade=False)) > 0
        exhaustive_s = time.perf_counter() - started
        for model, segmenter in zip(args.model, segmenters):
            started = time.perf_counter()
            cascaded = sitk.GetArrayFromImage(segmenter.segment(image, cascade=True)) > 0
            cascade_s = time.perf_counter() - started
            both_empty = not exhaustive.any() and not cascaded.any()
            row = {"case": path.name.split(".")[0], "model": model,
                   "dice_agreement": 1.0 if both_empty else metrics.dice(cascaded, exhaustive),
                   "lesions_lost": lesions_lost(exhaustive, cascaded, truth, image.GetSpacing(), args.min_diameter),
                   "exhaustive_s": round(exhaustive_s, 3), "cascade_s": round(cascade_s, 3)}
            rows[model].append(row)
            if json_out is not None:
                json_out.write(json.dumps(row) + "\n")
                json_out.flush()
            print(json.dumps(row) if args.json else
                  f"{row['case']} [{model}]: Dice {row['dice_agreement']:.4f}, lost {row['lesions_lost']}, "
                  f"{row['exhaustive_s']:.2f} s -> {row['cascade_s']:.2f} s", flush=True)
    if json_out is not None:
        json_out.close()
    if not args.json:
        for model, model_rows in rows.items():
            dice = [r["dice_agreement"] for r in model_rows]
            print(f"{model}: {len(model_rows)} cases: Dice agreement min {min(dice):.4f}, "
                  f"median {statistics.median(dice):.4f}, mean {statistics.mean(dice):.4f}; "
                  f"lesions >= {args.min_diameter:g} mm lost: {sum(r['lesions_lost'] for r in model_rows)}; "
                  f"time {sum(r['exhaustive_s'] for r in model_rows):.1f} s -> "
                  f"{sum(r['cascade_s'] for r in model_rows):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
