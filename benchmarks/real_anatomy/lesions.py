"""Realistic simulated lesions, inserted into a real volume on its own grid.

A lesion is a noise-perturbed sphere: its surface is ``|p - c| / R = 1 + a1 n1(p) + a2 n2(p)``
with ``n1`` a smooth random field (correlation 0.35 R: lobulation) and ``n2`` a fine one
(1.5 mm: infiltrative fingers). The occupancy falls from 1 to 0 over ``edge_mm`` across
that surface (partial volume), is cut to the brain (a lesion touching bone or ventricles
takes their boundary), and the truth is occupancy >= 0.5. Intensities are relative to the
local tissue (median and spread of the brain 1.5-2.5 R around the centre) in units of the
volume's tissue contrast ``unit`` (MRI: white matter minus CSF; CT: 25 HU). Kinds:

- ``rim``: heterogeneous enhancing rim (+0.6-1.3 unit) around a CSF-like necrotic core;
- ``solid``: brighter or darker (0.35-0.8 unit), textured;
- ``infiltrative``: irregular margin (fine-noise amplitude 0.15-0.3), contrast fading to the edge;
- ``low_contrast``: 0.1-0.2 unit from the local tissue, little texture.

``rim`` and ``infiltrative`` lesions get an unlabelled oedema halo (darker, out to 1.6 R)
half of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from benchmarks.real_anatomy.tissue import largest_component

LESION_KINDS: tuple[str, ...] = ("rim", "solid", "infiltrative", "low_contrast")


@dataclass
class LesionSpec:
    """What to insert: kind, centre (LPS mm), nominal diameter (mm)."""

    kind: str
    placement: str
    center_lps: tuple[float, float, float]
    diameter_mm: float


def _unit_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _box(center_index_zyx: np.ndarray, half_vox: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    lo = np.maximum(np.floor(center_index_zyx - half_vox).astype(int), 0)
    hi = np.minimum(np.ceil(center_index_zyx + half_vox).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def insert_lesion(
    array: np.ndarray,
    label: np.ndarray,
    brain: np.ndarray,
    spacing_zyx: np.ndarray,
    center_index_zyx: np.ndarray,
    spec: LesionSpec,
    unit: float,
    rng: np.random.Generator,
    lesion_id: int = 1,
) -> float:
    """Insert one lesion into ``array`` (float32, z, y, x) and ``label`` (uint8, set to ``lesion_id``) in place.

    ``center_index_zyx`` is the centre as a continuous (z, y, x) index of ``array``;
    ``brain`` bounds the lesion. The truth is one 26-connected piece (what the brain cut
    off from it is dropped, from the image too). Returns the lesion's truth volume in mm^3.
    """
    radius = spec.diameter_mm / 2.0
    infiltrative = spec.kind == "infiltrative"
    a1 = rng.uniform(0.15, 0.3) if infiltrative else rng.uniform(0.05, 0.15)
    a2 = rng.uniform(0.15, 0.3) if infiltrative else 0.0
    edge_mm = rng.uniform(1.5, 3.0) if infiltrative else rng.uniform(0.8, 1.5)
    box = _box(center_index_zyx, (radius * (1.9 + a1 + a2) + 2 * edge_mm + 2.0) / spacing_zyx, array.shape)
    grids = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    offset = np.stack([(g - c) * sp for g, c, sp in zip(grids, center_index_zyx, spacing_zyx)])  # (3, ...) mm
    dist = np.sqrt((offset ** 2).sum(axis=0))
    shape = dist.shape
    n1 = _unit_field(rng, shape, np.maximum(0.35 * radius / spacing_zyx, 0.5))
    n2 = _unit_field(rng, shape, np.maximum(1.5 / spacing_zyx, 0.5)) if a2 else 0.0
    surface = radius * (1.0 + a1 * n1 + a2 * n2)
    rnorm = dist / np.maximum(surface, 0.5)
    brain_box = ndimage.gaussian_filter(brain[box].astype(np.float32), 0.7)
    occ = np.clip(0.5 - (dist - surface) / edge_mm, 0.0, 1.0) * np.clip(2.0 * brain_box, 0.0, 1.0)
    truth = largest_component(occ >= 0.5)
    occ = occ * ndimage.binary_dilation(truth, iterations=2)  # pieces cut off by the brain's shape go

    local = array[box]
    ring = brain[box] & (dist > 1.5 * radius) & (dist < 2.5 * radius)
    if ring.sum() < 20:
        ring = brain[box]
    if not ring.any():
        return 0.0
    m = float(np.median(local[ring]))
    texture = _unit_field(rng, shape, np.maximum(rng.uniform(1.0, 3.0) / spacing_zyx, 0.5))
    sign = 1.0 if rng.uniform() < 0.6 else -1.0
    if spec.kind == "rim":
        inner = rng.uniform(0.45, 0.75)
        rim = 1.0 / (1.0 + np.exp(-(rnorm - inner) / 0.06))
        rim_value = m + unit * rng.uniform(0.6, 1.3) * (1.0 + 0.25 * texture)
        core_value = m - unit * rng.uniform(0.4, 0.9) + 0.1 * unit * texture
        value = rim * rim_value + (1.0 - rim) * core_value
    elif spec.kind == "solid":
        value = m + sign * unit * rng.uniform(0.35, 0.8) + unit * rng.uniform(0.1, 0.2) * texture
    elif infiltrative:
        fade = np.clip(1.0 - 0.6 * rnorm ** 2, 0.2, 1.0)
        value = m + sign * unit * rng.uniform(0.25, 0.5) * fade + 0.12 * unit * texture
    else:
        value = m + sign * unit * rng.uniform(0.1, 0.2) + 0.05 * unit * texture
    keep = 0.3 * (local - m)  # a little of the anatomy's own texture shows through
    if spec.kind in ("rim", "infiltrative") and rng.uniform() < 0.5:
        halo = np.clip((1.6 - rnorm) / 0.3, 0.0, 1.0) * (1.0 - occ) * brain_box
        local = local - halo * unit * rng.uniform(0.1, 0.25)
    array[box] = (local * (1.0 - occ) + (value + keep) * occ).astype(array.dtype)
    label[box] = np.where(truth, np.asarray(lesion_id, label.dtype), label[box])
    return float(truth.sum() * np.prod(spacing_zyx))
