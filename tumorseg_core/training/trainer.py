"""Train a segmentation network and write a model package: ``tumorseg train``.

:func:`train` runs the whole job: resolve the data, preprocess it once into a cache,
train with augmented foreground-oversampled patches, validate every epoch with
sliding-window inference (mean foreground Dice), checkpoint every epoch (pickle-free,
see :mod:`tumorseg_core.training.checkpoint`) and, inside an epoch, every
``checkpoint_minutes`` and when ``cancel`` says stop (Ctrl-C / SIGTERM in the CLI), and
write a package
:func:`tumorseg_core.modelpkg.package.open_package` loads. The same function runs under
``torchrun`` (DistributedDataParallel; see :mod:`tumorseg_core.training.distributed`).

Work directory (``config["workdir"]``, default ``<out_dir>.work``)::

    cache/            preprocessed cases (.npy) and generated phantoms
    last.safetensors  best.safetensors  last.state.safetensors  last.state.json  state.json
    log.csv           epoch,train_loss,val_dice,lr,seconds
    tensorboard/      event files when tensorboard is installed

A checkpoint inside an epoch has ``state.json`` ``"iteration"`` (iterations done of epoch
``"epoch"`` + 1) and ``"partial"`` (that epoch's losses so far); resuming skips those
iterations' samples (a sample depends only on (seed, epoch, index)) and restores the
optimizer, scheduler and RNG states, so the run continues as if never stopped. The time
estimate and the progress lines come from :mod:`tumorseg_core.training.eta`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tumorseg_core.errors import CancelledError, InputError
from tumorseg_core.training import checkpoint as ckpt
from tumorseg_core.training import distributed as dist_utils
from tumorseg_core.training.config import apply_machine_defaults, check_config, config_hash, merge_config
from tumorseg_core.training.eta import TrainingClock, checkpoint_due
from tumorseg_core.training.outputs import (
    TensorBoardLog,
    build_manifest,
    config_bytes,
    readme_text,
    write_log_csv,
)
from tumorseg_core.training.setup import RunData, open_init_weights, prepare_data

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


def seed_everything(seed: int) -> None:
    """Seed torch, numpy, ``random`` and MONAI (``set_determinism``)."""
    from monai.utils import set_determinism

    seed = int(seed) % (2**32)
    set_determinism(seed=seed)  # also seeds torch/numpy/random and disables cuDNN autotune
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


def build_optimizer(config: dict[str, Any], params: Any) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum 0.99 (nnU-Net)."""
    if config["optimizer"] == "sgd":
        lr = config["lr"] or 1e-2
        return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=config["weight_decay"])
    return torch.optim.AdamW(params, lr=config["lr"] or 1e-3, weight_decay=config["weight_decay"])


