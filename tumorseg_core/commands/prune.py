"""Make a smaller, faster model: structured channel pruning with a short fine-tune.

Keeps the fraction --keep of the output channels of every convolution of a unet3d model
package (--criterion taylor, the default: the channels that most move the lesion-vs-background
logits on a few patches of --data, and always the head's lesion-voting channels; l1: the
filters of largest L1 norm), rebuilds the network with the smaller channel counts,
fine-tunes it briefly (by default distilling from the parent: labels' loss + W x KL to the
parent's output; --distill-weight 0: the training loop of tumorseg train, which resumes
from its checkpoints) and writes an ordinary verified model package with the smaller
kwargs; its README names the keep ratio, the criterion and the parent model. Data cache
and checkpoints go to --workdir (default OUT.work). Example::

    tumorseg prune default -o default-pruned50 --keep 0.5 --fine-tune-iterations 100
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from tumorseg_core.errors import InputError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tumorseg_core.training.distill import DEFAULT_DISTILL_WEIGHT, DEFAULT_TEMPERATURE
    from tumorseg_core.training.prune import (
        CRITERIA,
        DEFAULT_CRITERION,
        DEFAULT_FINE_TUNE_DATA,
        DEFAULT_FINE_TUNE_ITERATIONS,
        DEFAULT_IMPORTANCE_WINDOWS,
    )

    parser.add_argument("package", metavar="PACKAGE",
                        help="model package to prune: default, an installed name, a folder or a .zip")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="model package folder to write")
    parser.add_argument("--keep", type=float, required=True, metavar="FRACTION",
                        help="fraction of each convolution's output channels kept, in (0, 1], e.g. 0.5")
    parser.add_argument("--criterion", choices=CRITERIA, default=DEFAULT_CRITERION,
                        help="which channels stay: taylor ranks them by their effect on the lesion-vs-background "
                             "logits on a few --data patches and keeps the head's lesion-voting channels; l1 by "
                             f"filter norm, no data (default: {DEFAULT_CRITERION})")
    parser.add_argument("--importance-windows", type=int, default=DEFAULT_IMPORTANCE_WINDOWS, metavar="N",
                        help=f"patches with lesions the taylor criterion sums over (default: {DEFAULT_IMPORTANCE_WINDOWS})")
    parser.add_argument("--distill-weight", type=float, default=DEFAULT_DISTILL_WEIGHT, metavar="W",
                        help="fine-tune loss = labels' loss + W x KL to the parent's output; 0: labels only, "
                             f"with the resumable tumorseg train loop (default: {DEFAULT_DISTILL_WEIGHT:g})")
    parser.add_argument("--distill-temperature", type=float, default=DEFAULT_TEMPERATURE, metavar="T",
                        help=f"softmax temperature of the distillation (default: {DEFAULT_TEMPERATURE:g})")
    parser.add_argument("--fine-tune-iterations", type=int, default=DEFAULT_FINE_TUNE_ITERATIONS, metavar="N",
                        help="training steps after pruning; 0 for none "
                             f"(default: {DEFAULT_FINE_TUNE_ITERATIONS})")
    parser.add_argument("--data", default=DEFAULT_FINE_TUNE_DATA, metavar="DATA",
                        help="fine-tune data: synthetic:N, a dataset folder, CSV or dataset.json "
                             f"(default: {DEFAULT_FINE_TUNE_DATA})")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="patches per step (default: the parent's training batch, else 2)")
    parser.add_argument("--lr", type=float, metavar="RATE",
                        help="fine-tune learning rate (default: the parent's training lr, else 1e-4)")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="fine-tune crop size in voxels; smaller trains faster on a CPU, the package keeps "
                             "the parent's window (default: the parent's window)")
    parser.add_argument("--workdir", help="checkpoints and cache of the fine-tune (default: OUT.work)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT (default: off)")


def _data(value: str) -> str:
    if value.startswith("synthetic:"):
        count = value.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--data {value!r}: write synthetic:N with N a positive number, e.g. synthetic:16")
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise InputError(f"--data {value} not found; give synthetic:N, a dataset folder, a CSV or a dataset.json")
    return str(path.resolve())


def run(args: argparse.Namespace) -> int:
    from tumorseg_core.commands.train import StopOnSignal, _progress_callback, _training_lines
    from tumorseg_core.inference.devices import configure_threads, import_torch
    from tumorseg_core.training.distill import check_distill
    from tumorseg_core.training.prune import check_keep, prune_package

    keep = check_keep(args.keep)
    if args.fine_tune_iterations < 0:
        raise InputError(f"--fine-tune-iterations must be 0 or more, got {args.fine_tune_iterations}")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.patch_size is not None and min(args.patch_size) < 1:
        raise InputError(f"--patch-size must be positive voxel counts, got {args.patch_size}")
    if args.importance_windows < 1:
        raise InputError(f"--importance-windows must be at least 1, got {args.importance_windows}")
    check_distill(args.distill_weight, args.distill_temperature)
    data = _data(args.data)
    configure_threads(getattr(args, "threads", None))
    import_torch()
    overrides: dict = {}
    words = ["tumorseg", "prune", args.package, "-o", args.output, "--keep", f"{keep:g}",
             "--fine-tune-iterations", str(args.fine_tune_iterations), "--data", args.data,
             "--criterion", args.criterion, "--importance-windows", str(args.importance_windows),
             "--distill-weight", f"{args.distill_weight:g}", "--distill-temperature", f"{args.distill_temperature:g}"]
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
        words += ["--batch-size", str(args.batch_size)]
    if args.lr is not None:
        if not args.lr > 0:
            raise InputError(f"--lr must be positive, got {args.lr}")
        overrides["lr"] = args.lr
        words += ["--lr", f"{args.lr:g}"]
    if args.patch_size:
        overrides["patch_size"] = list(args.patch_size)
        words += ["--patch-size", *(str(p) for p in args.patch_size)]
    command = shlex.join(words)
    progress, close = _progress_callback()
    restore_logging = _training_lines()
    stop = StopOnSignal()
    try:
        path = prune_package(args.package, args.output, keep, fine_tune_iterations=args.fine_tune_iterations,
                             data=data, criterion=args.criterion, importance_windows=args.importance_windows,
                             distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
                             overwrite=args.overwrite, workdir=args.workdir,
                             config_overrides=overrides or None, command=command, progress=progress, cancel=stop)
    finally:
        stop.restore()
        close()
        restore_logging()
    sys.stdout.write(f"{path}\n")  # the command's result, for scripts: the package path
    return 0
