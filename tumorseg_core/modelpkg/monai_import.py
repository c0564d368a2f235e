"""Import a MONAI bundle (folder or zip) as an ordinary TumorSeg model package.

:func:`import_bundle` reads the bundle as data (:func:`~tumorseg_core.modelpkg.monai_bundle.open_bundle`:
the config is never evaluated, ``models/model.pt`` is read weights-only and loaded strictly
into the allowlisted network) and writes a package whose ``monai`` section
(:mod:`tumorseg_core.modelpkg.monai_section`) holds the bundle's preprocessing, inferer and
postprocessing in its own order, so :mod:`tumorseg_core.inference.monai_pipeline` can run
it as ``monai.bundle run`` does. The README carries the bundle's licence and references.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.imaging.segments import NEOPLASM_TERMINOLOGY, auto_color
from tumorseg_core.modelpkg import monai_bundle as mb
from tumorseg_core.modelpkg.monai_config import refuse
from tumorseg_core.modelpkg.monai_section import check_monai_section, section_json
from tumorseg_core.models.registry import size_divisor

logger = logging.getLogger(__name__)

#: A package with a ``monai`` section needs a reader that knows it (older ones would run the
#: network without the bundle's preprocessing).
MONAI_FORMAT_VERSION = 4
_TUMOR_WORDS = ("tumor", "tumour", "lesion", "neoplasm", "cancer", "metasta", "enhancing", "necro")
# SNOMED CT codes given only where the segment name says exactly what it is.
_ANATOMY = {
    "spleen": ["SCT", "78961009", "Spleen"],
    "liver": ["SCT", "10200004", "Liver"],
    "pancreas": ["SCT", "15776009", "Pancreas"],
}
_ANATOMY_CATEGORY = ["SCT", "123037004", "Anatomical Structure"]


def _terminology(name: str) -> Optional[Dict[str, Any]]:
    low = name.strip().lower()
    if low in _ANATOMY:
        return {"category": list(_ANATOMY_CATEGORY), "type": list(_ANATOMY[low])}
    if any(word in low for word in _TUMOR_WORDS) or low in ("tumor core", "whole tumor"):
        return json.loads(json.dumps(NEOPLASM_TERMINOLOGY))
    return None


def _segment(value: int, name: str) -> Dict[str, Any]:
    seg: Dict[str, Any] = {"value": int(value), "name": name, "color": [round(c, 4) for c in auto_color(int(value))]}
    term = _terminology(name)
    if term is not None:
        seg["terminology"] = term
    return seg


# ------------------------------------------------------------------ the section


def _key_channels(spec: mb.BundleSpec) -> List[Dict[str, Tuple[int, ...]]]:
    """For each preprocessing step: ``{data key: network input channels it holds}`` at that step."""
    keys: Dict[str, Tuple[int, ...]] = {}
    for ch in spec.input_channels:
        keys[ch.key] = keys.get(ch.key, ()) + (ch.index,)
    out = []
    for step in spec.preprocessing:
        out.append(dict(keys))
        if isinstance(step, mb.ConcatItems):
            keys[step.name] = tuple(c for k in step.keys for c in keys.get(k, ()))
    return out


def _groups(step: Any, at: Dict[str, Tuple[int, ...]]) -> List[List[int]]:
    return [list(at[k]) for k in step.keys if at.get(k)]


def _spatial(step: Any, at: Dict[str, Tuple[int, ...]], n_in: int) -> bool:
    """Whether a spatial step acts on the network's input (all channels); refuse a partial one."""
    covered = {c for g in _groups(step, at) for c in g}
    if not covered:
        return False
    if len(covered) != n_in:
        raise refuse(f"{step.transform} in preprocessing acts on only some of the network's input channels "
                         f"({sorted(covered)} of {n_in})")
    return True


