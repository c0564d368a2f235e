"""Convert PyTorch ``.pt``/``.pth`` checkpoints into safe model packages.

This is the only module in TumorSeg that reads a PyTorch checkpoint. It uses
``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain
containers and refuses arbitrary Python objects, and it runs only when a user
explicitly converts a file with ``tumorseg import-weights``. The result is a package
whose weights are ``.safetensors`` and whose files are all hashed, so nothing
downstream ever needs to read a checkpoint again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Union

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.models.registry import build_network, validate_kwargs

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
# Keys under which common trainers nest the weights (Lightning, nnU-Net, plain scripts).
NESTED_KEYS = ("state_dict", "network_weights", "model", "model_state_dict", "net")
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
STRIP_PREFIXES = ("module.", "_orig_mod.")
MANIFEST_DEFAULTS: Dict[str, Any] = {
    "format_version": 1,
    "version": "1.0.0",
    "license": "unknown",
    "orientation": "LPS",
}


def read_checkpoint(pt_path: PathLike) -> Dict[str, "torch.Tensor"]:
    """Read a state dict from a ``.pt`` checkpoint with ``weights_only=True``.

    Accepts a plain state dict or a dict nesting it under one of ``NESTED_KEYS``;
    strips ``module.``/``_orig_mod.`` prefixes. Returns ``{parameter name: tensor}``.
    """
    import torch

    path = Path(pt_path).expanduser()
    if not path.is_file():
        raise ModelPackageError(f"checkpoint {path} does not exist; check the path")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a weights-only checkpoint"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelPackageError(
            f"cannot read {path.name} as a weights-only PyTorch checkpoint ({first[:200]}); "
            "save just the state dict with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), dict):
                logger.info("using the weights stored under %r in %s", key, path.name)
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ModelPackageError(f"{path.name} holds no state dict; save model.state_dict() instead")
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelPackageError(
                f"{path.name} entry {key!r} is not a tensor; the file must hold a state dict"
            )
        state[key] = value
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def import_weights(
    pt_path: Union[PathLike, Sequence[PathLike]],
    architecture: str,
    kwargs: Dict[str, Any],
    out_dir: PathLike,
    *,
    readme: Union[str, None] = None,
    overwrite: bool = False,
    **manifest_fields: Any,
) -> Path:
    """Convert checkpoint(s) into a model package folder and return its path.

    Args:
        pt_path: one ``.pt`` file, or a list of them (one per fold/ensemble member).
        architecture: registry name (``unet3d``, ``vnet``, ``unet2d``, ``segresnet``, ``dynunet``).
        kwargs: the architecture's JSON kwargs; each state dict must load strictly.
        out_dir: package folder to create (must not exist unless ``overwrite``).
        readme: text for README.md (a generated one if None).
        **manifest_fields: the remaining manifest keys (``name``, ``description``,
            ``inputs``, ``spacing``, ``patch_size``, ``output``, ...); ``version``,
            ``license``, ``orientation`` and ``format_version`` have defaults.
    """
    from tumorseg_core.modelpkg.package import load_state_dict_strict, write_package

    paths: List[PathLike] = [pt_path] if isinstance(pt_path, (str, os.PathLike)) else list(pt_path)
    if not paths:
        raise ModelPackageError("no checkpoint given; pass at least one .pt file")
    validate_kwargs(architecture, kwargs)  # fail fast, before reading any checkpoint
    states = []
    for path in paths:
        state = read_checkpoint(path)
        net = build_network(architecture, kwargs)
        load_state_dict_strict(net, state, Path(path).name)
        states.append(state)
    manifest = dict(MANIFEST_DEFAULTS)
    manifest.update(manifest_fields)
    manifest["architecture"] = architecture
    manifest["kwargs"] = kwargs
    manifest.setdefault("description", f"{architecture} imported from {', '.join(Path(p).name for p in paths)}")
    if readme is None:
        readme = (
            f"# {manifest.get('name', 'model')}\n\n{manifest['description']}\n\n"
            f"Converted by `tumorseg import-weights` from: {', '.join(Path(p).name for p in paths)}.\n"
        )
    return write_package(out_dir, manifest, states, readme=readme, overwrite=overwrite)
