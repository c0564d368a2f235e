"""An interactive segmentation session: clicks, a box and scribbles, each refining the last result.

The session keeps every interaction and re-solves after each one on a near-isotropic
working grid around them (:mod:`.crop`, at most 56^3 voxels), so nothing restarts:

1. a foreground click (or a scribble's middle, or a box's centre) away from the current
   result grows a lesion estimate with the radial-profile grower (:mod:`.seeds`), or, with an
   estimator and for the session's first lesion estimate, the click network's refinement of the
   model-free answer to that click (:mod:`.learned`; not for a small lesion whose edge the grower
   found: the network's 2 mm grid is coarser); the
   estimates size the working grid and are the weak labels; a box marks its outside as
   background; a background click inside an estimate cuts it to the click's distance from its
   seed, on every side (an estimate grown without a lesion edge, a guess, to 0.8 of it);
2. multi-scale intensity and texture features (:mod:`.features`) feed a per-session
   Gaussian-mixture classifier (:mod:`.classifier`) trained on the clicks, scribbles and
   the grid's border (hard labels) and on the estimates (weak labels);
3. the prior is mostly the estimate (its own boundary), the rest the classifier; in the zone
   of a click that contradicts the estimate (a background click inside it, a foreground click
   outside it) the prior may only fall (rise) towards the classifier; it fades with the
   distance from the foreground evidence (lesions are compact);
4. a random walker with that prior (:mod:`.walker`), hard seeds at the clicks, scribbles and
   the grid's border, warm-started from the previous solution;
5. the components touching foreground seeds, holes filled (background clicks stay out), back
   on the image's exact grid by linear interpolation of the walker's potential.

Points are LPS mm. numpy, scipy and SimpleITK only (it runs in Slicer's UI process).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tumorseg_core.errors import InputError
from tumorseg_core.interactive.classifier import foreground_probability
from tumorseg_core.interactive.crop import Crop, make_crop
from tumorseg_core.interactive.features import compute_features, normalise
from tumorseg_core.interactive.learned import Estimator, answer
from tumorseg_core.interactive.morphology import bbox
from tumorseg_core.interactive.points import point_index
from tumorseg_core.interactive.seeds import segment_from_seeds
from tumorseg_core.interactive.walker import edge_weights, solve

logger = logging.getLogger(__name__)

Point = tuple[float, float, float]
CLICK_MM = 2.0  # radius of a click's hard seed
MARGIN_MM = 20.0  # the working grid reaches this far beyond the interactions and the result
MIN_MARGIN_MM = 30.0  # ... and at least this far around a lesion grown from a click
GROW_RADIUS_MM = 60.0  # the radial-profile grower's crop around a click
ZONE_MM = 12.0  # a click contradicting the grown lesion overrides it this far (and nearer than other clicks)
NEW_PART_MM = 4.0  # a foreground click farther than this from the result grows a new part
EXTEND_FALLBACK = True  # a first click without a lesion edge, in a region that goes on, grows past the grower's limit
KEEP_BOUNDED = True  # keep a later click's grown region even when the grower found no lesion edge
CONTRADICT_MM = 2.5  # the previous result's weak labels are dropped this close to a click contradicting it
NEAR_MM = 4.0  # P(foreground) falls to 1/e this far from the foreground evidence ...
NEAR_FRACTION = 0.3  # ... or this fraction of the evidence's radius, when larger
WEAK_WEIGHT = 1.0  # total weight of the weak labels against the hard ones (per class)
GROWN_WEIGHT = 0.8  # weight of the grown lesion in the prior, against the classifier
SHRINK = 0.8  # a background click inside an estimate grown without a lesion edge keeps it within this
#               fraction of the click's distance from the estimate's seed ...
SHRINK_EDGE = 1.0  # ... and inside one grown to a lesion edge, within the click's distance
SMALL_EDGED_ML = 2.0  # with an estimator: a lesion the grower found the edge of and that is smaller than this
#                       (16 mm across: 8 of the click network's 2 mm voxels) keeps the grower's estimate


@dataclass(frozen=True)
class _Grown:
    """A lesion estimate grown from one foreground point; ``bounded``: the grower found no lesion edge."""

    labels: sitk.Image
    seed: Point
    bounded: bool


@dataclass(frozen=True)
class _State:
    """Every interaction so far (each list entry: points, radius mm)."""

    fg_clicks: tuple[Point, ...] = ()
    bg_clicks: tuple[Point, ...] = ()
    fg_strokes: tuple[tuple[tuple[Point, ...], float], ...] = ()
    bg_strokes: tuple[tuple[tuple[Point, ...], float], ...] = ()
    box: Optional[tuple[Point, Point]] = None
    grown: tuple[_Grown, ...] = ()  # lesions grown from foreground clicks that fell outside the result


@dataclass
class _Work:
    """The working grid and what is computed on it once."""

    crop: Crop
    features: np.ndarray  # (F, z, y, x)
    smooth: np.ndarray  # (z, y, x) normalised intensity at 1 mm
    box: Optional[tuple[Point, Point]]  # the box the grid was built for
    potential: Optional[np.ndarray] = None  # last random-walker solution (warm start)
    grown_from: tuple[tuple[_Grown, ...], tuple[Point, ...]] = ((), ())  # the estimates ``grown`` unites, and
    #                                                                   the background clicks that cut them
    grown: Optional[np.ndarray] = None  # their union on the working grid, bool (z, y, x)


def _check_image(image: sitk.Image) -> sitk.Image:
    if not isinstance(image, sitk.Image):
        raise InputError("the session needs a SimpleITK image; load the volume first")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("interactive segmentation needs a 3D single-channel image; pick one volume")
    return image


class InteractiveSession:
    """Clicks, a box and scribbles on one image; ``result`` is uint8 0/1 on exactly its grid.

    With an ``estimator`` (the click network, :mod:`.learned`), a click that grows a lesion estimate
    (step 1) gets the estimator's refinement of the model-free grower's answer instead.
    """

    def __init__(self, image: sitk.Image, estimator: Optional[Estimator] = None) -> None:
        self.image = _check_image(image)
        self.estimator = estimator
        self.result: Optional[sitk.Image] = None
        self._states: list[_State] = []
        self._results: list[sitk.Image] = []
        self._work: Optional[_Work] = None
        self._corner_cache: dict[int, tuple[sitk.Image, list[Point]]] = {}

    # -- interactions ------------------------------------------------------------------
    def add_click(self, point_lps: Sequence[float], foreground: bool = True) -> sitk.Image:
        """Add a foreground (or background) click at an LPS point and return the refined result."""
        p = self._point(point_lps, "foreground click" if foreground else "background click")
        st = self._state()
        if not foreground:
            return self._push(replace(st, bg_clicks=st.bg_clicks + (p,)))
        return self._push(replace(st, fg_clicks=st.fg_clicks + (p,), grown=self._grow(st, p)))

    def set_box(self, corner_a_lps: Sequence[float], corner_b_lps: Sequence[float]) -> sitk.Image:
        """Bound the lesion by a 3D box given by two opposite corners (LPS); replaces an earlier box."""
        a = self._point(corner_a_lps, "box corner")
        b = self._point(corner_b_lps, "box corner")
        ia, ib = point_index(self.image, a), point_index(self.image, b)
        if np.any(np.abs(ia - ib) < 1.0):
            raise InputError("the box is flat (less than a voxel in one direction); drag it over the lesion in 3D")
        st = self._state()
        centre = tuple(float(v) for v in self.image.TransformContinuousIndexToPhysicalPoint(tuple(0.5 * (ia + ib))))
        return self._push(replace(st, box=(a, b), grown=self._grow(replace(st, grown=()), centre, force=True)))

    def add_scribble(self, points_lps: Sequence[Sequence[float]], foreground: bool = True,
                     radius_mm: float = 1.5) -> sitk.Image:
        """Add a painted stroke (a polyline of LPS points, ``radius_mm`` thick) and return the refined result."""
        what = "scribble point"
        pts = tuple(self._point(p, what) for p in points_lps)
        if not pts:
            raise InputError("the scribble has no points; paint over the lesion or the background")
        try:
            radius_mm = float(radius_mm)
        except (TypeError, ValueError):
            radius_mm = float("nan")
        if not np.isfinite(radius_mm) or radius_mm <= 0:
            raise InputError(f"scribble radius {radius_mm!r} mm must be positive; give the brush size in mm")
        st = self._state()
        stroke = ((pts, float(radius_mm)),)
        if not foreground:
            return self._push(replace(st, bg_strokes=st.bg_strokes + stroke))
        centroid = np.mean(np.asarray(pts), axis=0)
        middle = min(pts, key=lambda q: float(np.linalg.norm(np.asarray(q) - centroid)))
        return self._push(replace(st, fg_strokes=st.fg_strokes + stroke, grown=self._grow(st, middle)))

    def undo(self) -> Optional[sitk.Image]:
        """Forget the last interaction; return the previous result (None when nothing is left)."""
        if self._states:
            self._states.pop()
            self._results.pop()
        self.result = self._results[-1] if self._results else None
        if self._work is not None:
            self._work.potential = None
        return self.result

    # -- internals ---------------------------------------------------------------------
    def _point(self, point: Sequence[float], what: str) -> Point:
        point_index(self.image, point, what)
        return tuple(float(v) for v in point)  # type: ignore[return-value]

    def _grow(self, st: _State, point: Point, force: bool = False) -> tuple[_Grown, ...]:
        """``st.grown`` plus the lesion grown from ``point`` when it lies away from the result (a new
        lesion or a part the result missed), or always with ``force``.

        Next to the result a click only moves the boundary (the classifier and the walker do
        that); a later click's grown region is kept only when the grower found a lesion edge.
        """
        first = force or self.result is None or not sitk.GetArrayViewFromImage(self.result).any()
        if not first and _distance_mm(self.result, point) <= NEW_PART_MM:
            return st.grown
        if self.estimator is not None and first:  # trained on first clicks at a lesion's deep points
            free = InteractiveSession(self.image)
            guess = free.add_click(point)
            grown_free = free._state().grown
            if not (any(not g.bounded for g in grown_free) and _volume_ml(guess) < SMALL_EDGED_ML):
                labels = answer(self.estimator, self.image, [point], st.bg_clicks, guess)
                if not sitk.GetArrayViewFromImage(labels).any():
                    return st.grown
                return st.grown + (_Grown(labels, point, False),)
            if not st.bg_clicks:  # the guess grew exactly what the grower below would: keep it
                return st.grown + grown_free
        grown = segment_from_seeds(self.image, [point], st.bg_clicks, max_radius_mm=GROW_RADIUS_MM,
                                   extend_fallback=EXTEND_FALLBACK and first)
        if not sitk.GetArrayViewFromImage(grown.labels).any() or (grown.bounded and not first and not KEEP_BOUNDED):
            return st.grown
        return st.grown + (_Grown(grown.labels, point, grown.bounded),)

    def _corners(self, labels: sitk.Image) -> list[Point]:
        """:func:`_mask_corners` of a grown estimate, computed once."""
        hit = self._corner_cache.get(id(labels))
        if hit is None or hit[0] is not labels:
            hit = (labels, _mask_corners(labels))
            self._corner_cache[id(labels)] = hit
        return hit[1]

    def _state(self) -> _State:
        return self._states[-1] if self._states else _State()

    def _push(self, state: _State) -> sitk.Image:
        result = self._solve(state)
        self._states.append(state)
        self._results.append(result)
        self.result = result
        return result

    def _needed_points(self, state: _State) -> tuple[list[Point], float]:
        """Points the working grid must cover and its margin (mm)."""
        pts: list[Point] = list(state.fg_clicks) + list(state.bg_clicks)
        for stroke, _ in state.fg_strokes + state.bg_strokes:
            pts.extend(stroke)
        if state.box is not None:
            a, b = np.asarray(state.box[0]), np.asarray(state.box[1])
            extent = float(np.max(np.abs(a - b)))
            return [state.box[0], state.box[1]], max(0.1 * extent, 4.0)
        if self.result is not None:
            pts.extend(_mask_corners(self.result))
        return pts, MARGIN_MM

    def _working(self, state: _State) -> _Work:
        pts, margin = self._needed_points(state)
        if state.box is None:
            for g in state.grown:
                pts = pts + self._corners(g.labels)
            if state.grown or state.fg_clicks:
                margin = max(margin, MIN_MARGIN_MM)
        w = self._work
        same_box = w is not None and w.box == state.box
        if not (same_box and (state.box is not None or all(w.crop.contains(p, 0.5 * margin) for p in pts))):
            w = self._build(pts, margin, state.box)
        made, cut_by = w.grown_from
        same = (len(made) == len(state.grown) and all(a is b for a, b in zip(made, state.grown))
                and cut_by == state.bg_clicks)
        if w.grown is None or not same:
            w.grown = np.zeros(w.crop.array.shape, dtype=bool)
            for g in state.grown:
                w.grown |= _cut(w.crop, g, state.bg_clicks)
            w.grown_from = (state.grown, state.bg_clicks)
        return w

    def _build(self, pts: Sequence[Point], margin: float, box: Optional[tuple[Point, Point]]) -> _Work:
        crop = make_crop(self.image, pts, margin)
        norm = normalise(crop.array)
        feats = compute_features(norm, crop.voxel_mm)
        logger.debug("working grid %s at %.2f mm", crop.array.shape, crop.voxel_mm)
        self._work = _Work(crop, feats, feats[0], box)
        return self._work

    def _solve(self, state: _State) -> sitk.Image:
        work = self._working(state)
        crop = work.crop
        shape = crop.array.shape
        fg_hard = crop.ball(state.fg_clicks, CLICK_MM)
        bg_hard = crop.ball(state.bg_clicks, CLICK_MM)
        for stroke, radius in state.fg_strokes:
            fg_hard |= crop.ball(_densify(stroke, 0.5 * crop.voxel_mm), radius)
        for stroke, radius in state.bg_strokes:
            bg_hard |= crop.ball(_densify(stroke, 0.5 * crop.voxel_mm), radius)
        border = np.ones(shape, dtype=bool)
        border[1:-1, 1:-1, 1:-1] = False
        inside_box = np.ones(shape, dtype=bool)
        if state.box is not None:
            inside_box = _box_mask(crop, state.box)
            border |= ~inside_box
        bg_hard |= border
        bg_hard &= ~fg_hard
        # Weak labels: the lesions grown from clicks (or a box's centre), away from contradicting clicks.
        prev = work.grown & inside_box if work.grown is not None else None
        if state.box is not None and (prev is None or not prev.any()):
            prev = _box_core(inside_box)
        fg_weak = np.zeros(shape, dtype=bool)
        bg_weak = np.zeros(shape, dtype=bool)
        if prev is not None and prev.any():
            # Where a click contradicts the grown lesion (a background click in it, a foreground click
            # outside it), the lesion's own estimate is not trusted in that click's zone.
            bg_ramp, fg_ramp = _zones(crop, state, prev)
            bg_zone, fg_zone = bg_ramp < 1.0, fg_ramp < 1.0
            fg_weak = ndimage.binary_erosion(prev) & ~bg_zone & ~crop.ball(state.bg_clicks, CONTRADICT_MM)
            bg_weak = ~ndimage.binary_dilation(prev, iterations=2) & inside_box & ~fg_zone
            bg_weak &= ~crop.ball(state.fg_clicks, CONTRADICT_MM)
        fg_w = _weights(fg_hard, fg_weak)
        bg_w = _weights(bg_hard, bg_weak)
        prob = foreground_probability(work.features, fg_w, bg_w)
        if prev is not None and prev.any():  # the grown lesion's own boundary, where no click says otherwise
            grown = ndimage.gaussian_filter(prev.astype(np.float32), max(1.0 / crop.voxel_mm, 0.5))
            # A background click's zone can only lose what the grower gave, a foreground click's only
            # gain (both fading with the distance from the click).
            grown = np.where(bg_zone, np.minimum(grown, prob) * bg_ramp,
                             np.where(fg_zone, np.maximum(grown, prob * (1.0 - fg_ramp) ** 2), grown))
            near_bg = crop.ball(state.bg_clicks, CONTRADICT_MM)
            grown[near_bg] = prob[near_bg]
            prob = GROWN_WEIGHT * grown + (1.0 - GROWN_WEIGHT) * prob
        if state.box is None:  # a box bounds the lesion itself
            prob *= _nearness(fg_hard | (prev if prev is not None else fg_hard), crop.voxel_mm)
        prob = np.where(inside_box, prob, 0.0).astype(np.float32)
        weights = edge_weights(work.smooth, prob)
        x0 = work.potential if work.potential is not None and work.potential.shape == shape else None
        x = solve(weights, prob, fg_hard, bg_hard, x0=x0)
        work.potential = x
        seg = x > 0.5
        lab, n = ndimage.label(seg)
        if n > 1:
            keep_ids = np.unique(lab[fg_hard & seg])
            keep_ids = keep_ids[keep_ids > 0]
            if keep_ids.size == 0:  # a box alone: its largest component
                keep_ids = np.array([int(np.argmax(np.bincount(lab.ravel())[1:])) + 1])
            seg = np.isin(lab, keep_ids)
        seg = ndimage.binary_fill_holes(seg) & ~bg_hard  # a background click inside stays a hole
        values = np.where(seg, np.maximum(x, 0.51), np.minimum(x, 0.49))
        return crop.to_image(values, self.image)


def _cut(crop: Crop, grown: _Grown, bg_clicks: Sequence[Point]) -> np.ndarray:
    """An estimate on the working grid (bool, z y x), cut by the background clicks inside it.

    A lesion is compact around the click it was grown from: a background click inside the estimate
    says the lesion ends nearer to the seed than that click, so the estimate keeps only what lies
    within the nearest such click's distance from the seed, times :data:`SHRINK` for an estimate grown
    without a lesion edge (only a guess at the lesion's extent) and :data:`SHRINK_EDGE` for one grown to
    an edge (whose leak lies beyond the click)."""
    mask = crop.from_image(grown.labels)
    inside = [p for p in bg_clicks if _in_mask(crop, mask, p)]
    if not inside:
        return mask
    factor = SHRINK if grown.bounded else SHRINK_EDGE
    reach = factor * min(float(np.linalg.norm(np.subtract(p, grown.seed))) for p in inside)
    return mask & crop.ball([grown.seed], reach)


def _zones(crop: Crop, state: _State, grown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zones of the clicks that contradict ``grown``: background clicks inside it and foreground
    clicks outside it. A zone is what lies within :data:`ZONE_MM` of such a click and nearer to it
    than to any click of the other kind. Returns (z, y, x) float32 ramps, 1 outside the zones and
    within a zone ``2 d_mine / (d_mine + d_other)`` (0 at the click, 1 half-way to the other kind)."""
    shape = crop.array.shape
    out = []
    for mine, other, contradicts in ((state.bg_clicks, state.fg_clicks, True), (state.fg_clicks, state.bg_clicks, False)):
        pts = [p for p in mine if _in_mask(crop, grown, p) == contradicts]
        ramp = np.ones(shape, dtype=np.float32)
        if pts:
            d_mine = ndimage.distance_transform_edt(~crop.ball(pts, 0.0)) * crop.voxel_mm
            d_other = (ndimage.distance_transform_edt(~crop.ball(other, 0.0)) * crop.voxel_mm if other
                       else np.full(shape, 2.0 * ZONE_MM))
            zone = (d_mine <= ZONE_MM) & (d_mine < d_other)
            ramp[zone] = np.clip(2.0 * d_mine[zone] / (d_mine[zone] + d_other[zone]), 0.0, 1.0)
        out.append(ramp)
    return out[0], out[1]


def _in_mask(crop: Crop, mask: np.ndarray, point: Point) -> bool:
    """Whether an LPS point falls in a crop mask (z, y, x); False outside the crop."""
    idx = np.round(crop.index_of(point)).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.asarray(mask.shape)):
        return False
    return bool(mask[tuple(idx)])


