"""An ONNX file plus a JSON sidecar into a model package (architecture ``onnx``).

The ONNX file holds the network; the sidecar (``model.onnx.json`` next to it, or any file
given with ``--sidecar``) holds exactly the manifest fields a graph cannot: ``inputs``
(modality and normalization per channel), ``spacing`` (x, y, z mm), ``patch_size``
(x, y, z), ``output`` (softmax ``labels`` or sigmoid ``regions``), and optionally
``name``, ``version``, ``orientation`` (default LPS), ``postprocessing``, ``inference``,
``license``, ``description`` and ``citation`` (written to the README). Unknown keys are
refused by name; everything else is validated by building the :class:`Manifest`.

The graph is checked by :func:`tumorseg_core.models.onnx_network.inspect_onnx` (one float
rank-5 input, one rank-5 output, standard operators, no external data) and stored as the
``graph`` buffer of ``fold0.safetensors``, hashed like any weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.modelpkg.manifest import Manifest, parse_manifest_json
from tumorseg_core.models.onnx_network import ARCHITECTURE, inspect_onnx

PathLike = Union[str, Path]
SIDECAR_REQUIRED = ("inputs", "spacing", "patch_size", "output")
SIDECAR_OPTIONAL = ("name", "version", "orientation", "postprocessing", "inference", "license", "description",
                    "citation")
SIDECAR_HELP = ("inputs (modality and normalization per channel), spacing (x, y, z mm), patch_size (x, y, z) and "
                "output (softmax labels or sigmoid regions); optionally name, version, orientation, postprocessing, "
                "inference, license, description, citation")
MAX_SIDECAR_BYTES = 1024 * 1024


def sidecar_path(onnx_path: PathLike, sidecar: Optional[PathLike] = None) -> Path:
    """The sidecar to read: ``sidecar`` if given, else ``<file>.onnx.json``; refuse a missing one in one line."""
    path = Path(onnx_path).expanduser()
    found = Path(sidecar).expanduser() if sidecar is not None else path.with_name(path.name + ".json")
    if not found.is_file():
        raise ModelPackageError(
            f"{path.name} is an ONNX file, which holds only the network: importing it needs a JSON sidecar "
            f"({found} not found; or give --sidecar FILE) holding {SIDECAR_HELP}"
        )
    return found


def read_sidecar(path: Path) -> Dict[str, Any]:
    """The sidecar as a dict with only known keys (each required one present)."""
    raw = path.read_bytes()
    if len(raw) > MAX_SIDECAR_BYTES:
        raise ModelPackageError(f"sidecar {path.name} is larger than 1 MB; a sidecar is a small JSON file")
    data = parse_manifest_json(raw, path.name)
    unknown = sorted(set(data) - set(SIDECAR_REQUIRED) - set(SIDECAR_OPTIONAL))
    if unknown:
        raise ModelPackageError(f"sidecar {path.name} has unknown key(s) {', '.join(unknown)}; "
                                f"it may hold {', '.join(SIDECAR_REQUIRED + SIDECAR_OPTIONAL)}")
    missing = [key for key in SIDECAR_REQUIRED if key not in data]
    if missing:
        raise ModelPackageError(f"sidecar {path.name} lacks {', '.join(missing)}; it must hold {SIDECAR_HELP}")
    return data


def _out_channels(graph_out: Optional[int], output: Any) -> int:
    """The graph's fixed output channels, else what the sidecar's labels need."""
    if graph_out is not None:
        return graph_out
    if isinstance(output, dict):
        entries = output.get("regions" if output.get("type") == "sigmoid" else "labels")
        if isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries):
            if output.get("type") == "sigmoid":
                return len(entries)
            values = [e.get("value") for e in entries]
            if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                return max(values) + 1
    return 2  # the manifest check below names what is wrong with the output section


def import_onnx(
    source: PathLike,
    out_dir: PathLike,
    *,
    sidecar: Optional[PathLike] = None,
    default_name: str = "imported-model",
    defaults: Optional[Dict[str, Any]] = None,
    overwrite: bool = False,
    **manifest_fields: Any,
) -> Path:
    """Write the package for ``source`` (an ``.onnx`` file) and its sidecar into ``out_dir``.

    ``manifest_fields`` may hold ``name`` (overrides the sidecar's); the package name is
    otherwise the sidecar's ``name`` or ``default_name``. ``defaults``: manifest values
    (version, license, orientation, ...) used where the sidecar gives none.
    """
    import torch

    from tumorseg_core.modelpkg.package import write_package

    path = Path(source).expanduser()
    unknown = sorted(set(manifest_fields) - {"name"})
    if unknown:
        raise ModelPackageError(f"an ONNX import takes {', '.join(unknown)} from its sidecar; give only --name")
    side = sidecar_path(path, sidecar)
    fields = read_sidecar(side)
    data = path.read_bytes()
    info = inspect_onnx(data, path.name)
    citation = fields.pop("citation", None)
    manifest: Dict[str, Any] = dict(defaults or {})
    manifest.update(fields)
    if manifest_fields.get("name") is not None:
        manifest["name"] = manifest_fields["name"]
    manifest.setdefault("name", default_name)
    manifest.setdefault("description", f"ONNX model imported from {path.name}")
    inputs = fields["inputs"]
    n_in = info.in_channels if info.in_channels is not None else (len(inputs) if isinstance(inputs, list) else 1)
    manifest["architecture"] = ARCHITECTURE
    manifest["kwargs"] = {"in_channels": n_in, "out_channels": _out_channels(info.out_channels, fields["output"]),
                          "num_bytes": len(data)}
    try:
        checked = Manifest({**manifest, "files": {"fold0.safetensors": "0" * 64}})
    except ModelPackageError as exc:
        raise ModelPackageError(f"sidecar {side.name} does not fit {path.name}: {exc}") from exc
    fixed = [(p, g) for p, g in zip(checked.patch_size_zyx, info.spatial_zyx) if g is not None]
    if any(p != g for p, g in fixed):
        raise ModelPackageError(
            f"sidecar {side.name}: patch_size (x, y, z) {list(manifest['patch_size'])} does not match {path.name}'s "
            f"fixed input size (z, y, x) {list(info.spatial_zyx)}; set patch_size to the graph's size"
        )
    digest = hashlib.sha256(data).hexdigest()
    readme = (f"# {manifest['name']}\n\n{manifest['description']}\n\n"
              f"Imported by `tumorseg import` from `{path.name}` (sha256 `{digest}`) with the sidecar "
              f"`{side.name}`; the ONNX graph is stored in `fold0.safetensors` and run by ONNX Runtime.\n\n"
              f"License: {manifest['license']}\n")
    if citation:
        readme += f"\n## Citation\n\n{citation if isinstance(citation, str) else json.dumps(citation)}\n"
    state = {"graph": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    return write_package(out_dir, manifest, [state], readme=readme, overwrite=overwrite)
