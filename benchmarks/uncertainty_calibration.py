"""How the uncertainty map relates to error (issue #22): top-10 % capture and calibration.

On the evaluation phantoms of ``make_eval_phantoms.py`` (seeds 500000 + i, MRI/CT
alternating, 96x96x80 at 1.5 mm, every fourth case 144x144x40 at 1 x 1 x 3 mm; made in
memory here, not written), for each case and each mode (``single``: one pass; ``tta``: the 8
flip passes):

- ONE sliding-window pass gives the stitched mean tumour probability on the model grid
  (``Predictor.predict_probabilities``). From it, exactly as the engine does: labels
  (p > 0.5, the manifest's postprocessing, nearest neighbour to the input grid), the
  normalised entropy (``inference/uncertainty.py``, linear to the input grid) and the
  tumour probability on the input grid (linear). The engine computes the same entropy from
  the same sums inside the stitcher (``Testing/core/test_uncertainty.py`` checks they agree).
- Ranking region: the BAND of input voxels within ``--band-mm`` (10) mm of predicted or
  true tumour. Over the whole volume almost every voxel is certain background, so the top
  10 % would trivially hold every error.
- ``capture``: share of wrong voxels (label != truth) inside the band that fall in the band's
  top 10 % most uncertain voxels (random ranking: 10 %). Baseline ``boundary``: the band's
  10 % of voxels closest to the predicted boundary (errors of a segmentation sit at its
  boundary, so this is the honest bar to beat). Also at 1, 2 and 5 %, and the AUROC of each
  score for wrong vs right band voxels (median over cases).
- ``ECE``: expected calibration error of the tumour probability, 15 equal bins, pooled over
  every case's voxels (whole volume, and band only).

Each finished (case, mode) is written to the ``--out`` JSON at once; rerunning resumes::

    nohup python benchmarks/uncertainty_calibration.py --out benchmarks/results/uncertainty_calibration.json &
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIRST_SEED = 500_000  # make_eval_phantoms.py's
BINS = 15
TOP = 0.10
#: Also reported: stricter shares (the 10 % of a 10 mm band is several times the error count).
TOPS = (0.01, 0.02, 0.05, 0.10)
MODES = {"single": False, "tta": True}

logger = logging.getLogger("uncertainty_calibration")


def eval_phantom(i: int, first_seed: int = FIRST_SEED) -> Any:
    """Evaluation phantom ``i``, as ``make_eval_phantoms.py`` makes it."""
    from tumorseg_core.synthetic import make_phantom

    grid = {"size_xyz": (144, 144, 40), "spacing_xyz": (1.0, 1.0, 3.0)} if i % 4 == 3 else {}
    return make_phantom(first_seed + i, modality="mri" if i % 2 == 0 else "ct", lesion_radius_mm=(2.5, 20.0),
                        **grid)


def calibration_bins(prob: np.ndarray, truth: np.ndarray, bins: int = BINS) -> dict[str, list[float]]:
    """Per equal-width bin of ``prob`` in [0, 1]: voxel count, sum of probabilities, sum of truth."""
    index = np.minimum((prob * bins).astype(np.int64), bins - 1)
    return {"count": np.bincount(index, minlength=bins).astype(float).tolist(),
            "sum_p": np.bincount(index, weights=prob, minlength=bins).tolist(),
            "sum_y": np.bincount(index, weights=truth.astype(np.float64), minlength=bins).tolist()}


def ece(bins: dict[str, list[float]]) -> float:
    """Expected calibration error from :func:`calibration_bins` totals."""
    count, sum_p, sum_y = (np.asarray(bins[k], dtype=np.float64) for k in ("count", "sum_p", "sum_y"))
    used = count > 0
    gap = np.abs(sum_y[used] - sum_p[used])  # = count * |mean truth - mean p|
    return float(gap.sum() / count.sum()) if count.sum() else math.nan


def top_share(score: np.ndarray, wrong: np.ndarray, fraction: float = TOP) -> tuple[int, int]:
    """(wrong voxels among the ``fraction`` highest ``score``, all wrong voxels); 1D arrays of one region."""
    n = score.size
    k = int(math.ceil(fraction * n))
    if k == 0 or not wrong.any():
        return 0, int(wrong.sum())
    top = np.argpartition(-score, k - 1)[:k]
    return int(wrong[top].sum()), int(wrong.sum())


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` separating ``positive`` voxels (ties count half)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return math.nan
    order = np.argsort(score, kind="stable")
    ranks = np.empty(score.size, dtype=np.float64)
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(mean_rank, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def distance_mm(mask: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """Unsigned distance (mm) of every voxel to ``mask`` (z, y, x) on ``reference``'s grid (inf if empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(dist), 0.0)


