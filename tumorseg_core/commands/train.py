"""Train a model on your data (or synthetic phantoms) and write a model package.

SOURCE is a JSON config file, a dataset folder (Decathlon dataset.json, images/ + labels/,
X_image/X_label files), a dataset.json, a CSV (image[,image2...],label) or synthetic:N.
Flags override the config. Without a GPU the sizes are CPU-sized (smaller patches, fewer
iterations and epochs; see each option's default). Within the first minute the run logs
its estimated time per epoch and in total, and warns when that exceeds --time-limit or
two hours on a CPU; when stderr is not a terminal it logs a progress line every
--log-every seconds and one per epoch instead of a bar. Checkpoints go to --workdir
(default OUT.work) every epoch and every --checkpoint-every minutes; Ctrl-C or SIGTERM
saves one and exits with 130 (Ctrl-C twice stops at once); running the same command
again resumes from the saved iteration. Multi-GPU/multi-node:
torchrun --nproc_per_node=N -m tumorseg_core train ...
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from tumorseg_core.errors import InputError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tumorseg_core.training.config import DEFAULT_CONFIG as D
    from tumorseg_core.training.config import MACHINE_DEFAULTS

    gpu, cpu = MACHINE_DEFAULTS["gpu"], MACHINE_DEFAULTS["cpu"]

    def sized(key: str) -> str:
        return f"(default: {gpu[key]} on a GPU, {cpu[key]} on a CPU)"

    def triple(values: list) -> str:
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    parser.add_argument("source", metavar="CONFIG_OR_DATASET",
                        help="JSON config, dataset folder, dataset.json, CSV file, or synthetic:N")
    parser.add_argument("-o", "--output", required=True, metavar="PACKAGE_DIR", help="model package folder to write")
    parser.add_argument("--data", metavar="DATASET",
                        help="training data (folder, CSV, dataset.json or synthetic:N) instead of the config's "
                             "(default: the config's)")
    parser.add_argument("--architecture", help=f"network from the registry (default: {D['architecture']})")
    parser.add_argument("--kwargs", metavar="JSON",
                        help='network kwargs, e.g. \'{"features": [16, 32, 64, 128]}\' (default: the network\'s own)')
    parser.add_argument("--epochs", type=int, help=f"epochs {sized('epochs')}")
    parser.add_argument("--iterations-per-epoch", type=int, metavar="N",
                        help=f"training steps per epoch {sized('iterations_per_epoch')}")
    parser.add_argument("--batch-size", type=int, help=f"patches per step {sized('batch_size')}")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help=f"voxels (default: {triple(gpu['patch_size'])} on a GPU, "
                             f"{triple(cpu['patch_size'])} on a CPU)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help=f"mm (default: {triple(D['spacing'])})")
    parser.add_argument("--lr", type=float, help="initial learning rate (default: 1e-3 adamw, 1e-2 sgd)")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), help=f"(default: {D['optimizer']})")
    parser.add_argument("--schedule", choices=("poly", "cosine"), help=f"(default: {D['schedule']})")
    parser.add_argument("--loss", choices=("dice", "focal", "dice_ce", "dice_focal"), help=f"(default: {D['loss']})")
    parser.add_argument("--val-fraction", type=float,
                        help=f"fraction of cases held out (random split) (default: {D['val_fraction']})")
    parser.add_argument("--val-data", metavar="DATASET",
                        help="separate validation set (folder, CSV, dataset.json or synthetic:N); all of SOURCE "
                             "trains (default: none, --val-fraction of SOURCE)")
    parser.add_argument("--folds", type=int, help="k-fold cross-validation: number of folds (default: none)")
    parser.add_argument("--fold", type=int, help=f"which fold to train (0..folds-1) (default: {D['fold']})")
    parser.add_argument("--seed", type=int, help=f"(default: {D['seed']})")
    parser.add_argument("--device", help=f"auto, cpu, cuda, cuda:N or mps (default: {D['device']})")
    parser.add_argument("--workdir", help="checkpoints, cache and logs (default: PACKAGE_DIR.work)")
    parser.add_argument("--num-workers", type=int, help=f"DataLoader worker processes (default: {D['num_workers']})")
    parser.add_argument("--name", help=f"package name (default: {D['name']})")
    parser.add_argument("--modality", nargs="+", metavar="NAME",
                        help="input modality, one per channel, e.g. CT (CT gets a CT window, others z-score) "
                             "(default: what the data says: a dataset.json's modality, the synthetic phantoms' "
                             "MRI/CT mix, else 'unspecified')")
    parser.add_argument("--val-every", type=int, metavar="N",
                        help=f"validate every N epochs; always the last (default: {D['val_every']})")
    parser.add_argument("--min-val-dice", type=float, metavar="DICE",
                        help="a package whose validation Dice is below this is marked \"not validated\" and "
                             f"segmenting with it warns (default: {D['min_val_dice']})")
    parser.add_argument("--time-limit", type=float, metavar="MINUTES",
                        help="stop after the last epoch that fits in MINUTES (validated, package written); "
                             "to resume, run again with --overwrite and more time (default: no limit)")
    parser.add_argument("--checkpoint-every", type=float, metavar="MINUTES",
                        help="a resumable checkpoint inside an epoch this often, besides one per epoch and one "
                             f"on Ctrl-C or SIGTERM (default: {D['checkpoint_minutes']:g})")
    parser.add_argument("--log-every", type=float, metavar="SECONDS",
                        help="a progress line (iteration, loss, time left) this often; 0 for epoch lines only "
                             f"(default: {D['log_every_seconds']:g})")
    parser.add_argument("--init-weights", metavar="MODEL",
                        help="fine-tune: start from a model package's weights: default, an installed name, "
                             "folder or zip (default: random initial weights)")
    parser.add_argument("--hard-negatives", type=float, metavar="FRACTION",
                        help="centre this share of the crops on the false positives that the --init-weights model "
                             "(or the config's hard_negatives.model) makes on the training cases (default: none)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_true", default=None,
                        help="require a checkpoint in --workdir (default: resume when there is one)")
    resume.add_argument("--no-resume", dest="resume", action="store_false",
                        help="refuse to continue an existing checkpoint (default: resume when there is one)")
    parser.add_argument("--amp", dest="amp", action="store_true", default=None,
                        help="mixed precision on CUDA (default: on)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="full precision (default: off)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PACKAGE_DIR (default: off)")


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
        "checkpoint_minutes": args.checkpoint_every,
        "log_every_seconds": args.log_every,
        "min_val_dice": args.min_val_dice,
        "modalities": args.modality,
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
            from tqdm.contrib.logging import logging_redirect_tqdm

            bar = tqdm(total=1000, file=sys.stderr, unit="‰", dynamic_ncols=True)
            redirect = logging_redirect_tqdm()  # log lines (the estimate) above the bar, not through it
            redirect.__enter__()

            def update(fraction: float, message: str) -> None:
                bar.n = int(round(1000 * min(1.0, max(0.0, fraction))))
                bar.set_description(message[:40], refresh=True)

            def close() -> None:
                redirect.__exit__(None, None, None)
                bar.close()

            return update, close
    from tumorseg_core.commands.progress import TerminalProgress

    bar = TerminalProgress()
    return bar, bar.close


def _training_lines() -> Callable[[], None]:
    """Show the training loggers' INFO lines (the time estimate, checkpoints and, when stderr is
    not a terminal, the progress and epoch lines that replace the bar) even without -v;
    returns the function that undoes it."""
    train_logger = logging.getLogger("tumorseg_core.training")
    previous = train_logger.level
    if train_logger.getEffectiveLevel() > logging.INFO:
        train_logger.setLevel(logging.INFO)
    return lambda: train_logger.setLevel(previous)


class StopOnSignal:
    """SIGINT and SIGTERM ask the training to stop at the next iteration (it saves a checkpoint);
    a second signal acts as usual (Ctrl-C twice: stop at once, nothing saved). Call it as the
    trainer's ``cancel``; :meth:`restore` puts the previous handlers back."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        logger.warning("%s: saving a checkpoint after this iteration (send it again to stop at once, "
                       "without one)", signal.Signals(signum).name)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def __call__(self) -> bool:
        return self.received is not None

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


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
    if sys.stderr.isatty() and args.log_every is None:
        config["log_every_seconds"] = 0  # the bar shows the progress
    progress, close = _progress_callback()
    restore_logging = _training_lines()
    stop = StopOnSignal()
    try:
        path = train(config, args.output, resume=args.resume, overwrite=args.overwrite,
                     command=command, progress=progress, cancel=stop)
    finally:
        stop.restore()
        close()
        restore_logging()
    if path is not None:
        logger.info("model package written to %s", path)
    return 0
