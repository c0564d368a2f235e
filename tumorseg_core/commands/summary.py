"""The one line a command prints when its segmentation is written: where, how many lesions, how much, how long."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional, TextIO, Union

if TYPE_CHECKING:  # SimpleITK and numpy are imported when a summary is made, not when the CLI starts
    import SimpleITK as sitk

PathLike = Union[str, "os.PathLike[str]"]


def lesions_and_volume(labels: sitk.Image) -> tuple[int, float]:
    """(lesions, total volume in mL) of a label map: every non-zero voxel counts.

    Lesions are the 26-connected components of the non-zero voxels, whatever their
    labels (an enhancing core inside its edema is one lesion), as the evaluation counts
    them (:func:`tumorseg_core.evaluation.metrics.lesion_count`). The volume is the
    non-zero voxel count times the voxel volume (``labels``' spacing, mm³) / 1000.
    """
    import numpy as np
    import SimpleITK as sitk

    from tumorseg_core.evaluation.metrics import lesion_count

    mask = sitk.GetArrayViewFromImage(labels) != 0  # (z, y, x)
    volume_ml = float(np.count_nonzero(mask)) * float(np.prod(labels.GetSpacing())) / 1000.0
    return lesion_count(mask), volume_ml


def summary_line(labels: sitk.Image, outputs: Sequence[PathLike], elapsed_s: float) -> str:
    """``"2 lesions, 14.31 mL in total -> out.seg.nrrd (12.3 s)"``; several outputs are joined by ``", "``."""
    lesions, volume_ml = lesions_and_volume(labels)
    noun = "lesion" if lesions == 1 else "lesions"
    where = ", ".join(os.fspath(o) for o in outputs)
    return f"{lesions} {noun}, {volume_ml:.2f} mL in total -> {where} ({elapsed_s:.1f} s)"


def print_summary(labels: sitk.Image, outputs: Sequence[PathLike], elapsed_s: float,
                  quiet: bool = False, stream: Optional[TextIO] = None) -> None:
    """Write :func:`summary_line` on ``stream`` (default stderr), on a terminal or piped alike; nothing if ``quiet``."""
    if quiet:
        return
    out = stream if stream is not None else sys.stderr
    out.write(summary_line(labels, outputs, elapsed_s) + "\n")
    out.flush()


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet``: no progress bar and no summary line (errors are still printed)."""
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print neither the progress bar nor the summary line; errors are still printed "
                             "(default: off)")
