"""Evaluate a 2.5D model in slice mode (by slices, or tri-planar) like ``tumorseg evaluate`` does.

``tumorseg evaluate --model M`` runs a 2.5D model through the 3D sliding-window predictor on the
model grid; this script runs what slice mode runs instead, ``Segmenter.segment_by_slices`` on
each image's own grid, and prints the same table (issue #23, part 4)::

    python benchmarks/make_eval_phantoms.py /tmp/eval20
    python benchmarks/eval_slice_mode.py --model PKG --data /tmp/eval20 --axes axial
    python benchmarks/eval_slice_mode.py --model PKG --data /tmp/eval20 --axes axial coronal sagittal

``--lesion-free-seeds`` also segments ``tumorseg demo --lesion-free`` phantoms (MRI, 96 x 96 x 80
at 1.5 mm) with those seeds and counts the false-positive lesions on them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("eval_slice_mode")


def evaluate(model: str, data: Path, axes: list[str], backend: str = "auto") -> tuple[list[dict], float]:
    """Rows of :func:`tumorseg_core.evaluation.evaluate.evaluate_images` for every case, and the seconds taken."""
    from tumorseg_core.evaluation.evaluate import evaluate_images, find_data, read_labels
    from tumorseg_core.inference.segmenter import Segmenter

    images, label_files = find_data(data)
    segmenter = Segmenter(model, device="cpu", backend=backend)
    labels = {s.value: s.name for s in segmenter.manifest.segments}
    rows: list[dict] = []
    started = time.perf_counter()
    for case in images:
        pred = segmenter.segment_by_slices(images[case][0], axes)
        rows.extend(evaluate_images(pred, read_labels(label_files[case])[0], case, labels))
        logger.info("%s: Dice %.3f", case, rows[-1]["dice"])
    return rows, time.perf_counter() - started


def lesion_free(model: str, seeds: list[int], axes: list[str], backend: str = "auto") -> list[int]:
    """False-positive lesions (26-connected components) on each ``tumorseg demo --lesion-free`` phantom.

    ``axes`` empty: the model's own 3D path (``Segmenter.segment``), for a 3D model next to a 2.5D one.
    """
    import SimpleITK as sitk

    from tumorseg_core.commands.demo import DEMO_LESION_RADIUS_MM
    from tumorseg_core.evaluation.metrics import lesion_count
    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.synthetic import make_phantom

    segmenter = Segmenter(model, device="cpu", backend=backend)
    counts = []
    for seed in seeds:
        phantom = make_phantom(seed, modality="mri", lesion_free=True, lesion_radius_mm=DEMO_LESION_RADIUS_MM)
        pred = segmenter.segment_by_slices(phantom.image, axes) if axes else segmenter.segment(phantom.image)
        counts.append(lesion_count(sitk.GetArrayViewFromImage(pred) > 0))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a 2.5D model package (name, folder or zip)")
    parser.add_argument("--data", type=Path, help="images/ + labels/ as make_eval_phantoms.py writes them")
    parser.add_argument("--axes", nargs="+", default=["axial"], choices=("axial", "coronal", "sagittal", "3d"),
                        help="slice axes (all three: tri-planar); 3d: the model's 3D path (lesion-free count only)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--lesion-free-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    from tumorseg_core.evaluation.evaluate import format_table, summarize

    axes = [] if args.axes == ["3d"] else args.axes
    if "3d" in axes:
        parser.error("3d goes alone")
    result: dict = {"model": args.model, "axes": args.axes}
    if args.data is not None and axes:
        rows, seconds = evaluate(args.model, args.data, axes, args.backend)
        summary = summarize(rows)
        logger.info("%s\n%.1f s for %d cases", format_table(summary), seconds, len({r["case"] for r in rows}))
        entry = summary[min(summary)]
        result.update(median_dice=entry["metrics"]["dice"]["median"], mean_dice=entry["metrics"]["dice"]["mean"],
                      lesions_found=entry["lesions_found"], lesions_truth=entry["lesions_truth"],
                      false_positive_lesions=entry["lesions_fp"], seconds=round(seconds, 1))
    if args.lesion_free_seeds:
        counts = lesion_free(args.model, args.lesion_free_seeds, axes, args.backend)
        logger.info("lesion-free phantoms %s: false-positive lesions %s (total %d, %d clean)",
                    args.lesion_free_seeds, counts, sum(counts), sum(c == 0 for c in counts))
        result.update(lesion_free_fp=counts)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
