"""Train a model on your data (or synthetic phantoms) and write a model package.

SOURCE is a JSON config file, a dataset folder (Decathlon dataset.json, images/ + labels/,
X_image/X_label files), a dataset.json, a CSV (image[,image2...],label) or synthetic:N.
Flags override the config. Checkpoints go to --workdir (default OUT.work) every epoch;
running the same command again resumes. Multi-GPU/multi-node:
torchrun --nproc_per_node=N -m tumorseg_core train ...
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from tumorseg_core.errors import InputError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="CONFIG_OR_DATASET",
                        help="JSON config, dataset folder, dataset.json, CSV file, or synthetic:N")
    parser.add_argument("-o", "--output", required=True, metavar="PACKAGE_DIR", help="model package folder to write")
    parser.add_argument("--data", metavar="DATASET",
                        help="training data (folder, CSV, dataset.json or synthetic:N) instead of the config's")
    parser.add_argument("--architecture", help="network from the registry (default unet3d)")
    parser.add_argument("--kwargs", metavar="JSON", help='network kwargs, e.g. \'{"features": [16, 32, 64, 128]}\'')
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--iterations-per-epoch", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="voxels")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="mm")
    parser.add_argument("--lr", type=float, help="initial learning rate (default 1e-3 adamw, 1e-2 sgd)")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"))
    parser.add_argument("--schedule", choices=("poly", "cosine"))
    parser.add_argument("--loss", choices=("dice", "focal", "dice_ce", "dice_focal"))
    parser.add_argument("--val-fraction", type=float, help="fraction of cases held out (random split)")
    parser.add_argument("--val-data", metavar="DATASET",
                        help="separate validation set (folder, CSV, dataset.json or synthetic:N); all of SOURCE trains")
    parser.add_argument("--folds", type=int, help="k-fold cross-validation: number of folds")
    parser.add_argument("--fold", type=int, help="which fold to train (0..folds-1)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--workdir", help="checkpoints, cache and logs (default PACKAGE_DIR.work)")
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes (default 0)")
    parser.add_argument("--name", help="package name (default tumorseg-custom)")
    parser.add_argument("--val-every", type=int, metavar="N", help="validate every N epochs (default 1; always the last)")
    parser.add_argument("--time-limit", type=float, metavar="MINUTES",
                        help="stop after the last epoch that fits in MINUTES (validated, package written); "
                             "to resume, run again with --overwrite and more time")
    parser.add_argument("--init-weights", metavar="MODEL",
                        help="fine-tune: start from a model package's weights (default, an installed name, folder or zip)")
    parser.add_argument("--hard-negatives", type=float, metavar="FRACTION",
                        help="centre this share of the crops on the false positives that the --init-weights model "
                             "(or the config's hard_negatives.model) makes on the training cases")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_true", default=None,
                        help="require a checkpoint in --workdir (default: resume when there is one)")
    resume.add_argument("--no-resume", dest="resume", action="store_false",
                        help="refuse to continue an existing checkpoint")
    parser.add_argument("--amp", dest="amp", action="store_true", default=None, help="mixed precision on CUDA (default)")
    parser.add_argument("--no-amp", dest="amp", action="store_false")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PACKAGE_DIR")


def _source_config(source: str) -> dict[str, Any]:
    """The base config for the positional argument."""
    from tumorseg_core.training.config import load_config

    if source.startswith("synthetic:"):
        return {"data": source}
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".json" and path.name != "dataset.json":
        return load_config(path)
    if not path.exists():
        raise InputError(f"{source} not found; give a config .json, a dataset folder, a CSV or synthetic:N")
    return {"data": str(path.resolve())}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Config keys set on the command line (None = not given)."""
    kwargs = None
    if args.kwargs is not None:
        try:
            kwargs = json.loads(args.kwargs)
        except ValueError as exc:
            raise InputError(f"--kwargs is not valid JSON ({exc}); write e.g. '{{\"features\": [8, 16]}}'") from exc
        if not isinstance(kwargs, dict):
            raise InputError("--kwargs must be a JSON object, e.g. '{\"features\": [8, 16]}'")
    data = args.data
    if data is not None and not data.startswith("synthetic:"):
        data = str(Path(data).expanduser().resolve())
    return {
        "data": data,
        "architecture": args.architecture,
        "kwargs": kwargs,
        "epochs": args.epochs,
        "iterations_per_epoch": args.iterations_per_epoch,
        "batch_size": args.batch_size,
        "patch_size": list(args.patch_size) if args.patch_size else None,
        "spacing": list(args.spacing) if args.spacing else None,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "schedule": args.schedule,
        "loss": args.loss,
        "val_fraction": args.val_fraction,
        "val_data": args.val_data,
        "folds": args.folds,
        "fold": args.fold,
        "seed": args.seed,
        "device": args.device,
        "workdir": args.workdir,
        "num_workers": args.num_workers,
        "name": args.name,
        "amp": args.amp,
        "init_weights": args.init_weights,
        "val_every": args.val_every,
        "time_limit_minutes": args.time_limit,
        "hard_negatives": None if args.hard_negatives is None else {"fraction": args.hard_negatives},
    }


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's config: the source's, then the flags (``--hard-negatives`` keeps the config's mining model)."""
    from tumorseg_core.training.config import merge_config

    base = _source_config(args.source)
    overrides = overrides_from_args(args)
    if overrides["hard_negatives"] is not None and isinstance(base.get("hard_negatives"), dict):
        overrides["hard_negatives"] = {**base["hard_negatives"], **overrides["hard_negatives"]}
    return merge_config(base, overrides)


def _progress_callback() -> Any:
    """tqdm on a terminal when installed, else the engine's one-line terminal bar."""
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=1000, file=sys.stderr, unit="‰", dynamic_ncols=True)

            def update(fraction: float, message: str) -> None:
                bar.n = int(round(1000 * min(1.0, max(0.0, fraction))))
                bar.set_description(message[:40], refresh=True)

            return update, bar.close
    from tumorseg_core.commands.progress import TerminalProgress

    bar = TerminalProgress()
    return bar, bar.close


def _epoch_lines_when_piped() -> Any:
    """No bar is drawn when stderr is a file or a pipe (a background or cluster job), so its
    log shows the engine's per-epoch INFO lines instead; returns the function that undoes it."""
    train_logger = logging.getLogger("tumorseg_core.training.trainer")
    previous = train_logger.level
    if not sys.stderr.isatty() and train_logger.getEffectiveLevel() > logging.INFO:
        train_logger.setLevel(logging.INFO)
    return lambda: train_logger.setLevel(previous)


def command_line(args: argparse.Namespace) -> str:
    """The ``tumorseg train`` command that repeats this run (rebuilt from the parsed options)."""
    parts = ["tumorseg", "train", args.source, "-o", args.output]
    for key, value in vars(args).items():
        if key in ("source", "output", "command", "verbose") or key.startswith("_") or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key in ("resume", "amp"):
            parts.append(flag if value else f"--no-{key}")
        elif isinstance(value, bool):
            if value:
                parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from tumorseg_core.inference.devices import import_torch

    import_torch()  # training needs torch: this applies the --threads count to it
    from tumorseg_core.training.trainer import train

    config = config_from_args(args)
    command = command_line(args)
    progress, close = _progress_callback()
    restore_logging = _epoch_lines_when_piped()
    try:
        path = train(config, args.output, resume=args.resume, overwrite=args.overwrite,
                     command=command, progress=progress)
    finally:
        close()
        restore_logging()
    if path is not None:
        logger.info("model package written to %s", path)
    return 0