def bundle_section(spec: mb.BundleSpec) -> Dict[str, Any]:
    """The ``monai`` manifest section (plain JSON) of a bundle's spec."""
    pre: List[Dict[str, Any]] = []
    n_in = spec.in_channels
    for step, at in zip(spec.preprocessing, _key_channels(spec)):
        if isinstance(step, (mb.LoadImage, mb.EnsureChannelFirst, mb.ConcatItems)):
            continue  # these assemble the channels: the manifest's inputs, in order
        if isinstance(step, mb.Orientation):
            if _spatial(step, at, n_in):
                pre.append({"transform": "Orientationd", "axcodes": step.axcodes})
        elif isinstance(step, mb.Spacing):
            if _spatial(step, at, n_in):
                pre.append({"transform": "Spacingd", "pixdim": list(step.pixdim), "mode": step.mode,
                            "padding_mode": step.padding_mode, "align_corners": step.align_corners,
                            "dtype": step.dtype})
        elif isinstance(step, mb.CropForeground):
            if _spatial(step, at, n_in):
                source = at.get(step.source_key)
                if not source:
                    raise refuse(f"CropForegroundd source_key {step.source_key!r} holds none of the network's "
                                     "input channels")
                pre.append({"transform": "CropForegroundd", "source_channels": list(source),
                            "margin": list(step.margin), "allow_smaller": step.allow_smaller,
                            "k_divisible": list(step.k_divisible)})
        else:
            groups = _groups(step, at)
            if not groups:
                continue
            item: Dict[str, Any] = {"transform": step.transform, "groups": groups}
            if isinstance(step, mb.ScaleIntensityRange):
                item.update(a_min=step.a_min, a_max=step.a_max, b_min=step.b_min, b_max=step.b_max, clip=step.clip)
            elif isinstance(step, mb.ScaleIntensity):
                item.update(minv=step.minv, maxv=step.maxv, channel_wise=step.channel_wise)
            elif isinstance(step, mb.NormalizeIntensity):
                item.update(nonzero=step.nonzero, channel_wise=step.channel_wise,
                            subtrahend=list(step.subtrahend) if isinstance(step.subtrahend, tuple) else step.subtrahend,
                            divisor=list(step.divisor) if isinstance(step.divisor, tuple) else step.divisor)
            else:  # pragma: no cover - read_bundle allows nothing else
                raise refuse(f"{step.transform} in preprocessing is not supported")
            pre.append(item)
    post: List[Dict[str, Any]] = []
    for step in spec.postprocessing:
        if isinstance(step, mb.Activations):
            post.append({"transform": "Activationsd", "softmax": step.softmax, "sigmoid": step.sigmoid})
        elif isinstance(step, mb.Invert):
            post.append({"transform": "Invertd", "nearest_interp": step.nearest_interp})
        elif isinstance(step, mb.AsDiscrete):
            post.append({"transform": "AsDiscreted", "argmax": step.argmax, "threshold": step.threshold})
        elif isinstance(step, mb.RegionsToLabels):
            post.append({"transform": "Lambdad", "rules": [list(r) for r in step.rules]})
    spatial = any(s["transform"] in ("Orientationd", "Spacingd", "CropForegroundd") for s in pre)
    if spatial and not any(s["transform"] == "Invertd" for s in post):
        raise refuse("its postprocessing has no Invertd, so MONAI's prediction stays on the resampled grid",
                         "TumorSeg returns labels on the input's grid; add an Invertd of @preprocessing")
    inf = spec.inferer
    section = {
        "bundle": {"name": spec.name, "version": spec.version, "monai_version": spec.monai_version},
        "preprocessing": pre,
        "inferer": {"kind": inf.kind, "roi_size": list(inf.roi_size) if inf.roi_size else None,
                    "sw_batch_size": inf.sw_batch_size,
                    "overlap": list(inf.overlap) if isinstance(inf.overlap, tuple) else inf.overlap,
                    "mode": inf.mode,
                    "sigma_scale": list(inf.sigma_scale) if isinstance(inf.sigma_scale, tuple) else inf.sigma_scale,
                    "padding_mode": inf.padding_mode, "cval": inf.cval},
        "postprocessing": post,
    }
    return section_json(check_monai_section(json.loads(json.dumps(section)), n_in, spec.out_channels))


# ------------------------------------------------------------------ the manifest


def _output(spec: mb.BundleSpec) -> Dict[str, Any]:
    names = [c.name for c in spec.output_channels]
    if spec.output_type == "labels":
        if len(names) < 2:
            raise refuse("a softmax/argmax output needs at least 2 channels (background first)")
        return {"type": "softmax", "labels": [_segment(i, names[i]) for i in range(1, len(names))]}
    rules = next((s.rules for s in spec.postprocessing if isinstance(s, mb.RegionsToLabels)), None)
    by_channel = dict((c, v) for c, v in reversed(rules)) if rules else {}
    values = [by_channel.get(i, i + 1) for i in range(len(names))] if len(by_channel) == len(names) else \
        [i + 1 for i in range(len(names))]
    return {"type": "sigmoid", "regions": [_segment(v, n) for v, n in zip(values, names)]}


