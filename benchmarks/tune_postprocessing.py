"""Choose a model's postprocessing on tuning phantoms: sweep the minimum lesion volume.

Segments every case of a folder once (no postprocessing), then applies each candidate
rule ``{"label": 1, "min_volume_mm3": v, "fill_holes": true}`` on the input grid (the
shipped rule runs on the model grid before the labels go back to the input grid, so
components cut differently on thick-slice inputs can differ slightly) and
reports, per value: median and mean Dice, lesions found / truth, false-positive lesions,
and the volumes of the false-positive components that survive. Choose on cases that
are *not* the evaluation set (nnU-Net chooses its postprocessing on validation folds)::

    python benchmarks/make_eval_phantoms.py /tmp/tune40 --first-seed 600000 -n 40
    python benchmarks/tune_postprocessing.py --model PACKAGE --data /tmp/tune40 --min-volume 0 30 100 200 400
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _false_positive_volumes(pred: np.ndarray, truth: np.ndarray, voxel_mm3: float) -> list[float]:
    """Volumes (mm³) of predicted lesions that touch no truth voxel, with the lesion
    connectivity of :func:`tumorseg_core.evaluation.metrics.lesion_detection` (26-connected), so they
    are the lesions that the ``fp_lesions`` column counts."""
    from scipy import ndimage

    components, count = ndimage.label(pred > 0, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    touched = set(np.unique(components[(truth > 0) & (components > 0)]).tolist())
    return [float(sizes[i]) * voxel_mm3 for i in range(1, count + 1) if i not in touched]


def main(argv: list[str] | None = None) -> int:
    import SimpleITK as sitk

    from tumorseg_core.evaluation.evaluate import find_data, read_labels
    from tumorseg_core.evaluation.metrics import evaluate_case
    from tumorseg_core.imaging.postprocess import postprocess_labels
    from tumorseg_core.inference.segmenter import Segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--min-volume", type=float, nargs="+", default=[0.0, 30.0, 100.0, 200.0, 400.0])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        from tumorseg_core.inference.devices import configure_threads

        configure_threads(args.threads)

    images, truths = find_data(args.data)
    segmenter = Segmenter(args.model, device="cpu")
    raw = {}
    for case in images:
        pred = segmenter.segment(list(images[case]), postprocess=False)
        truth = read_labels(truths[case])[0]
        raw[case] = (sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(truth), pred.GetSpacing())

    print(f"{len(raw)} cases of {args.data}, model {args.model}")
    print("min_volume_mm3  dice_median  dice_mean  found/truth  fp_lesions  fp_volumes_mm3 (median, max)")
    for volume in args.min_volume:
        dices, found, total, fp, fp_volumes = [], 0, 0, 0, []
        for pred, truth, spacing in raw.values():
            labels = postprocess_labels(pred, spacing, [{"label": 1, "min_volume_mm3": volume, "fill_holes": True}])
            row = evaluate_case(labels, truth, spacing, {1: "Tumor"})[0]
            if np.isfinite(row["dice"]):
                dices.append(row["dice"])
            found += int(row["lesions_found"])
            total += int(row["lesions_truth"])
            fp += int(row["lesions_fp"])
            fp_volumes += _false_positive_volumes(labels, truth, float(np.prod(spacing)))
        vols = f"{np.median(fp_volumes):.0f}, {np.max(fp_volumes):.0f}" if fp_volumes else "-"
        median, mean = (f(dices) if dices else float("nan") for f in (np.median, np.mean))
        print(f"{volume:14.0f}  {median:11.3f}  {mean:9.3f}  {found:5d}/{total:<5d}  "
              f"{fp:10d}  {vols}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
