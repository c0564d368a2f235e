"""Export networks to ONNX / OpenVINO IR once, and cache the result safely.

Cache layout (``$TUMORSEG_CACHE`` or ``~/.tumorseg/cache``)::

    exports/onnx-<key>/model.onnx, export.json
    exports/openvino-<key>/model.xml, model.bin, export.json

``<key>`` is a hash of: the network's identity (the package's sha256 plus the weight
file name, or a hash of the weights), the fixed window shape (z, y, x), the input
channels, the artifact kind and the version of what made it (torch + ONNX opset for
ONNX, which any ONNX Runtime version loads; the openvino version for IR). The sidecar
``export.json`` records the key and the sha256 of every file. A folder whose sidecar is
missing, unreadable, for another key, or whose files do not match their hashes is
rebuilt, never trusted; so is one that fails to load (see :func:`load_or_rebuild`).
Exports are built in a temporary sibling folder and renamed into place, so a crash or
a concurrent export never leaves a half-written model under the final name.

The ONNX graph has a fixed window shape and a dynamic batch axis; the IR is reshaped
to a static batch of 1 (the OpenVINO runner loops over the batch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tumorseg_core.errors import TumorSegError
from tumorseg_core.modelpkg.package import sha256_file

logger = logging.getLogger(__name__)

CACHE_ENV = "TUMORSEG_CACHE"
SIDECAR = "export.json"
OPSET = 17
_FORMAT = 1

R = TypeVar("R")

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torch import nn


@dataclass(frozen=True)
class ExportSpec:
    """What to export: a network mapping (B, in_channels, *window_zyx) to (B, K, *window_zyx).

    ``network`` is the module, or a function returning it: with a valid cached export the
    network is never needed, so a package's weights are loaded (and torch imported) only
    when an export has to be built.
    """

    network: "nn.Module | Callable[[], nn.Module]"
    identity: str
    window_zyx: tuple[int, int, int]
    in_channels: int

    def module(self) -> "nn.Module":
        """The network itself (calls the loader if ``network`` is one)."""
        from torch import nn

        return self.network if isinstance(self.network, nn.Module) else self.network()


def cache_root() -> Path:
    """The cache folder: ``$TUMORSEG_CACHE`` if set, else ``~/.tumorseg/cache``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".tumorseg" / "cache"


def export_key(kind: str, spec: ExportSpec) -> dict[str, Any]:
    """The cache key fields of an artifact (``kind``: ``onnx`` or ``openvino``)."""
    from tumorseg_core.inference.backends import backend_version

    key: dict[str, Any] = {
        "format": _FORMAT,
        "kind": kind,
        "identity": spec.identity,
        "window_zyx": list(spec.window_zyx),
        "in_channels": spec.in_channels,
        "torch": backend_version("torch"),
        "opset": OPSET,
    }
    if kind == "openvino":
        key["openvino"] = backend_version("openvino")
    return key


def export_folder(kind: str, spec: ExportSpec, root: Path | None = None) -> Path:
    """Where the artifact for ``kind``/``spec`` lives (it may not exist yet)."""
    key = export_key(kind, spec)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:32]
    return (root or cache_root()) / "exports" / f"{kind}-{digest}"


def is_valid(folder: Path, key: dict[str, Any]) -> bool:
    """True when ``folder``'s sidecar is for ``key`` and every listed file matches its sha256."""
    try:
        data = json.loads((folder / SIDECAR).read_text(encoding="utf-8"))
        files = data["files"]
        if data.get("key") != key or not isinstance(files, dict) or not files:
            return False
        return all(
            isinstance(name, str) and "/" not in name and (folder / name).is_file() and sha256_file(folder / name) == digest
            for name, digest in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def invalidate(folder: Path) -> None:
    """Remove a cached artifact folder (stale, corrupt or unloadable)."""
    shutil.rmtree(folder, ignore_errors=True)


def cached_build(folder: Path, key: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return ``folder`` if valid for ``key``; else run ``build(tmp)`` and move it into place.

    ``build`` writes the artifact files into the empty folder it is given; the sidecar
    with their hashes is written last, then the folder is renamed to ``folder``.
    """
    if is_valid(folder, key):
        return folder
    if folder.exists():
        logger.warning("cached export %s is stale or corrupt; rebuilding it", folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        build(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / SIDECAR).write_text(json.dumps({"key": key, "files": files}, indent=1), encoding="utf-8")
        if folder.exists():
            aside = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not is_valid(folder, key):  # another process won a race with a good export: use it
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _export_onnx(spec: ExportSpec, path: Path) -> None:
    """torch.onnx.export with a fixed window and a dynamic batch axis (TorchScript exporter)."""
    import torch

    net = spec.module()
    param = next(iter(net.parameters()), None)
    if param is not None and param.device.type != "cpu":
        raise TumorSegError("exported backends run on the CPU; load the networks on the CPU")
    example = torch.zeros((1, spec.in_channels, *spec.window_zyx), dtype=torch.float32)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation + instance-norm "train=True" notes
        torch.onnx.export(
            net, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
            output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def ensure_onnx(spec: ExportSpec, root: Path | None = None) -> Path:
    """Folder holding a verified ``model.onnx`` for ``spec`` (exported now if needed)."""
    folder = export_folder("onnx", spec, root)

    def build(tmp: Path) -> None:
        logger.info("exporting the network to ONNX (window %s); this happens once per model", spec.window_zyx)
        _export_onnx(spec, tmp / "model.onnx")

    return cached_build(folder, export_key("onnx", spec), build)


def ensure_openvino(spec: ExportSpec, root: Path | None = None) -> Path:
    """Folder holding a verified OpenVINO IR (``model.xml`` + ``model.bin``), static batch 1."""
    folder = export_folder("openvino", spec, root)

    def build(tmp: Path) -> None:
        from tumorseg_core.inference.backends.openvino_backend import import_openvino

        ov = import_openvino()
        onnx_path = ensure_onnx(spec, root) / "model.onnx"
        logger.info("converting the ONNX export to OpenVINO IR; this happens once per model")
        # Core.read_model, not ov.convert_model: the converter's telemetry forks a process that
        # tries to reach the internet (a privacy leak for medical data tools, and a hang offline).
        model = ov.Core().read_model(str(onnx_path))
        model.reshape({model.inputs[0]: ov.PartialShape([1, spec.in_channels, *spec.window_zyx])})
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)

    return cached_build(folder, export_key("openvino", spec), build)


def ensure_export(backend: str, spec: ExportSpec, root: Path | None = None) -> Path:
    """The verified artifact folder a backend loads (``onnxruntime``: ONNX; ``openvino``: IR)."""
    if backend == "onnxruntime":
        return ensure_onnx(spec, root)
    if backend == "openvino":
        return ensure_openvino(spec, root)
    raise ValueError(f"no export for backend {backend!r}")


def load_or_rebuild(backend: str, spec: ExportSpec, runner: Callable[[Path], R], root: Path | None = None) -> R:
    """``runner(folder)`` on the cached export; an export that fails to load is rebuilt once."""
    folder = ensure_export(backend, spec, root)
    try:
        return runner(folder)
    except Exception as exc:  # noqa: BLE001 - any load failure means: do not trust this cache
        logger.warning("cached %s export %s failed to load (%s); rebuilding it", backend, folder, exc)
        invalidate(folder)
        if backend == "openvino":
            invalidate(export_folder("onnx", spec, root))
        return runner(ensure_export(backend, spec, root))
