"""Radial intensity profile around a seed and the lesion's levels derived from it.

The median intensity in thin spherical shells around the seed is robust to lobulation,
satellites and a vessel crossing a shell: it changes sharply where half of the shell
leaves the lesion. From that profile :func:`analyse_profile` finds

* the outer boundary radius of the lesion: the first sharp transition after which the
  profile stays at one level (the surrounding organ), or, for a rim or necrotic lesion,
  the outer edge of the rim (a layer brighter or darker than both the core and the
  organ);
* the organ level ``background`` (median of the shell [1.3 r, 2 r]), the level of the
  lesion's outer layer ``outer`` and of its core ``core``.

numpy only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

STEP_MM = 0.5  # shell width of the profile
EDGE_HALF_MM = 1.0  # a transition is measured over +-1 mm
LAYER_RATIO = 0.22  # a rim differs from the organ by at least this fraction of its contrast to the core
MIN_RADIUS_MM = 2.5  # smallest lesion radius looked for (the centre shells hold few voxels)
BLOB_MIN_CNR = 4.0  # a blob's contrast to its surrounding shell is at least this many noise sigmas ...
BLOB_FALL = 0.6  # ... and falls below this fraction of it farther out ...
BLOB_DOMINANCE = 0.25  # ... and is at least this fraction of any contrast farther out (not a bump of texture
#                        inside a larger, far more contrasted lesion)


@dataclass
class Levels:
    """What the profile says about the lesion under the seed."""

    radius: float  # outer boundary radius (mm), half-level crossing of the outer layer
    background: float  # level of the surrounding tissue
    outer: float  # level of the lesion's outer layer (the whole lesion for a plain one)
    core: float  # level at the seed (equals ``outer`` for a plain lesion)
    layered: bool  # a rim (layer) around a core of a different level
    rim: bool = False  # the outer layer was found as a rim between two edges
    enclosed: bool = False  # a lesion inside an organ that lies in a thin layer around it


@dataclass
class Shells:
    """The voxels of a distance map (mm, any shape) grouped by profile shell, computed once per map.

    ``order`` holds the flat indices of the voxels with distance below ``counts.size *``
    :data:`STEP_MM`, shell by shell (stable within a shell); ``bins`` their shell numbers
    (in that order) and ``counts`` the voxels per shell.
    """

    order: np.ndarray
    bins: np.ndarray
    counts: np.ndarray


def make_shells(dist: np.ndarray, max_radius: float) -> Shells:
    """:class:`Shells` of ``dist`` up to ``max_radius`` mm (a radix sort of the shell numbers)."""
    n = int(np.ceil(max_radius / STEP_MM))
    flat = dist.ravel()
    inside = np.flatnonzero(flat < n * STEP_MM)
    bins = (flat[inside] / STEP_MM).astype(np.uint16 if n < 65536 else np.int64)
    perm = np.argsort(bins, kind="stable")
    return Shells(inside[perm], bins[perm], np.bincount(bins, minlength=n)[:n])


def radial_profile(values: np.ndarray, dist: np.ndarray, max_radius: float, shells: Optional[Shells] = None,
                   below: Optional[float] = None) -> np.ndarray:
    """Median of ``values`` in shells of :data:`STEP_MM` around the seed (NaN where empty, then filled).

    ``values`` and ``dist`` have one shape; ``shells`` (:func:`make_shells` of ``dist`` for at
    least ``max_radius``) saves sorting ``dist`` again; only voxels with ``dist < below`` count
    when ``below`` is given.
    """
    n = int(np.ceil(max_radius / STEP_MM))
    sh = shells if shells is not None and shells.counts.size >= n else make_shells(dist, max_radius)
    total = int(sh.counts[:n].sum())
    order, bins = sh.order[:total], sh.bins[:total]
    counts = sh.counts[:n]
    if below is not None:
        keep = dist.ravel()[order] < below
        order, bins = order[keep], bins[keep]
        counts = np.bincount(bins, minlength=n)[:n]
    vals = values.ravel()[order].astype(np.float64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    prof = np.full(n, np.nan)
    ok = counts > 0
    for i in np.flatnonzero(ok):
        c, s0 = int(counts[i]), int(starts[i])
        lo, hi = (c - 1) // 2, c // 2
        part = np.partition(vals[s0:s0 + c], (lo, hi)) if c > 2 else np.sort(vals[s0:s0 + c])
        prof[i] = 0.5 * (part[lo] + part[hi])
    if not ok.all():  # shells thinner than the voxels near the seed: interpolate
        idx = np.arange(n)
        prof = np.interp(idx, idx[ok], prof[ok])
    return prof


def _at(prof: np.ndarray, r: float) -> int:
    return int(np.clip(round(r / STEP_MM - 0.5), 0, prof.size - 1))


def _span(prof: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Profile values of the shells with centres in [r0, r1] (at least one shell)."""
    i0, i1 = _at(prof, r0), _at(prof, r1)
    return prof[i0:max(i1, i0) + 1]


