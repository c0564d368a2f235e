"""Segment tumors in one case and write the label map (.seg.nrrd, .nii.gz, .nii, .nrrd, .mha) or a DICOM SEG (.dcm).

Optionally also: the measurement table of the result (--measure), the uncertainty map
(--uncertainty) and a DICOM SEG next to the label map (--dicom-seg). Every output path is
checked before the work starts; if any output cannot be written, none is left behind.

When the file is written, one line on stderr says where, how many lesions were found,
their total volume and how long it took (also when stderr is piped to a log; -q turns
it and the progress bar off).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

from tumorseg_core.commands.progress import TerminalProgress
from tumorseg_core.commands.segment_options import add_segment_options, segment_options
from tumorseg_core.commands.summary import add_quiet_option, print_summary
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
                        help=f"output label map ({', '.join(LABELMAP_EXTENSIONS)}), or a DICOM SEG (.dcm) of the "
                             "input DICOM series; required")
    parser.add_argument("--model", default=None,
                        help="'default', an installed model name, or a package folder/.zip "
                             "(default: 'default'; with --seed and no --model, no model is used)")
    parser.add_argument("--seed", action="append", default=[], metavar="X,Y,Z",
                        help="a click inside the tumor, in LPS mm (repeatable); without --model it grows the "
                             "lesion from the clicks, no model (default: none). Not a random seed")
    parser.add_argument("--background", action="append", default=[], metavar="X,Y,Z",
                        help="a click on something that is not tumor, in LPS mm (repeatable; default: none)")
    parser.add_argument("--measure", metavar="TABLE", default=None,
                        help="also write the result's measurements, one row per lesion (.csv or .json): volume, "
                             "RECIST long/short axes, 3D diameter, surface, sphericity, intensity of the first "
                             "image (default: none; 'tumorseg measure' adds PET SUV)")
    parser.add_argument("--uncertainty", metavar="FILE", default=None,
                        help="also write the voxel-wise uncertainty map (.nrrd, .nii.gz, .nii, .mha): the "
                             "normalised predictive entropy, 0..1, on the input grid; needs a model (default: none)")
    parser.add_argument("--dicom-seg", metavar="FILE.dcm", default=None,
                        help="also write the result as a DICOM SEG that references the input series; the first "
                             "input must be a DICOM folder (default: none)")
    add_quiet_option(parser)
    add_segment_options(parser, "with a model")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    outputs = _checked_outputs(args)
    seeds = [parse_point(p) for p in args.seed]
    background = [parse_point(p) for p in args.background]
    options = segment_options(args, seeds_lps=seeds, background_lps=background)
    seeded = bool(seeds) and args.model is None
    if seeded and outputs.uncertainty is not None:
        from tumorseg_core.inference.uncertainty import seeded_uncertainty_error

        raise seeded_uncertainty_error()
    progress = TerminalProgress(enabled=False) if args.quiet else TerminalProgress()
    written: list[Path] = []
    try:
        try:
            if seeded:
                labels, segments, algorithm = _seeded(args.images, seeds, background, outputs.labelmap)
            else:
                labels, segments, algorithm = _with_model(args, options, outputs, progress)
        finally:
            progress.close()
        written = [p for p in (outputs.uncertainty, outputs.labelmap) if p is not None]
        if outputs.dicom_seg is not None:
            from tumorseg_core.dicom.seg_write import write_dicom_seg

            written.append(write_dicom_seg(labels, args.images[0], outputs.dicom_seg, segments=segments,
                                           algorithm_name=algorithm[0], algorithm_version=algorithm[1]))
        if outputs.measure is not None:
            from tumorseg_core.imaging.io import read_image
            from tumorseg_core.measurement import measure_to_file

            written.append(measure_to_file(labels, read_image(args.images[0]), outputs.measure, segments=segments))
    except BaseException:
        _remove(written)  # one run, all its outputs or none
        raise
    print_summary(labels, written, time.perf_counter() - started, quiet=args.quiet)
    return 0


class _Outputs(NamedTuple):
    """Every file a run may write, each checked before the work starts (None = not asked for)."""

    labelmap: Optional[Path]
    dicom_seg: Optional[Path]
    measure: Optional[Path]
    uncertainty: Optional[Path]


def _checked_outputs(args: argparse.Namespace) -> _Outputs:
    from tumorseg_core.imaging.io import check_output_path

    labelmap, dicom_seg = None, args.dicom_seg
    if str(args.output).lower().endswith(".dcm"):
        if dicom_seg is not None:
            raise InputError("-o is already a DICOM SEG (.dcm); drop --dicom-seg or give -o a label map file")
        dicom_seg = args.output
    else:
        labelmap = check_output_path(args.output)
    if dicom_seg is not None:
        from tumorseg_core.dicom.seg_write import check_seg_output_path

        if not Path(args.images[0]).is_dir():
            raise InputError(f"a DICOM SEG references a DICOM series, but the first input {args.images[0]} is not "
                             "a DICOM folder; give the series folder or write a label map (.seg.nrrd)")
        dicom_seg = check_seg_output_path(dicom_seg)
    measure = None
    if args.measure is not None:
        from tumorseg_core.measurement.table import check_table_path

        check_table_path(args.measure)
        measure = Path(args.measure)
    uncertainty = None
    if args.uncertainty is not None:
        from tumorseg_core.inference.uncertainty import check_uncertainty_path

        uncertainty = check_uncertainty_path(args.uncertainty, labelmap)
    return _Outputs(labelmap, dicom_seg, measure, uncertainty)


def _with_model(args: argparse.Namespace, options: Any, outputs: _Outputs, progress: Any) -> tuple:
    """Run the model; write the label map (and uncertainty map) when asked; returns (labels, segments, algorithm)."""
    from tumorseg_core.imaging.io import write_image
    from tumorseg_core.inference.segmenter import Segmenter

    segmenter = Segmenter.with_options(args.model or "default", options)
    if outputs.labelmap is not None:
        labels = segmenter.segment_to_file(args.images, outputs.labelmap, progress=progress,
                                           uncertainty_path=outputs.uncertainty)
    else:
        result = segmenter.segment(args.images, progress=progress, uncertainty=outputs.uncertainty is not None)
        labels = result
        if outputs.uncertainty is not None:
            labels, entropy = result
            write_image(entropy, outputs.uncertainty)
    manifest = segmenter.manifest
    return labels, list(manifest.segments), (f"TumorSeg {manifest.name}"[:64], str(manifest.version))


def _remove(paths: list) -> None:
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


def _seeded(images: list, seeds: list, background: list, output: Optional[Path]) -> tuple:
    """Grow a lesion from the clicks (no model), write it to ``output`` (if any); returns (labels, segments, algorithm)."""
    from tumorseg_core import __version__
    from tumorseg_core.imaging.io import read_image, write_labelmap
    from tumorseg_core.imaging.segments import SEEDED_TUMOR
    from tumorseg_core.interactive.seeds import segment_from_seeds

    if len(images) != 1:
        raise InputError("seeded segmentation without a model takes exactly one image; add --model to use several")
    result = segment_from_seeds(read_image(images[0]), seeds, background)
    if result.bounded:  # a real warning; the ordinary message is in the summary line (and at -v)
        logger.warning("%s", result.message)
    if output is not None:
        write_labelmap(result.labels, output, segments=[SEEDED_TUMOR])
    return result.labels, [SEEDED_TUMOR], ("TumorSeg seeded", __version__)