def build_scheduler(config: dict[str, Any], optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration ``poly`` ((1 - t)^0.9) or ``cosine`` decay over the whole run."""
    total = max(1, config["epochs"] * config["iterations_per_epoch"])
    if config["schedule"] == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    else:
        def factor(step: int) -> float:
            return max(0.0, 1.0 - min(step, total) / total) ** 0.9
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _resolve_device(config: dict[str, Any], info: dist_utils.DistInfo) -> torch.device:
    from tumorseg_core.inference.devices import resolve_device

    device = resolve_device(config["device"])
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def epochs_that_fit(limit_minutes: float | None, elapsed_s: float, longest_epoch_s: float) -> float:
    """How many more epochs of ``longest_epoch_s`` end inside the time limit (``inf`` without a
    limit or without a measured epoch)."""
    if limit_minutes is None or longest_epoch_s <= 0:
        return math.inf
    return max(0.0, math.floor((60.0 * float(limit_minutes) - elapsed_s) / longest_epoch_s))


def _restore(workdir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
             config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the last checkpoint into the objects; return (``state.json``, the saved RNG states).

    The RNG states are set here too; a checkpoint inside an epoch sets them again once the
    epoch's data loader exists (see :func:`_train_epoch`)."""
    weights, training_state, state = ckpt.load_checkpoint(workdir)
    # Checkpoints written before init_weights_sha256 existed hashed without it.
    accepted = {config_hash(config), config_hash({**config, "init_weights_sha256": None})}
    if state.get("config_hash") not in accepted:
        raise InputError(
            f"{workdir} holds a checkpoint of a different training configuration; use another --workdir or delete it"
        )
    model.load_state_dict(weights)
    optimizer.load_state_dict(training_state["optimizer"])
    scheduler.load_state_dict(training_state["scheduler"])
    if training_state.get("scaler"):
        scaler.load_state_dict(training_state["scaler"])
    ckpt.set_rng_state(training_state["rng"])
    if state.get("iteration"):
        logger.info("resuming from %s at epoch %d, iteration %d of %d", workdir, state["epoch"] + 1,
                    state["iteration"], config["iterations_per_epoch"])
    else:
        logger.info("resuming from %s after epoch %d", workdir, state["epoch"])
    return state, training_state["rng"]


def _initialize_from_package(model: torch.nn.Module, spec: str, pinned: str | None = None) -> None:
    """Fine-tuning: start from the (first) weights of a verified model package.

    The package goes through the same sha256 and strict-safetensors checks as for
    inference; its architecture must produce exactly the model's keys and shapes.
    """
    from tumorseg_core.modelpkg.package import load_state_dict_strict

    package = open_init_weights(spec, pinned)
    source = package.load_networks("cpu")[0]
    load_state_dict_strict(model, source.state_dict(), f"init_weights {spec!r}")
    logger.info("initialized the network from %s (%s %s)", spec, package.manifest.name, package.manifest.version)


def centre_crop_like(label: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``label`` (B, 1, z, y, x) cut to the spatial size of ``logits`` (B, K, z', y', x'), centred.

    A network may predict fewer slices than it was given in training (the 2.5D network
    predicts only the slices whose neighbours are all real); its output is scored on the
    label's centre. Returns ``label`` itself when the sizes agree."""
    if label.shape[2:] == logits.shape[2:]:
        return label
    if any(n > m or (m - n) % 2 for n, m in zip(logits.shape[2:], label.shape[2:])):
        raise ValueError(f"network output {tuple(logits.shape[2:])} cannot be centred in the label "
                         f"{tuple(label.shape[2:])}")
    cut = [slice(None), slice(None)] + [slice((m - n) // 2, (m + n) // 2)
                                        for n, m in zip(logits.shape[2:], label.shape[2:])]
    return label[tuple(cut)]


class Interrupted(Exception):
    """Raised inside :func:`_train_epoch` when ``cancel`` says stop (the caller checkpoints)."""


@dataclass
class EpochProgress:
    """Where the current epoch stands: iterations done, their losses, seconds spent waiting for data."""

    iteration: int = 0
    losses: list[float] = field(default_factory=list)
    waited: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "waited": self.waited}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "EpochProgress":
        partial = state.get("partial") or {}
        return cls(int(state.get("iteration") or 0), [float(v) for v in partial.get("losses", [])],
                   float(partial.get("waited", 0.0)))


def _train_epoch(run: RunData, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                 loss_fn: Any, epoch: int, device: torch.device, info: dist_utils.DistInfo,
                 progress: Progress | None, cancel: Callable[[], bool] | None, done: EpochProgress,
                 clock: TrainingClock | None, checkpoint: Callable[[EpochProgress], None],
                 rng: dict[str, Any] | None = None) -> tuple[float, float]:
    """The rest of one epoch of ``iterations_per_epoch`` steps, from iteration ``done.iteration``.

    ``done`` is updated after every step; ``checkpoint(done)`` is called (on every rank) when
    ``checkpoint_minutes`` have passed. ``rng``: RNG states to set once the loader exists
    (resuming inside the epoch). Raises :class:`Interrupted` when ``cancel`` says stop.
    Returns (mean loss over ranks, seconds spent waiting for data).
    """
    from torch.utils.data import DataLoader

    config = run.config
    n_iter = config["iterations_per_epoch"]
    batch = config["batch_size"]
    run.patches.set_epoch(epoch)
    # Sample i of the epoch is fixed by (seed, epoch, i): skipping the batches already
    # done is all resuming inside an epoch needs. Rank r takes r, r + world, ... (as a
    # DistributedSampler without shuffling would).
    indices = list(range(info.rank if info.enabled else 0, len(run.patches), info.world_size))
    loader = DataLoader(run.patches, batch_size=batch, sampler=indices[done.iteration * batch:], shuffle=False,
                        num_workers=config["num_workers"], drop_last=True,
                        pin_memory=device.type == "cuda")
    batches = iter(loader)  # draws the loader's base seed from torch's generator
    if rng is not None:
        ckpt.set_rng_state(rng)
    use_amp = bool(config["amp"]) and device.type == "cuda"
    model.train()
    if clock is not None:
        clock.start_epoch()
    last_checkpoint = time.perf_counter()
    fetch_started = time.perf_counter()
    for batch_data in batches:
        waited = time.perf_counter() - fetch_started
        if _agree(info, cancel is not None and cancel(), device):
            raise Interrupted()
        done.waited += waited
        image = batch_data["image"].to(device, non_blocking=True)
        label = batch_data["label"].to(device, non_blocking=True).round().long()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            logits = model(image)
            loss = loss_fn(logits, centre_crop_like(label, logits))
        scaler.scale(loss).backward()
        if config["grad_clip"]:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(config["grad_clip"]))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        done.losses.append(float(loss.detach()))
        done.iteration += 1
        mean_loss = float(np.mean(done.losses))
        if info.is_main:
            if progress is not None:
                progress((epoch + done.iteration / n_iter) / config["epochs"],
                         f"epoch {epoch + 1}/{config['epochs']} loss {mean_loss:.4f}")
            if clock is not None:
                clock.iteration_done(epoch, done.iteration, mean_loss)
        if done.iteration < n_iter and _agree(
                info, checkpoint_due(last_checkpoint, config["checkpoint_minutes"], time.perf_counter()), device):
            checkpoint(done)
            last_checkpoint = time.perf_counter()
        fetch_started = time.perf_counter()
    return dist_utils.all_reduce_mean(info, float(np.mean(done.losses)), device), done.waited


def _agree(info: dist_utils.DistInfo, flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (one all-reduce under DDP)."""
    if not info.enabled:
        return flag
    return dist_utils.all_reduce_mean(info, 1.0 if flag else 0.0, device) > 0


def _validate(run: RunData, model: torch.nn.Module, device: torch.device,
              cancel: Callable[[], bool] | None) -> dict[str, Any]:
    from tumorseg_core.training.validation import validate

    config = run.config
    return validate(
        model, run.val_cases, run.patch_zyx, [lab["value"] for lab in config["output"]["labels"]], device,
        overlap=config["val_overlap"], sw_batch=config["val_sw_batch"],
        amp=bool(config["amp"]), cancel=cancel,
    )


def train(
    config: dict[str, Any],
    out_dir: Path | str,
    *,
    resume: bool | None = None,
    overwrite: bool = False,
    command: str | None = None,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Path | None:
    """Train per ``config`` (see :data:`tumorseg_core.training.config.DEFAULT_CONFIG`) and write a package.

    Args:
        config: training settings; missing keys take the defaults.
        out_dir: the model package folder to write.
        resume: True to require a checkpoint in the work directory, False to refuse to
            reuse one, None (default) to resume when one exists.
        overwrite: replace an existing ``out_dir``.
        command: the command line recorded in the package README.
        progress: ``(fraction, message)`` callback (rank 0 only).
        cancel: returns True to stop (checked before every iteration and during validation):
            a resumable checkpoint at the current iteration is saved, then
            :class:`CancelledError` is raised with a message saying how to resume.

    Returns:
        The package path on rank 0, None on the other ranks.
    """
    from tumorseg_core.modelpkg.package import write_package
    from tumorseg_core.models.registry import build_network
    from tumorseg_core.training.losses import build_loss

    run_started = time.perf_counter()
    config = merge_config(config, {})
    check_config(config)
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir} already exists; choose another -o folder or pass --overwrite")
    workdir = Path(config["workdir"] or f"{out_dir}.work").expanduser().resolve()
    info = dist_utils.init_distributed(str(config["device"]))
    try:
        if resume is True and not ckpt.has_checkpoint(workdir):
            raise InputError(f"--resume was given but {workdir} has no checkpoint; drop --resume or fix --workdir")
        if resume is False and ckpt.has_checkpoint(workdir):
            raise InputError(f"{workdir} already holds a checkpoint; resume it (default) or use another --workdir")
        device = _resolve_device(config, info)
        config = apply_machine_defaults(config, device.type)
        check_config(config)
        seed_everything(config["seed"])
        run = prepare_data(config, workdir, info, progress, device=str(device))
        config = run.config

        torch.manual_seed(config["seed"])  # same initial weights on every rank
        model = build_network(config["architecture"], run.kwargs).to(device)
        optimizer = build_optimizer(config, model.parameters())
        scheduler = build_scheduler(config, optimizer)
        scaler = torch.amp.GradScaler(device.type, enabled=bool(config["amp"]) and device.type == "cuda")
        loss_fn = build_loss(config["loss"], "softmax", config["class_weights"], **config["loss_options"])
        state: dict[str, Any] = {"epoch": 0, "best_dice": None, "best_epoch": None, "history": [],
                                 "config_hash": config_hash(config)}
        resume_rng = None
        if ckpt.has_checkpoint(workdir):
            state, resume_rng = _restore(workdir, model, optimizer, scheduler, scaler, config)
        elif config["init_weights"]:
            _initialize_from_package(model, str(config["init_weights"]), config["init_weights_sha256"])
        net = model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        tb = TensorBoardLog(workdir / "tensorboard") if info.is_main else None
        longest_train = longest_val = 0.0  # seconds, for the time limit
        clock = (TrainingClock(config["epochs"], config["iterations_per_epoch"], device.type,
                               config["time_limit_minutes"], config["log_every_seconds"]) if info.is_main else None)
        try:
            for epoch in range(state["epoch"], config["epochs"]):
                # Reseeding per (epoch, rank) makes an epoch independent of what came
                # before it, so a resumed run repeats an uninterrupted one exactly.
                epoch_seed = _epoch_seed(config["seed"], epoch, info.rank)
                torch.manual_seed(epoch_seed)
                np.random.seed(epoch_seed)
                random.seed(epoch_seed)
                started = time.perf_counter()
                inside = epoch == state["epoch"] and "iteration" in state  # a checkpoint inside this epoch
                done = EpochProgress.from_state(state) if inside else EpochProgress()
                earlier_s = float((state.get("partial") or {}).get("seconds", 0.0)) if inside else 0.0

                def save_inside(progress_now: EpochProgress, epoch: int = epoch, started: float = started,
                                earlier_s: float = earlier_s) -> None:
                    partial = {**progress_now.to_dict(), "seconds": earlier_s + time.perf_counter() - started}
                    _save_inside_epoch(workdir, model, optimizer, scheduler, scaler, state, epoch,
                                       progress_now.iteration, partial, info)

                try:
                    train_loss, waited = _train_epoch(run, net, optimizer, scheduler, scaler, loss_fn, epoch, device,
                                                      info, progress, cancel, done, clock, save_inside,
                                                      rng=resume_rng if inside else None)
                except Interrupted:
                    save_inside(done)
                    raise CancelledError(_stopped_message(workdir, epoch, done.iteration, config)) from None
                longest_train = max(longest_train, time.perf_counter() - started)
                # Decided after training, before validating: the last epoch that fits is
                # always validated (its weights may become the package's).
                last = _is_last_in_time(config, info, device, time.perf_counter() - run_started,
                                        longest_train, longest_val)
                if info.is_main:
                    val_started = time.perf_counter()
                    validate = run.val_cases and ((epoch + 1) % config["val_every"] == 0
                                                  or epoch + 1 == config["epochs"] or last)
                    try:
                        val = _validate(run, model, device, cancel) if validate else {"dice": float("nan")}
                    except CancelledError:  # every iteration of the epoch is done: keep them
                        save_inside(done)
                        raise CancelledError(_stopped_message(workdir, epoch, done.iteration, config)) from None
                    row = {"epoch": epoch + 1, "train_loss": train_loss,
                           "val_dice": val["dice"] if math.isfinite(val["dice"]) else None,
                           "lr": optimizer.param_groups[0]["lr"],
                           "seconds": round(earlier_s + time.perf_counter() - started, 3),
                           "data_seconds": round(waited, 3),
                           "val_seconds": round(time.perf_counter() - val_started, 3) if validate else 0.0,
                           "per_label": val.get("per_label", {})}
                    # Without validation cases the latest weights count as the best.
                    score = row["val_dice"] if row["val_dice"] is not None else -1.0
                    is_best = state["best_dice"] is None or score >= state["best_dice"]
                    if is_best:
                        state["best_dice"], state["best_epoch"] = score, epoch + 1
                    state["epoch"] = epoch + 1
                    state.pop("iteration", None)
                    state.pop("partial", None)
                    state["history"].append(row)
                    training_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                      "scaler": scaler.state_dict(), "rng": ckpt.rng_state()}
                    ckpt.save_checkpoint(workdir, model, training_state, state, is_best)
                    write_log_csv(workdir / "log.csv", state["history"])
                    tb.log(row)
                    longest_val = max(longest_val, row["val_seconds"])
                    logger.info("epoch %d/%d: loss %.4f, val dice %s, %.1fs", epoch + 1, config["epochs"],
                                train_loss, row["val_dice"], row["seconds"])
                    clock.epoch_done(epoch, row["val_seconds"])
                else:
                    state["epoch"] = epoch + 1
                    state.pop("iteration", None)
                    state.pop("partial", None)
                dist_utils.barrier(info)
                if last and epoch + 1 < config["epochs"]:
                    if info.is_main:
                        logger.warning("time limit of %s min: stopped after epoch %d of %d; to resume, run the same "
                                       "command again with --overwrite (and more time)", config["time_limit_minutes"],
                                       epoch + 1, config["epochs"])
                    break
        finally:
            if tb is not None:
                tb.close()

        package = None
        if info.is_main:
            package = _write_package(run, workdir, state, out_dir, overwrite, command, write_package)
        dist_utils.barrier(info)
        return package
    finally:
        dist_utils.shutdown(info)


def _save_inside_epoch(workdir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                       state: dict[str, Any], epoch: int, iteration: int, partial: dict[str, Any],
                       info: dist_utils.DistInfo) -> None:
    """A resumable checkpoint after ``iteration`` iterations of 0-based ``epoch`` (rank 0 writes it;
    ``best.safetensors`` is left alone). ``state`` gains ``iteration`` and ``partial``."""
    state["iteration"], state["partial"] = int(iteration), partial
    if info.is_main:
        training_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "scaler": scaler.state_dict(), "rng": ckpt.rng_state()}
        ckpt.save_checkpoint(workdir, model, training_state, {**state, "epoch": epoch}, False)
        logger.info("checkpoint saved in %s: epoch %d, iteration %d", workdir, epoch + 1, iteration)
    dist_utils.barrier(info)


def _stopped_message(workdir: Path, epoch: int, iteration: int, config: dict[str, Any]) -> str:
    """The one line a stopped run ends with: where it stopped and how to go on."""
    return (f"training stopped at epoch {epoch + 1}/{config['epochs']}, iteration {iteration}/"
            f"{config['iterations_per_epoch']}; the checkpoint is in {workdir}: run the same command again to resume")


def _is_last_in_time(config: dict[str, Any], info: dist_utils.DistInfo, device: torch.device, elapsed_s: float,
                     longest_train_s: float, longest_val_s: float) -> bool:
    """True when no further epoch (training + validation) ends inside the time limit after this
    epoch's validation. Every rank gets the same answer (one all-reduce when a limit is set)."""
    limit = config["time_limit_minutes"]
    if limit is None:
        return False
    fit = epochs_that_fit(limit, elapsed_s + longest_val_s, longest_train_s + longest_val_s)
    if info.enabled:  # the ranks' clocks differ slightly: they must stop after the same epoch
        fit = math.floor(dist_utils.all_reduce_mean(info, float(fit), device))
    return fit < 1


def _write_package(run: RunData, workdir: Path, state: dict[str, Any], out_dir: Path, overwrite: bool,
                   command: str | None, write_package: Callable[..., Path]) -> Path:
    """Write the package from the best checkpoint (validation metrics of that epoch)."""
    config = run.config
    best = workdir / "best.safetensors"
    weights = ckpt.load_weights(best if best.is_file() else workdir / "last.safetensors")
    best_row = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
    validation = {
        "dice": best_row.get("val_dice"),
        "min_dice": config["min_val_dice"],
        "per_label": {str(k): v for k, v in best_row.get("per_label", {}).items()},
        "cases": len(run.val_cases),
        "data": run.description,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
    }
    manifest = build_manifest(config, run.kwargs, validation)
    cmd = command or f"tumorseg train training_config.json -o {out_dir.name}"
    path = write_package(out_dir, manifest, [weights], readme=readme_text(config, cmd, validation),
                         extra_files={"training_config.json": config_bytes(config)}, overwrite=overwrite)
    logger.info("wrote model package %s (validation dice %s)", path, validation["dice"])
    if not manifest["validated"]:
        logger.warning("validation Dice %s is below min_val_dice %s: %s is marked \"not validated\" and "
                       "segmenting with it warns; train longer or on more data", validation["dice"],
                       config["min_val_dice"], path)
    return path
