"""Pickle-free training checkpoints.

A checkpoint in the work directory consists of::

    last.safetensors          model weights (state dict, tensors only)
    best.safetensors          weights of the epoch with the best validation Dice
    last.state.safetensors    every tensor of the training state (optimizer moments,
                              RNG states), flattened to keys "t0", "t1", ...
    last.state.json           the structure of the training state with each tensor
                              replaced by {"__tensor__": "t0"}; see below
    state.json                {"epoch", "best_dice", "best_epoch", "history", "config_hash"}

Structure encoding (JSON, read back exactly, no code executed):

* ``{"__tensor__": "tN"}``: tensor ``tN`` of the safetensors file;
* ``{"__ndarray__": "tN", "dtype": "uint32"}``: a numpy array stored as a tensor;
* ``{"__tuple__": [...]}``: a tuple (e.g. Adam ``betas``, Python RNG state);
* ``{"__dict__": [[key, value], ...]}``: a dict whose keys are not all strings
  (optimizer ``state`` is keyed by parameter index);
* plain JSON values otherwise (non-finite floats as Python's ``NaN``/``Infinity``).

The training state is ``{"optimizer", "scheduler", "scaler", "rng"}``: the
``state_dict()`` of each object plus ``torch``/``cuda``/``numpy``/``random`` generator
states. ``state.json`` is written last (atomically), so it only ever points at a
complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tumorseg_core.errors import InputError

STATE_FILE = "state.json"


def flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able structure of ``obj`` with tensors/arrays moved into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        # safetensors/torch lack some numpy dtypes (uint32): widen to int64, cast back on load.
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).astype(np.int64 if obj.dtype.kind in "iub" else np.float64))
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [flatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: flatten(v, tensors) for k, v in obj.items()}
        return {"__dict__": [[k, flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {(tuple(k) if isinstance(k, list) else k): unflatten(v, tensors) for k, v in obj["__dict__"]}
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    return obj


def rng_state() -> dict[str, Any]:
    """Generator states of torch (CPU and CUDA), numpy's global generator and ``random``."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Model weights as safetensors (tensors cloned so shared storage is allowed)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """State dict from a safetensors weights file."""
    return load_file(str(path))


def save_checkpoint(workdir: Path, model: torch.nn.Module, training_state: dict[str, Any],
                    state: dict[str, Any], is_best: bool) -> None:
    """Write ``last.*`` (and ``best.safetensors`` if ``is_best``), then ``state.json``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_weights(model, workdir / "last.safetensors")
    if is_best:
        save_weights(model, workdir / "best.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten(training_state, tensors)
    _atomic(workdir / "last.state.safetensors", lambda tmp: save_file(tensors, tmp))
    _atomic(workdir / "last.state.json", lambda tmp: Path(tmp).write_text(json.dumps(structure), encoding="utf-8"))
    _atomic(workdir / STATE_FILE, lambda tmp: Path(tmp).write_text(json.dumps(state, indent=1), encoding="utf-8"))


def has_checkpoint(workdir: Path) -> bool:
    return (Path(workdir) / STATE_FILE).is_file()


def load_checkpoint(workdir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(model state dict, training state, state.json)`` of the last checkpoint in ``workdir``."""
    workdir = Path(workdir)
    try:
        state = json.loads((workdir / STATE_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(workdir / "last.state.safetensors"))
        structure = json.loads((workdir / "last.state.json").read_text(encoding="utf-8"))
        weights = load_weights(workdir / "last.safetensors")
    except (OSError, ValueError) as exc:
        raise InputError(
            f"checkpoint in {workdir} is incomplete or unreadable ({exc}); delete the folder or use another --workdir"
        ) from exc
    return weights, unflatten(structure, tensors), state
