"""Convert PyTorch ``.pt``/``.pth`` checkpoints into safe model packages.

This is the only module in TumorSeg that reads a PyTorch checkpoint. It uses
``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain
containers and refuses arbitrary Python objects, and it runs only when a user
explicitly converts a file with ``tumorseg import`` (or its alias ``import-weights``).
Beyond torch's own weights-only types it allows exactly the numpy scalar types that
nnU-Net v2 checkpoints hold (``_checkpoint_allowlist``); a checkpoint that references
anything else is refused, naming it, before anything in it is built. The result is a
package whose weights are ``.safetensors`` and whose files are all hashed, so nothing
downstream ever needs to read a checkpoint again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from tumorseg_core.errors import ModelAlreadyInstalledError, ModelPackageError
from tumorseg_core.models.registry import build_network, validate_kwargs

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
# Keys under which common trainers nest the weights (Lightning, nnU-Net, plain scripts).
NESTED_KEYS = ("state_dict", "network_weights", "model", "model_state_dict", "net")
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
STRIP_PREFIXES = ("module.", "_orig_mod.")
# numpy scalar types whose dtype class a checkpoint may rebuild (see _checkpoint_allowlist).
ALLOWED_SCALAR_DTYPES = ("float32", "float64", "int64", "int32", "bool")
# What ``tumorseg import`` can read in this version, for the "not supported" errors.
SUPPORTED_SOURCES = ("an nnU-Net v2 trained-model folder or its exported .zip, a MONAI bundle, "
                     "an ONNX file with a JSON sidecar, and a PyTorch state dict (.pt/.pth) with its architecture (--architecture and --kwargs)")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# torch's safe_globals context edits one process-wide allowlist: one checkpoint read at a time.
_LOAD_LOCK = threading.Lock()
MANIFEST_DEFAULTS: Dict[str, Any] = {
    "format_version": 1,
    "version": "1.0.0",
    "license": "unknown",
    "orientation": "LPS",
}


def _checkpoint_allowlist() -> List[Any]:
    """The globals a checkpoint may reference beyond torch's weights-only defaults.

    Exactly what nnU-Net v2 checkpoints (``checkpoint_final.pth``) need around their
    weights, whose ``_best_ema`` and ``logging`` hold numpy scalars:

    - ``numpy._core.multiarray.scalar``: numpy's scalar reconstructor (``scalar(dtype,
      raw bytes)``); also under its numpy 1.x name ``numpy.core.multiarray.scalar``, the
      name most published checkpoints carry, aliased to the same function (the deprecated
      ``numpy.core`` module itself is never imported).
    - ``numpy.dtype``: rebuilds the scalar's dtype from a type code such as ``'f4'``.
    - the dtype classes of ``ALLOWED_SCALAR_DTYPES`` (numpy 2: ``numpy.dtypes.Float32DType``
      ...): torch's weights-only loader sets a dtype's state only for allowlisted classes.

    ``torch.device`` (nnU-Net's ``init_args``), ``collections.OrderedDict`` and
    ``_codecs.encode`` are among torch's own defaults. None of these can run code: they
    build numbers and dtypes from data.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy < 1.26 has no numpy._core
        from numpy.core.multiarray import scalar
    return [
        (scalar, "numpy._core.multiarray.scalar"),
        (scalar, "numpy.core.multiarray.scalar"),
        (np.dtype, "numpy.dtype"),
        *(type(np.dtype(name)) for name in ALLOWED_SCALAR_DTYPES),
    ]


def _offending_name(message: str) -> Optional[str]:
    """The global or class a refused weights-only load named, from torch's error text."""
    for pattern in (r"GLOBAL (\S+?)[ ,]", r"but got <class '([^']+)'>", r"unrecognized function (\S+)"):
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return None


def _refuse_globals(path: Path, names: Sequence[str]) -> ModelPackageError:
    shown = ", ".join(sorted(names)[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return ModelPackageError(
        f"refusing {path.name}: it references {shown}, which a weights-only checkpoint may not hold "
        "(it could run code; nothing in the file was run); if you trust the file, load it in your own Python, "
        "re-save just the weights with torch.save(model.state_dict(), path) and import that"
    )


def _unsafe_globals(torch: Any, path: Path) -> List[str]:
    """Statically list the checkpoint's globals outside the allowlist (nothing is built)."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:  # pragma: no cover - torch < 2.5: torch.load below still refuses them
        return []
    try:
        return list(scan(str(path)))
    except ValueError as exc:
        if "torchscript" in str(exc).lower():
            raise ModelPackageError(
                f"{path.name} is a TorchScript archive, which TumorSeg does not import (loading it runs its code); "
                "save just the state dict with torch.save(model.state_dict(), path) and import that"
            ) from exc
        return []  # legacy (non-zip) format or not a checkpoint: torch.load below decides
    except Exception:  # noqa: BLE001 - an unreadable file: torch.load below gives the error
        return []


def _load_weights_only(path: Path) -> Any:
    import torch

    allow = getattr(torch.serialization, "safe_globals", None)
    with _LOAD_LOCK, (allow(_checkpoint_allowlist()) if allow else contextlib.nullcontext()):
        unsafe = _unsafe_globals(torch, path)
        if unsafe:
            raise _refuse_globals(path, unsafe)
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not a weights-only checkpoint"
            text = " ".join(str(exc).split())
            name = _offending_name(text)
            if name is not None:
                raise _refuse_globals(path, [name]) from exc
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelPackageError(
                f"cannot read {path.name} as a weights-only PyTorch checkpoint ({first[:200]}); "
                "save just the state dict with torch.save(model.state_dict(), path)"
            ) from exc


def read_checkpoint(pt_path: PathLike) -> Dict[str, "torch.Tensor"]:
    """Read a state dict from a ``.pt`` checkpoint with ``weights_only=True``.

    Accepts a plain state dict or a dict nesting it under one of ``NESTED_KEYS`` (an
    nnU-Net v2 checkpoint's ``network_weights``; the entries around it, such as the
    optimizer state, numpy scalars and ``init_args``, are read as data and ignored);
    strips ``module.``/``_orig_mod.`` prefixes. Returns ``{parameter name: tensor}``.
    A checkpoint that references anything beyond torch's weights-only types and
    ``_checkpoint_allowlist()`` is refused, naming it, before any object is built.
    """
    return read_checkpoint_with_metadata(pt_path)[0]


def read_checkpoint_with_metadata(pt_path: PathLike) -> Tuple[Dict[str, "torch.Tensor"], Dict[str, Any]]:
    """:func:`read_checkpoint`, plus the checkpoint's other top-level entries as plain data.

    The second item is ``{}`` for a bare state dict; for an nnU-Net v2 checkpoint it holds
    ``trainer_name``, ``inference_allowed_mirroring_axes``, ``init_args`` ... exactly as the
    weights-only reader rebuilt them (containers, numbers, strings, numpy scalars).
    """
    import torch

    path = Path(pt_path).expanduser()
    if not path.is_file():
        raise ModelPackageError(f"checkpoint {path} does not exist; check the path")
    obj = _load_weights_only(path)
    metadata: Dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), dict):
                others = [str(k) for k in obj if k != key]
                logger.info("using the weights stored under %r in %s%s", key, path.name,
                            f" (ignoring {', '.join(others)})" if others else "")
                metadata = {str(k): v for k, v in obj.items() if k != key}
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
    return state, metadata


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
            f"Converted by `tumorseg import` from: {', '.join(Path(p).name for p in paths)}.\n"
        )
    return write_package(out_dir, manifest, states, readme=readme, overwrite=overwrite)


def _unsupported(path: Path, what: str, hint: str = "") -> ModelPackageError:
    return ModelPackageError(
        f"{path.name} is {what}, a kind of source this version of TumorSeg cannot import{hint}; "
        f"it imports {SUPPORTED_SOURCES}"
    )


def source_kind(source: PathLike) -> str:
    """The kind of model ``source`` is: ``"package"`` (already a TumorSeg package: installed as it
    is), ``"nnunet"`` (an nnU-Net v2 trained-model folder or
    the zip ``nnUNetv2_export_model_to_zip`` writes), ``"monai"`` (a MONAI bundle folder or
    zip), ``"onnx"`` (an ``.onnx`` file, imported with its JSON sidecar) or ``"pytorch"``
    (a state dict).

    Another folder or zip is refused with a one-line error saying so; any other file is
    read as a PyTorch checkpoint (which refuses whatever is not one).
    """
    from tumorseg_core.modelpkg import nnunet_import
    from tumorseg_core.modelpkg.package import MANIFEST_NAME, read_manifest

    path = Path(source).expanduser()
    if not path.exists():
        raise ModelPackageError(f"{path} does not exist; check the path")
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return "package"  # already a TumorSeg package (install_package verifies it)
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            read_manifest(path)
            return "package"
        except ModelPackageError:
            pass  # not a package zip: an nnU-Net export or a bundle, below
    if path.is_dir():
        if nnunet_import.find_model_folders(path):
            return "nnunet"
        if (path / "plans.json").is_file() or (path / "dataset.json").is_file():
            raise _unsupported(path, "an nnU-Net folder without fold_N/checkpoint_*.pth (an nnU-Net raw or "
                                     "preprocessed dataset folder, not a trained model)")
        if (path / "configs").is_dir():
            return "monai"
        raise _unsupported(path, "a folder that is neither an nnU-Net v2 model nor a MONAI bundle")
    suffix = path.suffix.lower()
    if suffix == ".zip":
        if nnunet_import.zip_holds_nnunet_model(path):
            return "nnunet"
        if _zip_holds_bundle(path):
            return "monai"
        raise _unsupported(path, "a .zip that holds neither a model package, an nnU-Net v2 model nor a MONAI bundle")
    if suffix == ".onnx":
        return "onnx"
    return "pytorch"


def _zip_holds_bundle(path: Path) -> bool:
    """Whether a zip's entries look like a MONAI bundle (``configs/`` at the top or one folder down)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.startswith("configs/") or n.split("/", 1)[-1].startswith("configs/") for n in names)


def _default_name(out_dir: Optional[PathLike], first_source: PathLike) -> str:
    """A package name from the output folder's name, else from the source file's stem."""
    base = Path(out_dir).expanduser().name if out_dir is not None else Path(first_source).stem
    return _NAME_CHARS.sub("-", base).lstrip("._-")[:64] or "imported-model"


def import_model(
    source: Union[PathLike, Sequence[PathLike]],
    out_dir: Optional[PathLike] = None,
    install: bool = False,
    *,
    architecture: Optional[str] = None,
    kwargs: Optional[Dict[str, Any]] = None,
    readme: Optional[str] = None,
    overwrite: bool = False,
    folds: Optional[Sequence[Union[int, str]]] = None,
    checkpoint: str = "final",
    configuration: Optional[str] = None,
    sidecar: Optional[PathLike] = None,
    **manifest_fields: Any,
) -> Path:
    """Import a pretrained model as a TumorSeg model package; return the package folder.

    Args:
        source: what to import; this version supports a PyTorch state dict file
            (``.pt``/``.pth``, several for an ensemble) with ``architecture`` and
            ``kwargs``; an nnU-Net v2 model folder or zip; a MONAI bundle folder or zip; an
            ``.onnx`` file with its JSON sidecar (``sidecar``, default ``<file>.onnx.json``;
            see ``onnx_import.py``).
        out_dir: package folder to write; or
        install: write it into the user model folder (``$TUMORSEG_MODELS`` or
            ``~/.tumorseg/models``) under its name, where ``installed_models()`` lists it.
        overwrite: replace an existing ``out_dir`` / installed model of the same name.
        **manifest_fields: the manifest keys the source lacks (``name`` defaults to the
            output folder's or source file's name; ``inputs``, ``spacing``,
            ``patch_size``, ``output``, ...), as for :func:`import_weights`.
    """
    from tumorseg_core.modelpkg.package import install_package, user_models_dir

    paths: List[PathLike] = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not paths:
        raise ModelPackageError("no source given; pass a PyTorch state dict (.pt/.pth)")
    if (out_dir is None) == (not install):
        raise ModelPackageError("give either an output folder or install=True (one of them, not both)")
    kinds = [source_kind(path) for path in paths]  # refuses what this version cannot import, before reading
    if "package" in kinds:
        from tumorseg_core.modelpkg.package import install_package, user_models_dir

        if len(paths) != 1 or not install:
            raise ModelPackageError(f"{Path(paths[0]).name} is already a TumorSeg model package: use it as it is "
                                    "(--model PATH) or install it (--install)")
        return install_package(paths[0], user_models_dir(), overwrite=overwrite)
    if sidecar is not None and "onnx" not in kinds:
        raise ModelPackageError("a sidecar describes an .onnx source; the other sources need none")
    if "onnx" in kinds:
        if len(paths) != 1:
            raise ModelPackageError("give one .onnx file (with its JSON sidecar)")
        if architecture or kwargs:
            raise ModelPackageError(f"{Path(paths[0]).name} is an ONNX file: the graph is the network; "
                                    "give no architecture or kwargs (its sidecar describes the rest)")
        return _import_once(lambda out, replace: _import_onnx(paths[0], out, replace, sidecar, out_dir,
                                                              manifest_fields),
                            paths[0], out_dir, install, overwrite, manifest_fields)
    if "monai" in kinds:
        if len(paths) != 1:
            raise ModelPackageError("give one MONAI bundle folder or zip")
        return _import_once(lambda out, replace: _import_monai(paths[0], out, replace, manifest_fields),
                            paths[0], out_dir, install, overwrite, manifest_fields)
    if "nnunet" in kinds:
        if len(paths) != 1:
            raise ModelPackageError("give one nnU-Net model folder or zip (its folds become the ensemble: --folds)")
        if out_dir is not None and not install:
            manifest_fields.setdefault("name", _default_name(out_dir, paths[0]))
            return _import_nnunet(paths[0], out_dir, folds, checkpoint, configuration, readme, overwrite,
                                  manifest_fields)
        with tempfile.TemporaryDirectory(prefix="tumorseg-import-") as tmp:
            package = _import_nnunet(paths[0], Path(tmp) / "package", folds, checkpoint, configuration, readme,
                                     False, manifest_fields)
            return install_package(package, user_models_dir(), overwrite=overwrite)
    if not architecture:
        raise ModelPackageError(
            f"{Path(paths[0]).name} is a PyTorch state dict, which holds only weights: "
            "give its architecture and kwargs (--architecture, --kwargs)"
        )
    manifest_fields.setdefault("name", _default_name(out_dir, paths[0]))
    if not install:
        return import_weights(paths, architecture, dict(kwargs or {}), out_dir,
                              readme=readme, overwrite=overwrite, **manifest_fields)
    folder = user_models_dir()
    name = manifest_fields["name"]
    if isinstance(name, str) and (folder / name).exists() and not overwrite:
        raise ModelAlreadyInstalledError(name, folder)  # before reading any checkpoint
    with tempfile.TemporaryDirectory(prefix="tumorseg-import-") as tmp:
        package = import_weights(paths, architecture, dict(kwargs or {}), Path(tmp) / "package",
                                 readme=readme, **manifest_fields)
        return install_package(package, folder, overwrite=overwrite)


def _import_once(write: Any, source: PathLike, out_dir: Optional[PathLike], install: bool, overwrite: bool,
                 manifest_fields: Dict[str, Any]) -> Path:
    """Run ``write(out_dir, overwrite)`` into ``out_dir``, or into a temporary folder then install it."""
    from tumorseg_core.modelpkg.package import install_package, user_models_dir

    if not install:
        return write(out_dir, overwrite)
    with tempfile.TemporaryDirectory(prefix="tumorseg-import-") as tmp:
        return install_package(write(Path(tmp) / "package", False), user_models_dir(), overwrite=overwrite)


def _import_onnx(source: PathLike, out: PathLike, overwrite: bool, sidecar: Optional[PathLike],
                 out_dir: Optional[PathLike], manifest_fields: Dict[str, Any]) -> Path:
    """An ``.onnx`` file and its JSON sidecar as a package (``onnx_import.py``; architecture ``onnx``)."""
    from tumorseg_core.modelpkg.onnx_import import import_onnx

    return import_onnx(source, out, sidecar=sidecar, default_name=_default_name(out_dir, source),
                       defaults=MANIFEST_DEFAULTS, overwrite=overwrite, **manifest_fields)


def _import_monai(source: PathLike, out_dir: PathLike, overwrite: bool, manifest_fields: Dict[str, Any]) -> Path:
    """A MONAI bundle folder or zip as a package (``monai_import.py``; configs read as data, never evaluated)."""
    from tumorseg_core.modelpkg.monai_import import import_bundle

    unknown = sorted(set(manifest_fields) - {"name"})
    if unknown:
        raise ModelPackageError(f"a MONAI bundle brings its own {', '.join(unknown)}; give only --name")
    return import_bundle(source, out_dir, name=manifest_fields.get("name"), overwrite=overwrite)


def _import_nnunet(source: PathLike, out_dir: PathLike, folds: Optional[Sequence[Union[int, str]]], checkpoint: str,
                   configuration: Optional[str], readme: Optional[str], overwrite: bool,
                   manifest_fields: Dict[str, Any]) -> Path:
    """An nnU-Net v2 folder or exported zip as a package; a zip is unpacked with the package reader's guards."""
    from tumorseg_core.modelpkg import nnunet_import
    from tumorseg_core.modelpkg.package import extract_zip

    path = Path(source).expanduser()
    with tempfile.TemporaryDirectory(prefix="tumorseg-nnunet-") as tmp:
        folder = extract_zip(path, cache_root=Path(tmp)) if path.is_file() else path
        return nnunet_import.import_nnunet(
            folder, out_dir, read_checkpoint_with_metadata, folds=folds, checkpoint=checkpoint,
            configuration=configuration, readme=readme, overwrite=overwrite, source_name=path.name,
            **manifest_fields,
        )
