"""Compare label maps with ground truth (Dice, HD95, surface Dice, lesions) and print a summary table.

It works in one of two modes.

Mode 1, label maps you already have: --pred and --truth, two files or two folders.
  tumorseg evaluate --pred result.seg.nrrd --truth truth.nii.gz [--lesions]
  tumorseg evaluate --pred preds/ --truth truths/ [--csv OUT.csv]
Two files are one case. In two folders, files are paired by name (case_01.nii.gz with
case_01.seg.nrrd). A prediction must be on its truth's grid; nothing is resampled.

Mode 2, a model on a labelled data set: --model and --data.
  tumorseg evaluate --model default --data DIR [--save-predictions DIR] [--device cpu]
The data folder holds imagesTr/ + labelsTr/ (or images/ + labels/); the model segments
every image that has a label map, and its results are scored as in mode 1.

Segments are named after a .seg.nrrd file's segment names (the truth's first), the
model's labels, or --labels; otherwise label_1, label_2, ... --lesions adds one line per
lesion: every true lesion with its volume, found or missed, and every false positive.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Optional

from tumorseg_core.commands.segment_options import FLAG_FIELDS, add_segment_options, segment_options
from tumorseg_core.errors import TumorSegError
from tumorseg_core.options import SegmentOptions

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", metavar="FILE|DIR",
                        help="mode 1: a predicted label map, or a folder of them (default: none)")
    parser.add_argument("--truth", metavar="FILE|DIR",
                        help="mode 1: the ground-truth label map, or a folder of them with the same file names "
                             "(default: none)")
    parser.add_argument("--model", metavar="PACKAGE",
                        help="mode 2: model name, package folder or .zip to run on --data (default: none)")
    parser.add_argument("--data", metavar="DIR",
                        help="mode 2: data folder with imagesTr/ + labelsTr/ or images/ + labels/ (default: none)")
    parser.add_argument("--lesions", action="store_true",
                        help="also print every lesion: each true lesion with its volume, found or missed, and the "
                             "false-positive lesions (default: off)")
    parser.add_argument("--csv", metavar="OUT.csv",
                        help="also write one row per case and label to this CSV (default: no CSV)")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)")
    parser.add_argument("--min-overlap", type=float, default=0.0,
                        help="fraction of a truth lesion that must be covered to count as found (default: any voxel)")
    parser.add_argument("--labels", metavar="JSON",
                        help='label names as JSON or a .json file, e.g. \'{"1": "Tumor", "2": "Edema"}\' '
                             "(default: every label found, named after the files' segments, or the model's "
                             "labels)")
    parser.add_argument("--save-predictions", metavar="DIR",
                        help="mode 2: write each prediction here as <case>.nii.gz (default: not written)")
    add_segment_options(parser, "with --model")


def parse_labels(text: Optional[str]) -> Optional[dict[int, str]]:
    """``'{"1": "Tumor"}'`` or a path to such a JSON file -> ``{1: "Tumor"}``; None stays None."""
    if text is None:
        return None
    source = text
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise TumorSegError(f"--labels '{text}' is neither JSON nor an existing .json file; "
                                'write it as \'{"1": "Tumor"}\'')
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TumorSegError(f"could not read --labels file {path} ({exc.strerror}); check the path") from exc
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise TumorSegError(f"--labels is not valid JSON ({exc.msg}); write it as '{{\"1\": \"Tumor\"}}'") from None
    if not isinstance(data, dict) or not data:
        raise TumorSegError('--labels must be a JSON object mapping label values to names, e.g. {"1": "Tumor"}')
    labels: dict[int, str] = {}
    for key, name in data.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            value = -1
        if value <= 0 or not isinstance(name, str) or not name:
            raise TumorSegError(f"--labels entry {key!r}: {name!r} is not a positive label value with a name; "
                                'write e.g. {"1": "Tumor"}')
        labels[value] = name
    return labels


# Flags whose argparse destination is not their name on the command line.
_FLAG_SHOWN = {"postprocess": "--no-postprocess", "cascade": "--cascade/--no-cascade"}


def _check_args(args: argparse.Namespace) -> str:
    """'folders' or 'model', after checking the option combination and numbers."""
    folders = args.pred is not None or args.truth is not None
    model = args.model is not None or args.data is not None
    if folders and model:
        raise TumorSegError("give either --pred/--truth or --model/--data, not both")
    if folders and (args.pred is None or args.truth is None):
        raise TumorSegError("--pred and --truth go together; give both (two files or two folders)")
    if model and (args.model is None or args.data is None):
        raise TumorSegError("--model and --data go together; give both")
    if not folders and not model:
        raise TumorSegError("nothing to evaluate; give --pred and --truth (two files or two folders), "
                            "or --model PACKAGE --data DIR")
    defaults = SegmentOptions()
    given = [("--save-predictions", args.save_predictions is not None)] + [
        (_FLAG_SHOWN.get(dest, f"--{dest.replace('_', '-')}"), getattr(args, dest) != getattr(defaults, field))
        for dest, field in FLAG_FIELDS.items()]
    for flag, was_given in given:
        if was_given and not model:
            raise TumorSegError(f"{flag} needs --model and --data")
    if not math.isfinite(args.tolerance_mm) or args.tolerance_mm < 0:
        raise TumorSegError(f"--tolerance-mm must be a number >= 0, got {args.tolerance_mm}")
    if not 0.0 <= args.min_overlap <= 1.0:
        raise TumorSegError(f"--min-overlap must be between 0 and 1, got {args.min_overlap}")
    if args.csv:
        parent = Path(args.csv).parent
        if not parent.is_dir():
            raise TumorSegError(f"CSV folder '{parent}' does not exist; create it first")
    return "folders" if folders else "model"


def run(args: argparse.Namespace) -> int:
    from tumorseg_core.commands.progress import TerminalProgress
    from tumorseg_core.evaluation.evaluate import (
        evaluate_folders,
        evaluate_model,
        format_lesion_table,
        format_table,
        summarize,
        write_csv,
    )

    mode = _check_args(args)
    labels = parse_labels(args.labels)
    lesions: Optional[list] = [] if args.lesions else None
    progress = TerminalProgress()
    try:
        if mode == "folders":
            rows = evaluate_folders(args.pred, args.truth, labels=labels, tolerance_mm=args.tolerance_mm,
                                    min_overlap=args.min_overlap, progress=progress, lesion_rows=lesions)
        else:
            options = segment_options(args).to_dict()
            rows = evaluate_model(args.model, args.data, labels=labels, tolerance_mm=args.tolerance_mm,
                                  min_overlap=args.min_overlap, device=options.pop("device"),
                                  save_dir=args.save_predictions, progress=progress, lesion_rows=lesions,
                                  **options)
    finally:
        progress.close()
    if args.csv:
        write_csv(rows, args.csv)
    cases = len({row["case"] for row in rows})
    sys.stdout.write(f"{cases} case(s), surface Dice tolerance {args.tolerance_mm:g} mm\n")
    sys.stdout.write(format_table(summarize(rows)) + "\n")
    if lesions is not None:
        sys.stdout.write("\n" + format_lesion_table(lesions) + "\n")
    return 0