def _step(prof: np.ndarray, r: float) -> float:
    """Profile change across +-1 mm around ``r``."""
    h = int(round(EDGE_HALF_MM / STEP_MM))
    i = _at(prof, r)
    return float(prof[min(i + h, prof.size - 1)] - prof[max(i - h, 0)])


def _candidates(prof: np.ndarray, noise: float, r_max: float) -> list[tuple[float, float]]:
    """Radii (mm) and step sizes of local extrema of the +-1 mm transition, inside out."""
    h = int(round(EDGE_HALF_MM / STEP_MM))
    step = np.full(prof.size, 0.0)
    step[h:-h] = prof[2 * h:] - prof[:-2 * h]
    mag = np.abs(step)
    out = []
    for i in range(max(h, _at(prof, MIN_RADIUS_MM)), min(prof.size - h, _at(prof, r_max) + 1)):
        if mag[i] >= 2.0 * noise and mag[i] >= mag[i - 1] and mag[i] > mag[i + 1]:
            out.append(((i + 0.5) * STEP_MM, float(step[i])))
    return out


@dataclass
class _Edge:
    radius: float
    inner: float  # level just inside
    background: float  # level of the shell [1.3 r + 1, 2 r + 2] (or the thinner one)
    thin: bool = False  # measured on the thinner shell just outside the edge


def _check_edge(prof: np.ndarray, r: float, noise: float) -> Optional[_Edge]:
    """An edge at ``r`` with a flat surrounding beyond it, or None.

    The surrounding is the shell [1.3 r + 1, 2 r + 2]; for a large lesion in a small organ
    that shell reaches past the organ, so a thinner one just outside the edge is tried too.
    """
    for k, (lo, hi) in enumerate(_surroundings(r)):
        edge = _edge_with_surrounding(prof, r, noise, lo, hi)
        if edge is not None:
            edge.thin = k > 0
            return edge
    return None


def _surroundings(r: float) -> tuple[tuple[float, float], ...]:
    """Shells (mm) where the organ around a lesion of radius ``r`` is measured, preferred first."""
    return (1.3 * r + 1.0, 2.0 * r + 2.0), (r + 2.0, max(1.5 * r + 2.0, r + 5.0))


def _edge_with_surrounding(prof: np.ndarray, r: float, noise: float, lo: float, hi: float) -> Optional[_Edge]:
    far = _span(prof, lo, hi)
    bg = float(np.median(far))
    inner_vals = _span(prof, max(r - 2.5, 0.4 * r), r - 1.0)
    sign = 1.0 if float(np.median(inner_vals)) >= bg else -1.0
    inner = bg + sign * float(np.max(sign * (inner_vals - bg)))
    contrast = abs(inner - bg)
    if contrast < 4.0 * noise:
        return None
    if abs(_step(prof, r)) < 0.4 * contrast:
        return None  # a slow drift (texture, bias), not an edge
    near = _span(prof, r + 1.5, max(lo, r + 3.0))
    if float(np.max(np.abs(near - bg))) > 0.35 * contrast:
        return None  # the profile goes on changing beyond r: not the lesion's edge
    spread = 1.4826 * float(np.median(np.abs(far - bg)))
    if spread > 0.2 * contrast:
        return None  # no single surrounding level
    return _Edge(r, inner, bg)


