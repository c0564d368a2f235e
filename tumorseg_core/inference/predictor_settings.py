"""Predictor settings read from a model package's manifest (patch, outputs, inference defaults).

Kept apart from the sliding-window engine in ``predictor.py``: this is about interpreting
a manifest (dict-like or attribute style), not about running windows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tumorseg_core.errors import ModelPackageError


def _first_conv_in_channels(net: Any) -> int | None:
    """Input channels of the first convolution in the ``nn.Module`` ``net``, or None if it has none."""
    from torch import nn

    for module in net.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(module.in_channels)
    return None


# ---------------------------------------------------------------------- manifests


def _manifest_get(manifest: Any, key: str) -> Any:
    """``manifest[key]`` from a Manifest (``.data`` dict or dict-like) or a plain dict; None if absent."""
    data = getattr(manifest, "data", None)
    for source in (data, manifest):
        if isinstance(source, Mapping) and key in source:
            return source[key]
    try:
        return manifest[key]
    except (KeyError, TypeError, IndexError):
        return None


def _label_value(item: Any) -> int:
    """A label/region entry's value, whether it is an object with ``.value`` or a dict."""
    value = item.get("value") if isinstance(item, Mapping) else getattr(item, "value", None)
    if value is None:
        raise ModelPackageError("an output label or region has no 'value'; fix the manifest")
    return int(value)


def _settings_from_manifest(manifest: Any) -> dict[str, Any]:
    """Predictor keyword arguments from a manifest (see the manifest format in the contract)."""
    patch = getattr(manifest, "patch_size_zyx", None)
    if patch is None:
        patch_xyz = _manifest_get(manifest, "patch_size")
        if not patch_xyz:
            raise ModelPackageError("the manifest has no patch_size; add one (x, y, z voxels)")
        patch = tuple(patch_xyz)[::-1]  # manifest sizes are (x, y, z)
    output = _manifest_get(manifest, "output") or {}
    output_type = getattr(manifest, "output_type", None) or output.get("type", "softmax")
    labels = getattr(manifest, "labels", None)
    if labels is None:
        labels = output.get("regions") or output.get("labels") or []
    values = [_label_value(item) for item in labels]
    kwargs = _manifest_get(manifest, "kwargs") or {}
    num_outputs = kwargs.get("out_channels")
    if num_outputs is None:
        num_outputs = len(values) if output_type == "sigmoid" else max(values, default=0) + 1
    inputs = _manifest_get(manifest, "inputs") or []
    settings: dict[str, Any] = {
        "patch_size_zyx": tuple(int(p) for p in patch),
        "num_outputs": int(num_outputs),
        "output_type": output_type,
        "in_channels": len(inputs) if inputs else kwargs.get("in_channels"),
        "modalities": [str(i.get("modality", f"input {n + 1}")) for n, i in enumerate(inputs)] or None,
        "size_divisor": _size_divisor(_manifest_get(manifest, "architecture"), kwargs),
    }
    if output_type == "sigmoid":
        settings["region_values"] = values or None
    defaults = _manifest_get(manifest, "inference") or {}
    for key in ("overlap", "tta", "window_batch", "amp", "sigma_scale"):
        if defaults.get(key) is not None:
            settings[key] = defaults[key]
    return settings


def _size_divisor(architecture: Any, kwargs: Mapping[str, Any]) -> tuple[int, int, int]:
    """The registry's (z, y, x) window multiple for ``architecture``; (1, 1, 1) if unknown here."""
    if not isinstance(architecture, str):
        return (1, 1, 1)
    from tumorseg_core.models import registry

    if architecture not in registry.ARCHITECTURES:
        return (1, 1, 1)  # the package loader already refuses unknown names
    return tuple(int(d) for d in registry.size_divisor(architecture, dict(kwargs)))  # type: ignore[return-value]


def package_settings(package: Any, device: Any, options: Mapping[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """``(networks, device name, Predictor keyword arguments)`` for an opened ``ModelPackage``.

    Manifest settings first, then ``options`` on top (``None`` means "use the default").
    The networks are :class:`~tumorseg_core.inference.backends.LazyNetworks`: the weights
    are loaded (and torch imported) only if the backend needs the modules.
    """
    from tumorseg_core.inference.backends import CPU_BACKENDS, LazyNetworks
    from tumorseg_core.inference.devices import device_name, import_torch

    settings = _settings_from_manifest(package.manifest)
    settings.update({key: value for key, value in options.items() if value is not None})
    # An exported (CPU-only) backend named explicitly makes "auto" mean the CPU.
    cpu_only = str(settings.get("backend", "torch")).lower() in CPU_BACKENDS
    name = device_name("cpu" if cpu_only and str(device) == "auto" else device)
    weight_files = getattr(package, "weight_files", None)
    if weight_files and getattr(package, "sha256", None):
        settings.setdefault("export_identities", [f"{package.sha256}:{Path(f).name}" for f in weight_files])

    def load() -> list:
        return list(package.load_networks(import_torch().device(name)))

    networks = LazyNetworks(load, len(weight_files)) if weight_files else LazyNetworks.of(load())
    return networks, name, settings


def cascade_settings(package: Any, device: Any, options: Mapping[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """:func:`package_settings` for the package's dedicated coarse network (manifest ``cascade``).

    Same inputs, output type, backend and window batch as the package's networks and the
    manifest's overlap (a user's ``overlap`` is about the full-resolution windows); the
    coarse network's own architecture and window; its own export cache entry.
    """
    from tumorseg_core.inference.backends import LazyNetworks
    from tumorseg_core.inference.devices import import_torch

    spec = package.manifest.cascade
    networks, name, settings = package_settings(package, device, options)
    del networks  # the full-resolution networks are not needed here
    kwargs = dict(spec.kwargs)
    settings.update(patch_size_zyx=tuple(spec.patch_size_zyx), size_divisor=_size_divisor(spec.architecture, kwargs),
                    tta=False, export_identities=[f"{package.sha256}:{spec.weights}"])
    if kwargs.get("out_channels") is not None:
        settings["num_outputs"] = int(kwargs["out_channels"])

    def load() -> list:
        return [package.load_cascade_network(import_torch().device(name))]

    return LazyNetworks(load, 1), name, settings
