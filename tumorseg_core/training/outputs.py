"""What a training run leaves behind: ``log.csv``, TensorBoard events and the model package."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# data_seconds: time the training loop waited for batches (a data-bound run shows it
# close to seconds - val_seconds, which is where more loader workers or cheaper
# augmentation pay off); val_seconds: validation time (0 on epochs without validation).
LOG_COLUMNS = ("epoch", "train_loss", "val_dice", "lr", "seconds", "data_seconds", "val_seconds")


def write_log_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``log.csv`` from the checkpointed history (so a resumed run never duplicates rows)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in history:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in LOG_COLUMNS])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, path)


class TensorBoardLog:
    """``SummaryWriter`` when the tensorboard package is installed, silently nothing otherwise."""

    def __init__(self, logdir: Path) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            logger.debug("tensorboard not installed; no event files are written")
            return
        self.writer = SummaryWriter(log_dir=str(logdir))

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in ("train_loss", "val_dice", "lr"):
            value = row.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build_manifest(config: dict[str, Any], kwargs: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
    """Manifest for the trained network (``files`` is filled in by ``write_package``)."""
    description = config.get("description") or (
        f"{config['architecture']} trained with 'tumorseg train' on {validation.get('data')}"
    )
    return {
        "format_version": 1,
        "name": config["name"],
        "version": config["version"],
        "license": config["license"],
        "description": description,
        "architecture": config["architecture"],
        "kwargs": kwargs,
        "inputs": config["inputs"],
        "spacing": [float(s) for s in config["spacing"]],
        "orientation": config["orientation"],
        "patch_size": [int(p) for p in config["patch_size"]],
        "preprocessing": config["preprocessing"],
        "output": {"type": "softmax", "labels": config["output"]["labels"]},
        "postprocessing": config["postprocessing"],
        "inference": config["inference"],
        "metrics": {"validation": validation},
        "validated": is_validated(validation, config["min_val_dice"]),
        "files": {},
    }


def is_validated(validation: dict[str, Any], min_dice: float) -> bool:
    """True when the package's validation Dice was measured and reaches ``min_dice``."""
    dice = validation.get("dice")
    return isinstance(dice, (int, float)) and math.isfinite(dice) and dice >= float(min_dice)


def readme_text(config: dict[str, Any], command: str, validation: dict[str, Any]) -> str:
    """README.md of the package: how it was made and how to make it again."""
    dice = validation.get("dice")
    dice_text = f"{dice:.4f}" if isinstance(dice, float) else "not measured (no validation cases)"
    labels = ", ".join(f"{lab['value']} = {lab['name']}" for lab in config["output"]["labels"])
    return "\n".join([
        f"# {config['name']} {config['version']}",
        "",
        f"{config['architecture']} segmentation model trained with `tumorseg train`.",
        "",
        f"- Inputs: {', '.join(i['modality'] for i in config['inputs'])}",
        f"- Labels: {labels}",
        f"- Spacing (mm, x y z): {config['spacing']}; patch (voxels, x y z): {config['patch_size']}",
        f"- Training data: {validation.get('data')}",
        f"- Validation Dice (mean over {validation.get('cases')} cases, foreground labels): {dice_text}"
        + ("" if is_validated(validation, config["min_val_dice"]) else
           f" (**not validated**: below {config['min_val_dice']}; its labels are unreliable)"),
        f"- Epochs: {validation.get('epochs')} x {config['iterations_per_epoch']} iterations, "
        f"batch {config['batch_size']}, seed {config['seed']}",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        "The complete resolved configuration is `training_config.json` in this package; "
        "`tumorseg train training_config.json -o OUT` retrains with it.",
        "",
    ])


def config_bytes(config: dict[str, Any]) -> bytes:
    """The resolved config as it is stored in the package (``training_config.json``)."""
    stored = {k: v for k, v in config.items() if k not in ("workdir", "cache_dir")}
    return (json.dumps(stored, indent=2, sort_keys=True) + "\n").encode("utf-8")