def _drop_internal(edges: list[_Edge], noise: float) -> list[_Edge]:
    """Drop leading weak edges that lie inside a much stronger later edge.

    Inside a large lesion a bias drift or texture can pass as a faint edge; when a later
    edge has five times its contrast and both of its levels lie on the lesion's side of
    that edge's half level, it is a transition within the lesion.
    """
    while len(edges) > 1:
        e0 = edges[0]
        c0 = abs(e0.inner - e0.background)
        inside = False
        for e in edges[1:]:
            c, half = abs(e.inner - e.background), 0.5 * (e.inner + e.background)
            sign = 1.0 if e.inner >= e.background else -1.0
            if (c0 < 0.2 * c and c0 < 8.0 * noise and sign * (e0.inner - half) > 0
                    and sign * (e0.background - half) > 0):
                inside = True
                break
        if not inside:
            break
        logger.debug("edge at %.1f mm (contrast %.3g) lies inside a stronger one", e0.radius, c0)
        edges = edges[1:]
    return edges


def _half_crossing(prof: np.ndarray, lo: float, hi: float, level: float, sign: float) -> float:
    """Outermost radius in [lo, hi] where ``sign * (prof - level)`` goes from > 0 to <= 0."""
    i0, i1 = _at(prof, lo), _at(prof, hi)
    above = sign * (prof[i0:i1 + 1] - level) > 0
    if not above.any():
        return lo
    k = int(np.nonzero(above)[0][-1]) + i0
    if k + 1 >= prof.size:
        return (k + 0.5) * STEP_MM
    a, b = sign * (prof[k] - level), sign * (prof[k + 1] - level)
    frac = a / (a - b) if a != b else 0.5
    return (k + 0.5 + float(np.clip(frac, 0.0, 1.0))) * STEP_MM


def analyse_profile(prof: np.ndarray, core_level: float, noise: float, r_max: float,
                    fine: Optional[np.ndarray] = None, skip_internal: bool = True) -> Optional[Levels]:
    """Lesion boundary and levels from the profile, or None when no lesion edge is found.

    ``core_level`` is the (robust) intensity at the seed, ``noise`` the noise of the
    smoothed image, ``r_max`` the largest lesion radius considered; ``fine`` is the
    profile of a less smoothed image, where a thin rim keeps its true level;
    ``skip_internal`` drops faint edges lying inside a much stronger one.
    """
    edges = []
    for r, _ in _candidates(prof, noise, r_max):
        e = _check_edge(prof, r, noise)
        if e is not None:
            edges.append(e)
    if not edges:
        return None
    if skip_internal:
        edges = _drop_internal(edges, noise)
    first = edges[0]
    # A rim: a later edge whose inside (the layer between both edges) is an extreme,
    # brighter (or darker) than both the core and the surrounding organ, and not thicker
    # than the core it encloses allows.
    base = prof if fine is None else fine[:prof.size]
    smooth = np.convolve(np.pad(base, 1, mode="edge"), np.ones(3) / 3.0, mode="valid")
    for e in edges[1:]:
        if e.radius > 2.6 * first.radius + 3.0:
            break
        if e.thin:
            continue  # an organ's own boundary close behind: not a rim's outer edge
        layer = _span(smooth, first.radius + 0.5, e.radius - 0.5)
        sign = 1.0 if e.inner >= e.background else -1.0
        peak = e.background + sign * float(np.max(sign * (layer - e.background)))
        to_core, to_bg = sign * (peak - first.inner), sign * (peak - e.background)
        held = float(np.mean(sign * (layer - 0.5 * (peak + e.background)) > 0))
        if (to_core > 4.0 * noise and 6.0 * noise < to_bg <= 1.8 * to_core and to_bg >= LAYER_RATIO * to_core
                and held >= 0.5):
            radius = _half_crossing(prof, first.radius, e.radius + 2.0, 0.5 * (peak + e.background), sign)
            logger.debug("layered lesion: core %.4g layer %.4g organ %.4g, r %.1f", core_level, peak,
                         e.background, radius)
            return Levels(radius, e.background, peak, core_level, True, rim=True)
    sign = 1.0 if first.inner >= first.background else -1.0
    radius = _half_crossing(prof, 0.0, first.radius + 2.0, 0.5 * (first.inner + first.background), sign)
    outer = first.inner
    if sign * (core_level - first.background) > sign * (outer - first.background):
        outer = core_level  # the seed is the lesion's extreme (peak blurred in the profile)
    layered = sign * (core_level - first.background) < 0.5 * abs(outer - first.background)
    return Levels(max(radius, MIN_RADIUS_MM), first.background, outer, core_level, layered)


