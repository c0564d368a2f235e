"""Random anatomy-like scenes: body, organ, organ-like blobs, vessels and lesions (LPS mm)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from tumorseg_core.synthetic.shapes import Grid, Lesion3D, RadialShape, Tube, random_rotation

logger = logging.getLogger(__name__)


@dataclass
class Scene:
    """Everything geometric about a phantom; intensities are chosen per modality later."""

    body: RadialShape
    fat_inner: RadialShape  # inside it is soft tissue, between it and ``body`` subcutaneous fat
    organ: RadialShape
    blobs: list[tuple[str, RadialShape]] = field(default_factory=list)  # (tissue, shape)
    vessels: list[Tube] = field(default_factory=list)
    lesions: list[Lesion3D] = field(default_factory=list)

    @property
    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical axis-aligned box (lo, hi) holding the body (its axes are the LPS axes)."""
        r = np.abs(self.body.rotation) @ self.body.semi_axes * (1.0 + np.abs(self.body.amps).sum())
        return self.body.center - r, self.body.center + r


def _body_semi_axes(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Semi-axes (LPS) of a body ellipsoid that fits inside the (possibly oblique) grid box.

    Start from the grid's physical bounding box proportions, then scale so the
    ellipsoid's support along every grid axis stays within 85 % of the half extent.
    """
    d = grid.direction
    half = grid.half_extent
    aabb = np.abs(d) @ half  # physical half extent along L, P, S
    a = aabb * rng.uniform(0.85, 1.0, size=3)
    support = np.sqrt(((a[:, None] * d) ** 2).sum(axis=0))  # along each grid axis k
    return a * float(np.min(0.85 * half / support))


def _vessel_distance(c: np.ndarray, vessels: list[Tube]) -> float:
    """Distance (mm) from point ``c`` to the surface of the nearest vessel."""
    best = np.inf
    for tube in vessels:
        for a, b in tube.segments():
            ab = b - a
            t = float(np.clip((c - a) @ ab / max(float(ab @ ab), 1e-9), 0.0, 1.0))
            best = min(best, float(np.linalg.norm(c - (a + t * ab))) - tube.radius)
    return best


def _place_lesions(rng: np.random.Generator, organ: RadialShape, n: int,
                   radius_range: tuple[float, float], vessels: list[Tube]) -> list[Lesion3D]:
    """Lobulated lesions inside the organ parenchyma, apart from each other and from vessels.

    Keeping lesions surrounded by organ makes the truth unambiguous (a lesion fused with a
    same-intensity neighbour has no visible boundary).
    """
    lo, hi = radius_range
    lesions: list[Lesion3D] = []
    a_min = float(organ.semi_axes.min())
    for _ in range(n):
        r = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # log-uniform: many small, some big
        placed = None
        for attempt in range(480):
            if attempt and attempt % 80 == 0:
                r = max(lo, r * 0.8)  # the organ may be too small for this lesion; shrink it
            q = rng.normal(size=3)
            q *= rng.uniform() ** (1 / 3) / np.linalg.norm(q)
            c = organ.center + organ.rotation @ (q * organ.semi_axes)
            depth = (1.0 - float(organ.normalized_radius(c.reshape(3, 1)).ravel()[0])) * a_min
            relaxed = attempt >= 240  # a small organ: let the lesion bulge out and touch vessels
            if depth < (0.5 if relaxed else 1.0) * r + 2.0:
                continue  # keep the lesion (with its lobules) inside the organ
            if not relaxed and _vessel_distance(c, vessels) < 1.4 * r + 2.0:
                continue  # ...and off the vessels, so its boundary is visible all around
            if any(np.linalg.norm(c - o.main.center) < 1.4 * (r + o.radius_mm) + 3.0 for o in lesions):
                continue
            placed = c
            break
        if placed is None:
            logger.debug("could not place lesion %d of radius %.1f mm; skipped", len(lesions), r)
            continue
        lesions.append(_make_lesion(rng, placed, r))
    return lesions


def _make_lesion(rng: np.random.Generator, center: np.ndarray, r: float) -> Lesion3D:
    """A sphere of radius ``r`` with lobulation, or a main blob with satellites."""
    if rng.uniform() < 0.35 and r > 4.0:
        main = RadialShape.random(rng, center, [0.85 * r] * 3, roughness=rng.uniform(0.03, 0.1))
        sats = []
        for _ in range(int(rng.integers(1, 4))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            rs = 0.85 * r * rng.uniform(0.4, 0.65)
            sats.append(RadialShape(center + u * 0.85 * r * rng.uniform(0.45, 0.7), np.array([rs] * 3)))
        return Lesion3D(main, sats, r)
    elong = rng.uniform(0.85, 1.15, size=3)
    elong /= np.prod(elong) ** (1 / 3)  # keep the volume of the nominal sphere
    main = RadialShape.random(rng, center, r * elong, roughness=rng.uniform(0.0, 0.22),
                              n_waves=int(rng.integers(2, 6)), freq=(1.5, 4.5))
    return Lesion3D(main, [], r)


def _make_vessel(rng: np.random.Generator, body: RadialShape, organ: RadialShape) -> Tube:
    """A smoothly wandering tube that passes through the organ and stays inside the body."""
    start = organ.center + organ.rotation @ (rng.uniform(-0.5, 0.5, size=3) * organ.semi_axes)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    step = float(np.clip(organ.semi_axes.min() * 0.25, 4.0, 12.0))
    halves = []
    for sign in (1.0, -1.0):
        nodes, p, dvec = [], start.copy(), sign * direction
        for _ in range(14):
            dvec = dvec + rng.normal(scale=0.25, size=3)  # random walk of the heading: gentle curves
            dvec /= np.linalg.norm(dvec)
            p = p + step * dvec
            if float(body.normalized_radius(p.reshape(3, 1)).ravel()[0]) > 0.9:
                break
            nodes.append(p)
        halves.append(nodes)
    nodes = halves[1][::-1] + [start] + halves[0]
    radius = float(rng.uniform(1.5, 4.5))
    return Tube(np.array(nodes), radius)


def build_scene(rng: np.random.Generator, grid: Grid, n_lesions: int,
                radius_range: tuple[float, float]) -> Scene:
    """A random scene centred on ``grid``'s centre with up to ``n_lesions`` lesions in the organ."""
    center = grid.center
    body_axes = _body_semi_axes(grid, rng)
    body = RadialShape.random(rng, center, body_axes, roughness=rng.uniform(0.02, 0.05), n_waves=3,
                              freq=(1.0, 2.5), rotate=False)
    fat_inner = RadialShape(body.center, body.semi_axes * rng.uniform(0.82, 0.93), body.rotation,
                            body.omegas, body.amps, body.phases)
    organ_axes = body_axes * rng.uniform(0.5, 0.68, size=3)
    organ_rot = random_rotation(rng)
    # Keep the rotated organ inside the inner body: shrink if its support would leave it.
    support = np.sqrt(((organ_rot * organ_axes[None, :]) ** 2).sum(axis=1))
    organ_axes = organ_axes * min(1.0, float(np.min(0.75 * fat_inner.semi_axes / support)))
    offset = rng.uniform(-0.12, 0.12, size=3) * body_axes
    organ = RadialShape.random(rng, center + offset, organ_axes, roughness=rng.uniform(0.03, 0.1),
                               n_waves=4, freq=(1.0, 3.0))
    organ.rotation = organ_rot
    blobs: list[tuple[str, RadialShape]] = []
    for tissue in ("kidney", "kidney", "bone", "soft_blob"):
        if tissue != "bone" and rng.uniform() < 0.3:
            continue  # not every scene has every blob: variety
        for _ in range(60):
            size = body_axes.min() * rng.uniform(0.12, 0.22)
            axes = size * rng.uniform(0.6, 1.6, size=3)
            q = rng.uniform(-0.65, 0.65, size=3)
            c = center + q * body_axes
            if float(organ.normalized_radius(c.reshape(3, 1)).ravel()[0]) < 1.0 + axes.max() / organ_axes.min():
                continue  # blobs sit beside the organ, not inside it
            if float(fat_inner.normalized_radius(c.reshape(3, 1)).ravel()[0]) > 0.8:
                continue
            blobs.append((tissue, RadialShape.random(rng, c, axes, roughness=0.06, n_waves=3)))
            break
    vessels = [_make_vessel(rng, body, organ) for _ in range(int(rng.integers(1, 4)))]
    lesions = _place_lesions(rng, organ, n_lesions, radius_range, vessels)
    return Scene(body, fat_inner, organ, blobs, vessels, lesions)
