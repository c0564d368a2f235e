"""Segment tumors in one case and write the label map (.seg.nrrd, .nii.gz, .nii, .nrrd, .mha)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from tumorseg_core.errors import InputError, TumorSegError
from tumorseg_core.progress import TerminalProgress

logger = logging.getLogger(__name__)

OUTPUT_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


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
    parser.add_argument("-o", "--output", required=True, help="output label map (.seg.nrrd, .nii.gz, .nii, .nrrd, .mha)")
    parser.add_argument("--model", default=None,
                        help="'default', an installed model name, or a package folder/.zip "
                             "(default: 'default'; with --seed and no --model, no model is used)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (slower, a bit more robust)")
    parser.add_argument("--overlap", type=float, default=None, help="sliding-window overlap 0..0.9 (model default)")
    parser.add_argument("--window-batch", type=int, default=None, help="windows per network call")
    parser.add_argument("--seed", action="append", default=[], metavar="X,Y,Z",
                        help="a point inside the tumor, LPS mm (repeatable); without --model: seeded segmentation")
    parser.add_argument("--background", action="append", default=[], metavar="X,Y,Z",
                        help="a point that is not tumor, LPS mm (repeatable)")
    parser.add_argument("--no-postprocess", action="store_true", help="skip the model's postprocessing rules")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "openvino"),
                        help="inference engine (default auto: openvino > onnxruntime > torch on the CPU)")
    parser.add_argument("--cascade", action=argparse.BooleanOptionalAction, default=None,
                        help="coarse pass first, full resolution only around candidates "
                             "(--no-cascade: every window; default: the engine's default)")


def check_output_path(path: str) -> Path:
    """Refuse a bad output path before any work is done."""
    output = Path(path)
    if not any(output.name.lower().endswith(ext) for ext in OUTPUT_EXTENSIONS):
        raise TumorSegError(f"cannot write '{output.name}': use one of {', '.join(OUTPUT_EXTENSIONS)}")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise TumorSegError(f"output folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise TumorSegError(f"output folder '{parent}' is not writable; choose another folder")
    return output


def run(args: argparse.Namespace) -> int:
    from tumorseg_core.io import write_labelmap

    output = check_output_path(args.output)
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise TumorSegError(f"--overlap must be in [0, 1), got {args.overlap}")
    seeds = [parse_point(p) for p in args.seed]
    background = [parse_point(p) for p in args.background]
    progress = TerminalProgress()
    try:
        if seeds and args.model is None:
            labels, segments = _seeded(args.images, seeds, background)
        else:
            labels, segments = _with_model(args, seeds, background, progress)
    finally:
        progress.close()
    write_labelmap(labels, str(output), segments=segments)
    logger.info("wrote %s", output)
    return 0


def _with_model(args: argparse.Namespace, seeds: list, background: list, progress: TerminalProgress):
    from tumorseg_core.pipeline import Segmenter
    from tumorseg_core.segments import segments_from_manifest

    segmenter = Segmenter(args.model or "default", args.device)
    labels = segmenter.segment(
        args.images, progress=progress, overlap=args.overlap, tta=args.tta, window_batch=args.window_batch,
        postprocess=not args.no_postprocess, seeds_lps=seeds, background_lps=background,
        backend=args.backend, cascade=args.cascade,
    )
    return labels, segments_from_manifest(segmenter.manifest.to_dict())


def _seeded(images: list, seeds: list, background: list):
    from tumorseg_core.interactive import segment_from_seeds
    from tumorseg_core.io import read_image
    from tumorseg_core.segments import SEEDED_TUMOR

    if len(images) != 1:
        raise InputError("seeded segmentation without a model takes exactly one image; add --model to use several")
    result = segment_from_seeds(read_image(images[0]), seeds, background)
    if getattr(result, "message", ""):
        logger.warning("%s", result.message)
    labels = getattr(result, "labels", result)
    return labels, [SEEDED_TUMOR]
