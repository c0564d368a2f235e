"""Turning a scene into an image: tissue intensities per modality, textures, bias, noise.

Intensities: CT in Hounsfield units (air -1000, fat about -100, soft tissue about 40,
lesions 20-60 HU from the organ), MRI in arbitrary units with a random global scale
(so models must normalize), PET in SUV-like units (low background, hot lesions,
scanner blur). Textures are smooth random fields defined on a lattice in physical
space, so they do not depend on the sampling grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from tumorseg_core.synthetic.scene import Scene
from tumorseg_core.synthetic.shapes import Grid, RadialShape, occupancy

logger = logging.getLogger(__name__)

AIR = {"ct": -1000.0, "mri": 0.0, "pet": 0.0}
LESION_KINDS = ("hyper", "hypo", "necrotic", "rim")
# Default contrast kinds and how often they occur; PET lesions are mostly hot.
KIND_WEIGHTS = {
    "ct": {"hyper": 0.3, "hypo": 0.35, "necrotic": 0.2, "rim": 0.15},
    "mri": {"hyper": 0.35, "hypo": 0.3, "necrotic": 0.2, "rim": 0.15},
    "pet": {"hyper": 0.7, "hypo": 0.0, "necrotic": 0.2, "rim": 0.1},
}
NOISE_MID = {"ct": 10.0, "mri": 0.035, "pet": 0.12}  # HU; fraction of organ; Poisson-like factor


class TextureField:
    """Smooth zero-mean, unit-std random field on a physical lattice covering the scene."""

    def __init__(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, corr_mm: float) -> None:
        self.step = max(2.0, corr_mm / 3.0)  # lattice a few times finer than the correlation length
        self.lo = np.asarray(lo, float) - 2 * self.step
        shape = np.ceil((np.asarray(hi) - self.lo) / self.step).astype(int) + 3
        field = ndimage.gaussian_filter(rng.standard_normal(shape[::-1]).astype(np.float32),
                                        corr_mm / self.step, mode="wrap")
        self.values = (field - field.mean()) / max(float(field.std()), 1e-6)  # (z, y, x) lattice

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Trilinear sample at LPS ``points`` (3, ...) -> array (...)."""
        lo = self.lo.reshape(3, *([1] * (points.ndim - 1)))
        idx = ((points - lo) / self.step)[::-1]  # lattice array is (z, y, x)
        flat = idx.reshape(3, -1)
        out = ndimage.map_coordinates(self.values, flat, order=1, mode="nearest", prefilter=False)
        return out.reshape(points.shape[1:]).astype(np.float32)


@dataclass
class LesionLook:
    """How one lesion appears in one modality."""

    kind: str
    delta: float  # main contrast vs the organ (signed, image units)
    core: float  # necrotic core value (absolute) or interior value for rim lesions
    inner_frac: float  # necrotic core radius / rim inner radius, as a fraction of the lesion radius
    hetero: float  # texture amplitude inside the lesion (image units)


def tissue_table(rng: np.random.Generator, modality: str) -> dict[str, tuple[float, float]]:
    """Random mean value and texture amplitude of each tissue for ``modality``."""
    u = rng.uniform
    if modality == "ct":
        organ = u(50, 95)
        return {"fat": (u(-115, -85), 8.0), "soft": (u(30, 50), 8.0), "organ": (organ, u(3, 8)),
                "kidney": (u(120, 190), 10.0), "bone": (u(300, 700), 60.0), "soft_blob": (u(35, 60), 6.0),
                "vessel": (u(140, 230) if u() < 0.7 else u(35, 50), 5.0)}
    if modality == "mri":
        s = u(150, 2000)  # arbitrary scanner scale
        organ = s * u(0.5, 0.8)
        return {"fat": (s * u(0.8, 1.3) if u() < 0.6 else s * u(0.3, 0.6), 0.05 * s),
                "soft": (s * u(0.35, 0.55), 0.04 * s), "organ": (organ, organ * u(0.02, 0.06)),
                "kidney": (s * u(0.3, 1.0), 0.05 * s), "bone": (s * u(0.08, 0.3), 0.03 * s),
                "soft_blob": (s * u(0.4, 1.0), 0.04 * s),
                "vessel": (s * u(0.05, 0.2) if u() < 0.5 else s * u(1.0, 1.4), 0.02 * s)}
    organ = u(1.5, 2.6)
    return {"fat": (u(0.2, 0.45), 0.05), "soft": (u(0.6, 1.0), 0.1), "organ": (organ, organ * 0.06),
            "kidney": (u(3.0, 12.0), 0.5), "bone": (u(0.8, 1.6), 0.1), "soft_blob": (u(1.0, 3.0), 0.15),
            "vessel": (u(1.2, 2.0), 0.05)}


