"""Make a new phantom, segment it with the default model, write the files and print Dice."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tumorseg_core.commands.progress import TerminalProgress
from tumorseg_core.commands.segment_options import add_segment_options, segment_options
from tumorseg_core.errors import TumorSegError

logger = logging.getLogger(__name__)

# Training uses seeds below 100_000 (see tumorseg_core/data/models/default/README.md).
DEMO_SEED = 424_242
DEMO_LESION_RADIUS_MM = (5.0, 18.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", default="tumorseg-demo", help="output folder (default: ./tumorseg-demo)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default {DEMO_SEED})")
    parser.add_argument("--model", default="default", help="model name, package folder or .zip (default: the shipped one)")
    parser.add_argument("--modality", default="mri", choices=("mri", "ct"))
    parser.add_argument("--lesion-free", action="store_true", help="a phantom without any lesion")
    add_segment_options(parser)


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from tumorseg_core.evaluation import metrics
    from tumorseg_core.imaging.io import write_image, write_labelmap
    from tumorseg_core.imaging.overlay import write_overlay_png
    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.synthetic import make_phantom

    folder = Path(args.directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TumorSegError(f"cannot create '{folder}': {error.strerror}; choose another folder") from error
    # A typical demo case: lesions of 10-36 mm diameter (make_phantom defaults go down to 5 mm).
    phantom = make_phantom(args.seed, modality=args.modality, lesion_free=args.lesion_free,
                           lesion_radius_mm=DEMO_LESION_RADIUS_MM)
    segmenter = Segmenter.with_options(args.model, segment_options(args))
    write_image(phantom.image, str(folder / "image.nii.gz"))
    write_labelmap(phantom.truth, str(folder / "truth.nii.gz"))
    progress = TerminalProgress()
    try:
        result = segmenter.segment_to_file(phantom.image, folder / "result.seg.nrrd", progress=progress)
    finally:
        progress.close()
    write_overlay_png(phantom.image, result, str(folder / "overlay.png"), truth=phantom.truth)

    pred = sitk.GetArrayViewFromImage(result) > 0
    truth = sitk.GetArrayViewFromImage(phantom.truth) > 0
    found = metrics.lesion_detection(pred, truth, phantom.image.GetSpacing())
    print(f"phantom seed {args.seed} ({args.modality}, {len(phantom.lesions)} lesion(s)) -> {folder}/")
    print(f"Dice        {metrics.dice(pred, truth):.3f}")
    print(f"Sensitivity {metrics.sensitivity(pred, truth):.3f}")
    print(f"Specificity {metrics.specificity(pred, truth):.4f}")
    print(f"Lesions     found {found['lesions_found']}, missed {found['lesions_missed']}, "
          f"false positive {found['lesions_fp']}")
    return 0