def boundary_distance_mm(mask: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """|signed distance| (mm) to the boundary of ``mask``; inf everywhere if it is empty."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.abs(sitk.GetArrayFromImage(dist))


def run_case(segmenter: Any, phantom: Any, tta: bool, band_mm: float) -> dict[str, Any]:
    """One case in one mode: the numbers stored in the JSON."""
    from tumorseg_core.imaging import geometry, postprocess
    from tumorseg_core.inference.uncertainty import entropy_of_probabilities, on_grid, to_reference

    started = time.perf_counter()
    options = segmenter.options.replace(tta=tta)
    volume, model_grid, reference = segmenter.prepare(phantom.image)
    predictor = segmenter.predictor(options)
    prob = predictor.predict_probabilities(volume)[0]  # P(tumour), (z, y, x) on the model grid
    del volume
    manifest = segmenter.manifest
    labels = (prob > 1.0 - prob).astype(np.uint8)  # the stitcher's argmax of (1 - p, p)
    if manifest.postprocessing:
        labels = postprocess.postprocess_labels(labels, manifest.spacing_xyz, manifest.postprocessing)
    labels_in = geometry.labels_to_reference(model_grid.apply_to(sitk.GetImageFromArray(labels)), reference)
    entropy = entropy_of_probabilities(np.stack([1.0 - prob, prob]), "softmax")
    unc_in = sitk.GetArrayFromImage(to_reference(entropy, model_grid, reference))
    prob_in = sitk.GetArrayFromImage(on_grid(model_grid.apply_to(sitk.GetImageFromArray(prob)), reference))
    seconds = time.perf_counter() - started

    pred = sitk.GetArrayFromImage(labels_in) > 0
    truth = sitk.GetArrayFromImage(phantom.truth) > 0
    wrong = pred != truth
    band = distance_mm(pred | truth, phantom.truth) <= band_mm
    edge = boundary_distance_mm(pred, phantom.truth)
    caught, n_wrong = top_share(unc_in[band], wrong[band])
    caught_edge, _ = top_share(-edge[band], wrong[band])
    shares = {f"{t:g}": [top_share(unc_in[band], wrong[band], t)[0], top_share(-edge[band], wrong[band], t)[0]]
              for t in TOPS}
    inter = float((pred & truth).sum())
    denom = float(pred.sum() + truth.sum())
    return {
        "seconds": round(seconds, 2), "dice": 2 * inter / denom if denom else 1.0,
        "band_voxels": int(band.sum()), "wrong_voxels": int(wrong.sum()), "wrong_in_band": n_wrong,
        "caught_uncertainty": caught, "caught_boundary": caught_edge, "caught_by_top": shares,
        "auroc_uncertainty": auroc(unc_in[band], wrong[band]), "auroc_boundary": auroc(-edge[band], wrong[band]),
        "mean_uncertainty_wrong": float(unc_in[wrong].mean()) if wrong.any() else math.nan,
        "mean_uncertainty_right_band": float(unc_in[band & ~wrong].mean()) if (band & ~wrong).any() else math.nan,
        "bins_all": calibration_bins(prob_in.ravel(), truth.ravel()),
        "bins_band": calibration_bins(prob_in[band], truth[band]),
    }


def summarize(results: dict[str, dict[str, Any]], mode: str) -> dict[str, Any]:
    """Pooled numbers for one mode over the finished cases."""
    cases = [r for key, r in sorted(results.items()) if key.endswith(f":{mode}")]
    if not cases:
        return {}
    wrong = sum(r["wrong_in_band"] for r in cases)
    total = {name: {k: np.sum([r[name][k] for r in cases], axis=0).tolist() for k in ("count", "sum_p", "sum_y")}
             for name in ("bins_all", "bins_band")}
    per_case = [r["caught_uncertainty"] / r["wrong_in_band"] for r in cases if r["wrong_in_band"]]
    return {
        "cases": len(cases),
        "capture_uncertainty": sum(r["caught_uncertainty"] for r in cases) / wrong if wrong else math.nan,
        "capture_boundary": sum(r["caught_boundary"] for r in cases) / wrong if wrong else math.nan,
        "capture_uncertainty_median_case": float(np.median(per_case)) if per_case else math.nan,
        "capture_by_top": {t: [sum(r["caught_by_top"][t][j] for r in cases) / wrong if wrong else math.nan
                               for j in (0, 1)] for t in cases[0]["caught_by_top"]},
        "median_auroc_uncertainty": float(np.nanmedian([r["auroc_uncertainty"] for r in cases])),
        "median_auroc_boundary": float(np.nanmedian([r["auroc_boundary"] for r in cases])),
        "ece_all": ece(total["bins_all"]), "ece_band": ece(total["bins_band"]),
        "median_dice": float(np.median([r["dice"] for r in cases])),
        "seconds_per_case": float(np.mean([r["seconds"] for r in cases])),
    }


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON with every finished case (resumed)")
    parser.add_argument("-n", type=int, default=20, help="phantoms (default 20)")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--model", default="default")
    parser.add_argument("--modes", default="single,tta", help="comma-separated: single, tta (default both)")
    parser.add_argument("--band-mm", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes a comma-separated list of {', '.join(MODES)}")

    from tumorseg_core.inference.devices import configure_threads
    from tumorseg_core.inference.segmenter import Segmenter

    configure_threads()
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    settings = {"n": args.n, "first_seed": args.first_seed, "model": args.model, "band_mm": args.band_mm}
    if data.get("settings", settings) != settings:
        parser.error(f"{args.out} holds a run with other settings {data['settings']}; use another --out")
    data["settings"] = settings
    results = data.setdefault("cases", {})
    segmenter = Segmenter(args.model, "cpu")
    for i in range(args.n):
        todo = [m for m in modes if f"case_{i:02d}:{m}" not in results]
        if not todo:
            continue
        phantom = eval_phantom(i, args.first_seed)
        for mode in todo:
            results[f"case_{i:02d}:{mode}"] = run_case(segmenter, phantom, MODES[mode], args.band_mm)
            data["summary"] = {m: summarize(results, m) for m in MODES}
            _save(args.out, data)
            r = results[f"case_{i:02d}:{mode}"]
            print(f"case_{i:02d} {mode}: {r['seconds']:.1f} s, Dice {r['dice']:.3f}, wrong in band "
                  f"{r['wrong_in_band']}, top-10% catches {r['caught_uncertainty']} (boundary {r['caught_boundary']})",
                  flush=True)
    print(json.dumps(data["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
