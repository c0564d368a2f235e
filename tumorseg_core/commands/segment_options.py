"""The command-line face of SegmentOptions (tumorseg_core/options.py).

Every command that runs a model (segment, demo, evaluate) adds these flags with
add_segment_options and turns them back into one validated SegmentOptions with
segment_options; the choices come from tumorseg_core.options, so the CLI offers exactly
what the API, the worker and Slicer offer.
"""

from __future__ import annotations

import argparse
from typing import Any

from tumorseg_core.errors import TumorSegError
from tumorseg_core.options import (
    BACKENDS,
    DEVICES,
    PRECISIONS,
    QUALITIES,
    QUALITY_LABELS,
    SegmentOptions,
    check_device,
)

#: argparse destination -> SegmentOptions field, for the flags added here.
FLAG_FIELDS = {
    "device": "device", "backend": "backend", "quality": "quality", "overlap": "overlap", "tta": "tta",
    "precision": "precision",
    "window_batch": "window_batch", "postprocess": "postprocess", "cascade": "cascade",
    "skip_background": "skip_background",
}


def _device(text: str) -> str:
    try:
        return check_device(text)
    except TumorSegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_segment_options(parser: argparse.ArgumentParser, what: str = "") -> None:
    """Add ``--device --backend --quality --overlap --tta --window-batch --no-postprocess --cascade``."""
    prefix = f"{what}: " if what else ""
    parser.add_argument("--device", default="auto", type=_device, metavar="{" + ",".join(DEVICES) + ",cuda:N}",
                        help=f"{prefix}where the network runs (default auto: a GPU when there is one)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help=f"{prefix}inference engine (default auto: openvino > onnxruntime > torch on the CPU)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help=f"{prefix}network arithmetic (default auto: the model's INT8 network on the CPU "
                             "when it has one, from 'tumorseg quantize'; else float32)")
    parser.add_argument("--quality", default="normal", choices=QUALITIES,
                        help=prefix + "; ".join(f"{q}: {QUALITY_LABELS[q]}" for q in QUALITIES) + " (default normal)")
    parser.add_argument("--overlap", type=float, default=None,
                        help=f"{prefix}sliding-window overlap in [0, 1) (default: the model's own)")
    parser.add_argument("--tta", action="store_true", default=None,
                        help=f"{prefix}flip test-time augmentation, slower and a bit more robust "
                             "(default: off; on with --quality tta)")
    parser.add_argument("--window-batch", type=int, default=None, help=f"{prefix}windows per network call, 1..256 (default: the model's own)")
    parser.add_argument("--no-postprocess", dest="postprocess", action="store_false", default=True,
                        help=f"{prefix}skip the model's postprocessing rules (default: apply them)")
    parser.add_argument("--cascade", action=argparse.BooleanOptionalAction, default=None,
                        help=f"{prefix}coarse pass first, full resolution only around candidates "
                             "(--no-cascade: every window; default: the model's default)")
    parser.add_argument("--no-skip-background", dest="skip_background", action="store_false", default=True,
                        help=f"{prefix}run every window, also those wholly outside the body (default: skip them; "
                             "they count as background)")


def segment_options(args: argparse.Namespace, **extra: Any) -> SegmentOptions:
    """The validated options the flags of :func:`add_segment_options` (and ``extra``) describe."""
    values = {field: getattr(args, dest) for dest, field in FLAG_FIELDS.items()}
    return SegmentOptions.from_mapping({**values, **extra})