def _package_name(spec: mb.BundleSpec, name: Optional[str]) -> str:
    text = name if name is not None else Path(spec.root).name
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:64]
    if not clean:
        clean = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.name).strip("._-")[:64] or "monai_bundle"
    return clean


def _readme(spec: mb.BundleSpec, package_name: str) -> str:
    lines = [f"# {package_name}", "", f"Imported from the MONAI bundle **{spec.name}** version {spec.version or '?'}"
             f" (MONAI {spec.monai_version or '?'}) by TumorSeg.", ""]
    if spec.description:
        lines += [spec.description, ""]
    for title, text in (("Authors", spec.authors), ("Copyright", spec.copyright), ("Intended use", spec.intended_use)):
        if text:
            lines += [f"**{title}:** {text}", ""]
    if spec.references:
        lines += ["## Citation", "", *[f"- {r}" for r in spec.references], ""]
    lines += ["## Licence", "", spec.license_text.strip() or "The bundle states no licence; ask its authors.", ""]
    if spec.data_license_text.strip():
        lines += ["## Training data licence", "", spec.data_license_text.strip(), ""]
    lines += ["## How TumorSeg runs it", "",
              "The manifest's `monai` section holds the bundle's preprocessing, sliding-window inferer and "
              "postprocessing in the bundle's order; TumorSeg reproduces them without evaluating the bundle's "
              "config (its `$` expressions are never run) and loads `models/model.pt` weights-only."]
    if spec.ignored:
        lines += ["", "Read and deliberately not reproduced:", *[f"- {i}" for i in spec.ignored]]
    return "\n".join(lines) + "\n"


def bundle_manifest(spec: mb.BundleSpec, name: Optional[str] = None) -> Dict[str, Any]:
    """The manifest (without ``files``) of a package made from ``spec``."""
    section = bundle_section(spec)
    spacing = list(spec.spacing.pixdim) if spec.spacing is not None else [1.0, 1.0, 1.0]
    divisor = size_divisor(spec.network, spec.network_kwargs)
    roi = list(spec.inferer.roi_size) if spec.inferer.roi_size else [int(d) for d in divisor[::-1]]
    license_line = next((ln.strip() for ln in spec.license_text.splitlines() if ln.strip()), "") or \
        "see README.md (the bundle's licence)"
    overlap = spec.inferer.overlap
    package_name = _package_name(spec, name)
    return {
        "format_version": MONAI_FORMAT_VERSION,
        "name": package_name,
        "version": spec.version or "0",
        "license": license_line[:200],
        "description": (spec.description or f"MONAI bundle {spec.name}")[:1000],
        "architecture": spec.network,
        "kwargs": json.loads(json.dumps(spec.network_kwargs)),
        "inputs": [{"modality": c.name, "normalization": {"type": "none"}} for c in spec.input_channels],
        "spacing": spacing,
        "orientation": spec.orientation,
        "patch_size": roi,
        "output": _output(spec),
        "postprocessing": [],
        "inference": {"overlap": overlap} if isinstance(overlap, float) else {},
        "metrics": {},
        "monai": section,
    }


def import_bundle(source: Union[str, Path], out_dir: Union[str, Path], name: Optional[str] = None,
                  overwrite: bool = False, overrides: Optional[Dict[str, Any]] = None) -> Path:
    """Write the MONAI bundle ``source`` (folder or zip) as a TumorSeg package at ``out_dir``.

    ``name``: the package name (default: the bundle folder's name, made filesystem-safe).
    ``overrides``: config values set before reading (``monai.bundle run --id value``).
    Raises ModelPackageError naming anything the bundle holds that TumorSeg does not reproduce.
    """
    from tumorseg_core.modelpkg.package import write_package

    spec, net = mb.open_bundle(source, overrides=overrides)
    manifest = bundle_manifest(spec, name)
    state = {k: v for k, v in net.state_dict().items()}
    if not state:
        raise ModelPackageError(f"{Path(spec.root).name}: the network has no weights")
    out = write_package(out_dir, manifest, [state], readme=_readme(spec, manifest["name"]), overwrite=overwrite)
    logger.info("imported MONAI bundle %s (%s) into %s", spec.name, spec.network, out)
    return out