def refine_levels(prof: np.ndarray, lv: Levels) -> Levels:
    """Levels of ``lv`` re-measured on a less smoothed profile (thin rims keep their peak)."""
    r = lv.radius
    # The surrounding shell that agrees with the coarse profile's organ level.
    bg = min((float(np.median(_span(prof, lo, hi))) for lo, hi in _surroundings(r)),
             key=lambda v: abs(v - lv.background))
    sign = 1.0 if lv.outer >= lv.background else -1.0
    # A thin rim's peak is a single shell or two: take it as is; a plain lesion's inside is
    # smoothed over 1.5 mm.
    smooth = prof if lv.layered else np.convolve(np.pad(prof, 1, mode="edge"), np.ones(3) / 3.0, mode="valid")
    band = _span(smooth, 0.3 * r if lv.layered else 0.0, max(r - 0.5, 0.5))
    outer = bg + sign * max(float(np.max(sign * (band - bg))), 0.0)
    if not lv.layered and sign * (lv.core - bg) > sign * (outer - bg):
        outer = lv.core
    if sign * (outer - bg) < 0.5 * abs(lv.outer - lv.background):
        return lv  # too noisy to re-measure
    radius = _half_crossing(prof, 0.0, r + 2.0, 0.5 * (outer + bg), sign)
    return Levels(max(radius, MIN_RADIUS_MM), bg, outer, lv.core, lv.layered, lv.rim, lv.enclosed)


def core_in_organ(prof: np.ndarray, lv: Levels) -> Levels:
    """Reinterpret layered levels whose "outer layer" is an organ: the lesion is the core.

    Its edge is the outermost half-level crossing between the core and the organ inside
    ``lv.radius``; the organ's level is ``lv.outer``.
    """
    sign = 1.0 if lv.core >= lv.outer else -1.0
    radius = _half_crossing(prof, 0.0, lv.radius, 0.5 * (lv.core + lv.outer), sign)
    return Levels(max(radius, MIN_RADIUS_MM), lv.outer, lv.core, lv.core, False, enclosed=True)


def blob_radius(values: np.ndarray, shells: Shells, limit: float, noise: float) -> Optional[float]:
    """Radius (mm) of a compact blob around the seed that the profile's edge test missed, or None.

    Scale selection on mean intensities: for each radius ``r`` up to ``limit``, the contrast
    ``|mean(ball r) - mean(shell r .. r + max(2 mm, r / 2))|``. A blob of radius R gives a
    peak at about R (inside it the shell is still lesion, beyond it the ball is diluted by
    tissue). The first peak of at least :data:`BLOB_MIN_CNR` times ``noise`` (the smoothed
    image's voxel noise) after which the contrast falls below :data:`BLOB_FALL` of it
    within ``limit``, and which no contrast farther out exceeds by more than 1 /
    :data:`BLOB_DOMINANCE`, is returned; a contrast that keeps rising (a larger structure) gives None.
    """
    n = min(int(np.ceil((limit + max(2.0, 0.5 * limit)) / STEP_MM)), shells.counts.size)
    total = int(shells.counts[:n].sum())
    sums = np.bincount(shells.bins[:total], weights=values.ravel()[shells.order[:total]].astype(np.float64),
                       minlength=n)[:n]
    csum, ccount = np.cumsum(sums), np.cumsum(shells.counts[:n]).astype(np.float64)
    radii = np.arange(MIN_RADIUS_MM - 1.0, limit + 1e-9, STEP_MM)
    contrast = np.zeros(radii.size)
    for j, r in enumerate(radii):
        i_in = min(int(round(r / STEP_MM)), n) - 1
        i_out = min(int(round((r + max(2.0, 0.5 * r)) / STEP_MM)), n) - 1
        if i_in < 0 or i_out <= i_in or ccount[i_in] == 0:
            continue
        inside = csum[i_in] / ccount[i_in]
        shell = (csum[i_out] - csum[i_in]) / max(ccount[i_out] - ccount[i_in], 1.0)
        contrast[j] = abs(inside - shell)
    for j in range(1, radii.size - 1):
        c = contrast[j]
        if c < BLOB_MIN_CNR * noise or c < contrast[j - 1] or c < contrast[j + 1]:
            continue
        later = contrast[j + 1:]
        if (later < BLOB_FALL * c).any() and c >= BLOB_DOMINANCE * later.max():
            return float(radii[j])
    return None