def choose_kinds(rng: np.random.Generator, modality: str, n: int, allowed: Optional[Sequence[str]]) -> list[str]:
    """Contrast kind of each of ``n`` lesions."""
    weights = KIND_WEIGHTS[modality]
    names = [k for k in LESION_KINDS if (allowed is None or k in allowed)]
    p = np.array([weights[k] if allowed is None else max(weights[k], 0.05) for k in names])
    return [str(k) for k in rng.choice(names, size=n, p=p / p.sum())]


def lesion_look(rng: np.random.Generator, modality: str, kind: str, organ: float, radius: float) -> LesionLook:
    """Random appearance parameters of one lesion of contrast ``kind``."""
    u = rng.uniform
    if modality == "ct":
        delta = u(20, 60) * (-1 if kind == "hypo" else 1)
        core = u(0, 20) if kind == "necrotic" else organ - u(15, 30)
    elif modality == "mri":
        delta = organ * (u(0.3, 0.8) if kind != "hypo" else -u(0.3, 0.6))
        core = organ * (u(0.15, 0.45) if kind == "necrotic" else u(0.6, 0.8))
    else:
        delta = organ * (u(1.0, 5.0) if kind != "hypo" else -u(0.4, 0.7))
        core = organ * (u(0.3, 0.8) if kind == "necrotic" else u(1.0, 1.5))
    if kind == "necrotic":
        inner = u(0.4, 0.7)
    else:  # rim lesions: a bright rim at least ~2.5 mm thick so it survives sampling
        inner = 1.0 - max(u(0.15, 0.3), min(0.5, 2.5 / max(radius, 1e-3)))
    return LesionLook(kind, float(delta), float(core), float(inner), abs(float(delta)) * u(0.05, 0.2))


def lesion_values(look: LesionLook, organ: float, nr: np.ndarray, radius: float) -> np.ndarray:
    """Intensity inside a lesion as a function of normalized radius ``nr`` (0 centre, 1 edge)."""
    rim = organ + look.delta
    if look.kind in ("hyper", "hypo"):
        return np.full(nr.shape, rim, dtype=np.float32)
    width = max(0.08, 1.0 / max(radius, 1e-3))  # soft transition, about 1 mm
    t = np.clip((nr - look.inner_frac) / width + 0.5, 0.0, 1.0)  # 0 in the core, 1 in the rim
    return (look.core + (rim - look.core) * t).astype(np.float32)