def _bbox(arr: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """First and last (z, y, x) index of a mask's foreground (None when empty)."""
    if not arr.any():
        return None
    box = bbox(arr, 0)
    return np.array([b.start for b in box]), np.array([b.stop - 1 for b in box])


def _volume_ml(mask: sitk.Image) -> float:
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0


def _distance_mm(mask: sitk.Image, point: Point) -> float:
    """Distance (mm) from an LPS point to the nearest foreground voxel centre of a label map."""
    arr = sitk.GetArrayViewFromImage(mask)
    box = _bbox(arr)
    if box is None:
        return float("inf")
    lo, hi = box
    sub = arr[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
    idx = (np.argwhere(sub > 0) + lo)[:, ::-1].astype(np.float64)  # (x, y, z)
    spacing = np.asarray(mask.GetSpacing())
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    points = np.asarray(mask.GetOrigin()) + (idx * spacing) @ direction.T
    return float(np.sqrt(((points - np.asarray(point)) ** 2).sum(axis=1)).min())


def _nearness(evidence: np.ndarray, voxel_mm: float) -> np.ndarray:
    """A lesion is compact: P(foreground) falls off with the distance (mm) from the foreground evidence,
    on the scale of the evidence's own size. (z, y, x) float32 in (0, 1]."""
    if not evidence.any():
        return np.ones(evidence.shape, dtype=np.float32)
    r_eq = float((3.0 * evidence.sum() / (4.0 * np.pi)) ** (1.0 / 3.0)) * voxel_mm
    scale = max(NEAR_MM, NEAR_FRACTION * r_eq)
    d = ndimage.distance_transform_edt(~evidence) * voxel_mm
    return np.exp(-((d / scale) ** 2)).astype(np.float32)


def _weights(hard: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Per-voxel sample weights: the hard labels and the weak ones weigh the same in total."""
    w = np.zeros(hard.shape, dtype=np.float32)
    nh, nw = int(hard.sum()), int((weak & ~hard).sum())
    if nw:
        w[weak & ~hard] = WEAK_WEIGHT * (max(nh, 1) / nw if nh else 1.0)
    w[hard] = 1.0
    return w


def _densify(points: Sequence[Point], step_mm: float) -> list[Point]:
    """The polyline's points every ``step_mm``."""
    pts = [np.asarray(p, dtype=np.float64) for p in points]
    out = [tuple(pts[0])]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(int(np.ceil(np.linalg.norm(b - a) / step_mm)), 1)
        out.extend(tuple(a + (b - a) * t) for t in np.linspace(0.0, 1.0, n + 1)[1:])
    return out  # type: ignore[return-value]


def _box_mask(crop: Crop, box: tuple[Point, Point]) -> np.ndarray:
    """Voxels of the working grid inside the box (bool, z y x); the box is axis-aligned in the image's index space."""
    a, b = crop.index_of(box[0]), crop.index_of(box[1])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    zz, yy, xx = np.ogrid[:crop.array.shape[0], :crop.array.shape[1], :crop.array.shape[2]]
    return ((zz >= lo[0]) & (zz <= hi[0]) & (yy >= lo[1]) & (yy <= hi[1]) & (xx >= lo[2]) & (xx <= hi[2]))


def _box_core(inside: np.ndarray) -> np.ndarray:
    """The central part of a box (a third of its size along each axis): a lesion boxed tightly fills it."""
    idx = np.nonzero(inside)
    out = np.zeros_like(inside)
    sl = []
    for i in idx:
        lo, hi = int(i.min()), int(i.max()) + 1
        q = (hi - lo) // 3
        sl.append(slice(lo + q, hi - q))
    out[tuple(sl)] = True
    return out


def _mask_corners(mask: sitk.Image) -> list[Point]:
    """The two LPS corners of a label map's bounding box (index space); none when it is empty."""
    box = _bbox(sitk.GetArrayViewFromImage(mask))
    if box is None:
        return []
    lo, hi = box
    return [mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in lo[::-1]]),
            mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in hi[::-1]])]
