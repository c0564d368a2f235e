"""Make a new phantom, segment it with the default model, write the files and print Dice.

The folder gets image.nii.gz (the phantom), truth.nii.gz (its exact lesions),
result.seg.nrrd (the segmentation), overlay.png, and the result's measurements:
measurements.csv (one row per lesion) and measurements.png (each lesion's RECIST slice). --phantom-seed picks the phantom:
the same number gives the same phantom on every machine.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tumorseg_core.commands.progress import TerminalProgress
from tumorseg_core.commands.segment_options import add_segment_options, segment_options
from tumorseg_core.commands.summary import add_quiet_option, print_summary
from tumorseg_core.errors import TumorSegError

logger = logging.getLogger(__name__)

# Training uses seeds below 100_000 (see tumorseg_core/data/models/default/README.md).
DEMO_SEED = 424_242
DEMO_LESION_RADIUS_MM = (5.0, 18.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", default="tumorseg-demo",
                        help="output folder, made if missing (default: ./tumorseg-demo)")
    parser.add_argument("--phantom-seed", dest="phantom_seed", type=int, default=DEMO_SEED, metavar="N",
                        help=f"random seed of the phantom: the same number, the same phantom (default {DEMO_SEED})")
    # The old spelling, kept working but not shown: 'segment --seed' is a click, not a random seed.
    parser.add_argument("--seed", dest="phantom_seed", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="default",
                        help="model name, package folder or .zip (default: 'default', the shipped model)")
    parser.add_argument("--modality", default="mri", choices=("mri", "ct"),
                        help="kind of image the phantom imitates (default: mri)")
    parser.add_argument("--lesion-free", action="store_true",
                        help="a phantom without any lesion (default: off, the phantom has lesions)")
    add_quiet_option(parser)
    add_segment_options(parser)


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from tumorseg_core.evaluation import metrics
    from tumorseg_core.imaging.io import write_image, write_labelmap
    from tumorseg_core.imaging.overlay import write_overlay_png
    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.measurement import measure
    from tumorseg_core.measurement.picture import write_png
    from tumorseg_core.synthetic import make_phantom

    started = time.perf_counter()
    folder = Path(args.directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TumorSegError(f"cannot create '{folder}': {error.strerror}; choose another folder") from error
    # A typical demo case: lesions of 10-36 mm diameter (make_phantom defaults go down to 5 mm).
    phantom = make_phantom(args.phantom_seed, modality=args.modality, lesion_free=args.lesion_free,
                           lesion_radius_mm=DEMO_LESION_RADIUS_MM)
    segmenter = Segmenter.with_options(args.model, segment_options(args))
    write_image(phantom.image, str(folder / "image.nii.gz"))
    write_labelmap(phantom.truth, str(folder / "truth.nii.gz"))
    progress = TerminalProgress(enabled=False) if args.quiet else TerminalProgress()
    try:
        result = segmenter.segment_to_file(phantom.image, folder / "result.seg.nrrd", progress=progress)
    finally:
        progress.close()
    write_overlay_png(phantom.image, result, str(folder / "overlay.png"), truth=phantom.truth)
    table = measure(result, image=phantom.image, segments=segmenter.manifest.segments)
    table.to_csv(folder / "measurements.csv")
    write_png(table, result, phantom.image, folder / "measurements.png")
    print_summary(result, [folder / "result.seg.nrrd"], time.perf_counter() - started, quiet=args.quiet)

    pred = sitk.GetArrayViewFromImage(result) > 0
    truth = sitk.GetArrayViewFromImage(phantom.truth) > 0
    found = metrics.lesion_detection(pred, truth, phantom.image.GetSpacing())
    print(f"phantom seed {args.phantom_seed} ({args.modality}, {len(phantom.lesions)} lesion(s)) -> {folder}/")
    print(f"Dice        {metrics.dice(pred, truth):.3f}")
    print(f"Sensitivity {metrics.sensitivity(pred, truth):.3f}")
    print(f"Specificity {metrics.specificity(pred, truth):.4f}")
    print(f"Lesions     found {found['lesions_found']}, missed {found['lesions_missed']}, "
          f"false positive {found['lesions_fp']}")
    return 0
