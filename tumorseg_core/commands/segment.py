"""Segment tumors in one case and write the label map (.seg.nrrd, .nii.gz, .nii, .nrrd, .mha)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tumorseg_core.commands.progress import TerminalProgress
from tumorseg_core.commands.segment_options import add_segment_options, segment_options
from tumorseg_core.errors import InputError
from tumorseg_core.options import LABELMAP_EXTENSIONS

logger = logging.getLogger(__name__)


def parse_point(text: str) -> tuple[float, float, float]:
    """``"-48,43.5,6"`` → ``(-48.0, 43.5, 6.0)`` (LPS millimetres)."""
    parts = text.split(",")
    try:
        point = tuple(float(p) for p in parts)
    except ValueError:
        point = ()
    if len(point) != 3:
        raise InputError(f"'{text}' is not a point; write it as X,Y,Z in LPS millimetres, e.g. --seed=-48,43,6")
    return point  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="input image(s): NIfTI, NRRD, MHA or a DICOM folder; several = the model's "
                             "input channels in the order 'tumorseg models' lists them")
    parser.add_argument("-o", "--output", required=True,
                        help=f"output label map ({', '.join(LABELMAP_EXTENSIONS)})")
    parser.add_argument("--model", default=None,
                        help="'default', an installed model name, or a package folder/.zip "
                             "(default: 'default'; with --seed and no --model, no model is used)")
    parser.add_argument("--seed", action="append", default=[], metavar="X,Y,Z",
                        help="a point inside the tumor, LPS mm (repeatable); without --model: seeded segmentation")
    parser.add_argument("--background", action="append", default=[], metavar="X,Y,Z",
                        help="a point that is not tumor, LPS mm (repeatable)")
    add_segment_options(parser, "with a model")


def run(args: argparse.Namespace) -> int:
    from tumorseg_core.imaging.io import check_output_path

    output = check_output_path(args.output)
    seeds = [parse_point(p) for p in args.seed]
    background = [parse_point(p) for p in args.background]
    options = segment_options(args, seeds_lps=seeds, background_lps=background)
    progress = TerminalProgress()
    try:
        if seeds and args.model is None:
            _seeded(args.images, seeds, background, output)
        else:
            from tumorseg_core.inference.segmenter import Segmenter

            Segmenter.with_options(args.model or "default", options).segment_to_file(
                args.images, output, progress=progress)
    finally:
        progress.close()
    logger.info("wrote %s", output)
    return 0


def _seeded(images: list, seeds: list, background: list, output: Path) -> None:
    from tumorseg_core.imaging.io import read_image, write_labelmap
    from tumorseg_core.imaging.segments import SEEDED_TUMOR
    from tumorseg_core.interactive.seeds import segment_from_seeds

    if len(images) != 1:
        raise InputError("seeded segmentation without a model takes exactly one image; add --model to use several")
    result = segment_from_seeds(read_image(images[0]), seeds, background)
    if result.message:
        logger.warning("%s", result.message)
    write_labelmap(result.labels, output, segments=[SEEDED_TUMOR])