def bias_values(rng: np.random.Generator, points: np.ndarray, scene: Scene, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field exp(b), |b| <~ amplitude, varying over the body's size."""
    size = float(scene.body.semi_axes.mean()) * 2
    b = np.zeros(points.shape[1:], dtype=np.float32)
    rel = points - scene.body.center.reshape(3, 1, 1, 1).astype(np.float32)
    for _ in range(3):
        k = rng.normal(size=3)
        k *= 2 * np.pi / (np.linalg.norm(k) * size * rng.uniform(1.2, 3.0))
        b += np.cos(k[0] * rel[0] + k[1] * rel[1] + k[2] * rel[2] + rng.uniform(0, 2 * np.pi))
    return np.exp(b * (amplitude / 3.0 * 1.7)).astype(np.float32)


def _blend(img: np.ndarray, region: tuple, occ: np.ndarray, value: np.ndarray) -> None:
    """Composite ``value`` over ``img[region]`` with coverage ``occ`` (partial volume)."""
    sub = img[region]
    sub += occ * (value - sub)


def render(scene: Scene, grid: Grid, modality: str, rng_int: np.random.Generator,
           rng_noise: np.random.Generator, kinds: list[str], *, noise: Optional[float],
           bias_field: Optional[float], partial_volume: bool) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Render ``scene`` on ``grid``: returns image (z,y,x) float32, truth (z,y,x) uint8, lesion volumes mm^3."""
    pv = partial_volume
    table = tissue_table(rng_int, modality)
    lo, hi = scene.bbox
    tex = (TextureField(rng_int, lo, hi, rng_int.uniform(3.0, 6.0)),
           TextureField(rng_int, lo, hi, rng_int.uniform(8.0, 16.0)))
    mix = {t: rng_int.uniform(0, np.pi / 2) for t in list(table) + ["lesion"]}
    looks = [lesion_look(rng_int, modality, k, table["organ"][0], les.radius_mm)
             for k, les in zip(kinds, scene.lesions)]
    img = np.full(grid.shape_zyx, AIR[modality], dtype=np.float32)
    truth = np.zeros(grid.shape_zyx, dtype=np.uint8)
    region = grid.region_for_box(lo, hi)
    if region is None:
        return img, truth, [0.0] * len(scene.lesions)
    pts = grid.points(region)
    t_fine, t_coarse = tex[0].sample(pts), tex[1].sample(pts)

    def textured(tissue: str, sub: tuple) -> np.ndarray:
        mean, amp = table[tissue] if tissue != "lesion" else (0.0, 1.0)
        a = mix[tissue]
        return mean + amp * (np.cos(a) * t_fine[sub] + np.sin(a) * t_coarse[sub])

    def local(center: np.ndarray, radius: float) -> Optional[tuple[tuple, tuple]]:
        # Region of a ball, as slices of the grid and of ``pts`` (which starts at ``region``).
        r = grid.region_for_ball(center, radius + 2 * max(grid.spacing_xyz))
        if r is None:
            return None
        r = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(r, region))
        if any(s.stop <= s.start for s in r):
            return None
        sub = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(r, region))
        return r, sub

    full_sub = (slice(None),) * 3
    for tissue, shape in (("fat", scene.body), ("soft", scene.fat_inner)):
        d, w, _ = shape.evaluate(pts, grid)
        _blend(img, region, occupancy(d, w, pv), textured(tissue, full_sub))
    shapes: list[tuple[str, RadialShape]] = [("organ", scene.organ)] + scene.blobs
    for tissue, shape in shapes:
        loc = local(shape.center, shape.bound_radius)
        if loc is not None:
            d, w, _ = shape.evaluate(pts[(slice(None),) + loc[1]], grid)
            _blend(img, loc[0], occupancy(d, w, pv), textured(tissue, loc[1]))
    for tube in scene.vessels:
        for a, b in tube.segments():
            loc = local((a + b) / 2, float(np.linalg.norm(b - a)) / 2 + tube.radius)
            if loc is not None:
                d, w = tube.evaluate_segment(a, b, pts[(slice(None),) + loc[1]], grid)
                _blend(img, loc[0], occupancy(d, w, pv), textured("vessel", loc[1]))
    volumes = []
    voxel_mm3 = float(np.prod(grid.spacing_xyz))
    organ_value = table["organ"][0]
    for les, look in zip(scene.lesions, looks):
        loc = local(les.main.center, les.bound_radius)
        if loc is None:
            volumes.append(0.0)
            continue
        d, w, nr = les.evaluate(pts[(slice(None),) + loc[1]], grid)
        value = lesion_values(look, organ_value, nr, les.radius_mm) + look.hetero * textured("lesion", loc[1])
        _blend(img, loc[0], occupancy(d, w, pv), value)
        inside = d <= 0
        truth[loc[0]] |= inside.astype(np.uint8)
        volumes.append(float(inside.sum()) * voxel_mm3)
    _acquire(img, grid, scene, modality, rng_noise, table["organ"][0], noise, bias_field, region, pts)
    return img, truth, volumes


def _acquire(img: np.ndarray, grid: Grid, scene: Scene, modality: str, rng: np.random.Generator,
             organ: float, noise: Optional[float], bias_field: Optional[float], region: tuple,
             pts: np.ndarray) -> None:
    """Scanner effects in place: PET blur, multiplicative bias field, noise."""
    air = AIR[modality]
    if modality == "pet":  # scanner resolution: Gaussian PSF of 5-7 mm FWHM
        fwhm = rng.uniform(5.0, 7.0)
        sigma = [fwhm / 2.355 / s for s in grid.spacing_xyz[::-1]]
        img[...] = ndimage.gaussian_filter(img, sigma, mode="nearest")
    amp = bias_field if bias_field is not None else (rng.uniform(0.05, 0.25) if modality == "mri" else 0.0)
    if amp:
        sub = img[region]
        sub[...] = air + (sub - air) * bias_values(rng, pts, scene, float(amp))
    level = noise if noise is not None else rng.uniform(0.6, 1.5)
    if level <= 0:
        return
    sigma = NOISE_MID[modality] * level
    if modality == "ct":
        img += rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    elif modality == "mri":  # Rician: magnitude of a complex signal with Gaussian noise
        s = sigma * organ
        re = img + rng.normal(0.0, s, size=img.shape).astype(np.float32)
        im = rng.normal(0.0, s, size=img.shape).astype(np.float32)
        img[...] = np.sqrt(re * re + im * im)
    else:  # PET: variance grows with activity (Poisson-like counts), never negative
        s = sigma * np.sqrt(np.maximum(img, 0.0) * organ + 0.01 * organ * organ)
        img[...] = np.maximum(img + rng.normal(0.0, 1.0, size=img.shape).astype(np.float32) * s, 0.0)
