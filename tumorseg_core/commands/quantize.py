"""Add INT8 networks to a model package (static post-training quantization, checked against float32).

Example::

    tumorseg quantize default -o tumorseg-default-int8 --calibration synthetic:8 --max-dice-drop 0.02
    tumorseg segment scan.nii.gz -o labels.seg.nrrd --model tumorseg-default-int8

The activations are calibrated on preprocessed windows of the calibration cases
(``synthetic:N`` phantoms of the model's modality, or a dataset ``tumorseg train`` reads).
Every calibration case is then segmented with float32 and with INT8; when the Dice
of the two label maps falls more than ``--max-dice-drop`` below 1, the convolutions of
the two finest resolution stages (a U-Net's levels 0 and 1 and its output convolution) stay
in float32 and the check runs again, and if it still misses, nothing is
written. The new package holds every file of the old one plus one ``.int8.onnx`` graph per
network, listed and hashed in its manifest (section ``int8``). On the CPU,
``tumorseg segment``, the API, the worker and Slicer then run the INT8 networks by
themselves (``--precision fp32`` keeps float32); a GPU keeps float32.

A 2.5D model (e.g. ``tumorseg quantize realtime -o realtime-int8``) is quantized for slice
mode: calibrated on the tiles its slice mode runs, checked on whole phantoms segmented by
axial slices; the Live preview and ``segment_slice`` then run it in INT8 on the CPU.
"""

from __future__ import annotations

import argparse
import logging

from tumorseg_core.errors import InputError

logger = logging.getLogger(__name__)


# The engine's defaults (tumorseg_core.training.quantize; equal, tested): not imported here, so that
# building the parser stays cheap for every other command.
DEFAULT_CALIBRATION = "synthetic:8"
DEFAULT_MAX_DICE_DROP = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", metavar="PACKAGE",
                        help="the model package: 'default', an installed model name, a folder or a .zip")
    parser.add_argument("-o", "--output", required=True, metavar="PACKAGE_INT8",
                        help="folder of the new package (must not exist unless --overwrite)")
    parser.add_argument("--calibration", default=DEFAULT_CALIBRATION, metavar="DATA|synthetic:N",
                        help=f"calibration cases: a dataset (folder, dataset.json or CSV) or synthetic:N phantoms "
                             f"(default {DEFAULT_CALIBRATION})")
    parser.add_argument("--max-dice-drop", type=float, default=DEFAULT_MAX_DICE_DROP, metavar="F",
                        help="refuse when the Dice of the INT8 to the float32 labels (all calibration voxels) "
                             f"is below 1 - F (default {DEFAULT_MAX_DICE_DROP})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    from tumorseg_core.training.quantize import quantize_package

    if not 0.0 <= args.max_dice_drop <= 1.0:
        raise InputError(f"--max-dice-drop must be from 0 to 1, got {args.max_dice_drop}; e.g. 0.02")
    report = quantize_package(args.package, args.output, calibration=args.calibration,
                              max_dice_drop=args.max_dice_drop, overwrite=args.overwrite)
    kept = f"; kept in float32: {', '.join(report.float_nodes)}" if report.float_nodes else ""
    print(f"wrote {report.output}: INT8 vs float32 label Dice {report.dice_to_fp32:.4f} "
          f"(min {min(report.case_dice):.4f}) on {len(report.case_dice)} calibration case(s), "
          f"{report.windows} window(s), {report.backend}{kept}")
    return 0
