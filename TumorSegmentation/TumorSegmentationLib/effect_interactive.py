"""Qt-free logic of the Tumor effect's interactive modes: Click, Box and Scribble (issue 20).

One :class:`tumorseg_core.interactive.session.InteractiveSession` per (segmentation,
source volume, selected segment) refines one result interaction by interaction:

- **Click**: a click marks foreground; Shift or Ctrl+click marks background.
- **Box**: a markups ROI (:meth:`InteractiveEffectLogic.box_from_roi`) or two clicks at
  opposite corners (:meth:`InteractiveEffectLogic.box_corner`) bound the lesion.
- **Scribble**: a painted stroke (press, drag, release) of foreground (or, with Shift or
  Ctrl, background) points.

Every interaction refines the last result (no restart) and the result is written into
the *selected segment only*, through the :class:`effect_logic.EditorBackend` (the editor's
masking rules apply, ``saveStateForUndo`` comes first, so Slicer's Undo works). The
segment keeps what it held before the session started: it becomes ``base | result``.
With an ROI selected (the effect's ROI selector, as for Auto), the result is cut to it and
clicks outside it are refused, so nothing outside the ROI changes.
:meth:`InteractiveEffectLogic.undo` steps the session back one interaction and rewrites
the segment. The editor's own Undo is followed: when the segment is back to what an
earlier interaction left, the session steps back to it. A new source volume, segmentation
or segment, an edit by another tool (it becomes the new base) or :meth:`reset` starts a
new session.

When the click network is there (:attr:`InteractiveEffectLogic.clickNetwork`, by default the
shipped ``tumorseg_core/data/clicknet``), the session's clicks are answered by it: the question is
built here and the background worker runs the network (:mod:`click_estimator`; this process never
imports torch). Otherwise, or once the worker cannot answer (it does not start, fails or is too
slow), the session is the model-free one: the failed interaction and the ones before it are
answered again without the network, with a warning in the log and the status line; the segment
only changes once an answer is complete.

Points are world RAS (what a slice view gives); RAS->LPS and node->image conversions go
through :mod:`effect_regions` / :mod:`geometry_bridge`. The session's image is the source
volume in the segmentation's frame (LPS), so its result lies on the source voxels; it is
moved onto the editor's reference grid with :func:`effect_regions.sitk_to_reference_mask`.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError

from . import effect_regions as regions
from . import geometry_bridge
from .click_estimator import ClickNetworkUnavailable, WorkerClickNet, has_click_network, shipped_click_network
from .effect_logic import ADD, SET, EffectResult

logger = logging.getLogger(__name__)

MODE_CLICK, MODE_BOX, MODE_SCRIBBLE = "Click", "Box", "Scribble"
MODES = (MODE_CLICK, MODE_BOX, MODE_SCRIBBLE)
#: Brush radius of a painted stroke (mm).
SCRIBBLE_RADIUS_MM = 1.5
#: A two-click box thinner than this (mm) along a world axis (both clicks on one slice)
#: gets that axis' extent from the mean of its other two sides.
FLAT_BOX_MM = 0.5
#: A box whose index-space bounding box is this much bigger than itself is "rotated".
ROTATED_BOX_RATIO = 1.02
BOX_EPSILON = 1e-3  #: voxels


@dataclass
class _State:
    """One session: the engine's session, its image and the segment before the first interaction."""

    key: tuple
    image: sitk.Image  #: source volume in the segmentation's frame, LPS
    base: np.ndarray  #: selected segment before the session, bool (z, y, x) on the reference grid
    session: Any  #: tumorseg_core.interactive.session.InteractiveSession
    kinds: List[str] = field(default_factory=list)  #: "click", "background click", "box", "scribble", ...
    #: each interaction as ``action(session)``, to answer them again without the click network
    actions: List[Callable[[Any], Any]] = field(default_factory=list)
    #: the segment at the start and after each interaction (``np.packbits`` of the reference-grid mask)
    written: List[np.ndarray] = field(default_factory=list)


class InteractiveEffectLogic:
    """Click / Box / Scribble on top of a :class:`effect_logic.TumorEffectLogic` (its editor node and backend).

    Args:
        owner: the effect logic whose selection (segmentation, source volume, segment)
            and editor backend are used.
        scribbleRadiusMm: brush radius of strokes in mm.

    Attributes:
        clickNetwork: the click network's folder used by new sessions (default: the shipped one);
            None, or a folder without a network: the model-free session.
    """

    def __init__(self, owner: Any, scribbleRadiusMm: float = SCRIBBLE_RADIUS_MM) -> None:
        self.owner = owner
        self.scribbleRadiusMm = float(scribbleRadiusMm)
        self.clickNetwork: Optional[Path] = shipped_click_network()
        self._state: Optional[_State] = None
        self._corner: Optional[tuple] = None  #: first corner (RAS) of a two-click box
        self._stroke: Optional[List[tuple]] = None  #: RAS points of the stroke being painted
        self._strokeForeground = True
        self.lastResult: Optional[EffectResult] = None

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget the session, a pending box corner and a stroke; the next interaction starts anew."""
        self._state = None
        self._corner = None
        self._stroke = None

    @property
    def interactions(self) -> int:
        """Interactions applied in the current session (what :meth:`undo` can step back)."""
        return len(self._state.kinds) if self._state is not None else 0

    @property
    def pendingCorner(self) -> Optional[tuple]:
        """The first corner (RAS) of a two-click box, or None."""
        return self._corner

    @property
    def strokeRas(self) -> List[tuple]:
        """RAS points of the stroke being painted (empty when none)."""
        return list(self._stroke or [])

    # ------------------------------------------------------------------ events (what effect.py forwards)

    def press(self, mode: str, ras_point: Sequence[float], background: bool = False) -> Optional[EffectResult]:
        """Left button pressed at ``ras_point`` in ``mode``; returns a result when something was computed.

        Click: a (background) click. Box: a box corner (the second one applies the box).
        Scribble: starts a stroke (finished by :meth:`release`).
        """
        if mode == MODE_CLICK:
            return self.click(ras_point, foreground=not background)
        if mode == MODE_BOX:
            return self.box_corner(ras_point)
        if mode == MODE_SCRIBBLE:
            self._stroke = [_point(ras_point)]
            self._strokeForeground = not background
            return None
        raise InputError(f"unknown interactive mode '{mode}'; choose one of: {', '.join(MODES)}")

    def move(self, ras_point: Sequence[float]) -> bool:
        """Mouse moved: extends the stroke being painted; True when a stroke takes the point."""
        if self._stroke is None:
            return False
        point = _point(ras_point)
        if point != self._stroke[-1]:
            self._stroke.append(point)
        return True

    def release(self, ras_point: Optional[Sequence[float]] = None) -> Optional[EffectResult]:
        """Left button released: sends the stroke being painted (if any) as one scribble."""
        if self._stroke is None:
            return None
        stroke, self._stroke = self._stroke, None
        if ras_point is not None and _point(ras_point) != stroke[-1]:
            stroke.append(_point(ras_point))
        return self.scribble(stroke, foreground=self._strokeForeground)

    # ------------------------------------------------------------------ interactions

    def click(self, ras_point: Sequence[float], foreground: bool = True) -> EffectResult:
        """A foreground (or background) click at world RAS ``ras_point`` refines the result."""
        state = self._current()
        point = self._inside(state, ras_point, "click")
        kind = "click" if foreground else "background click"
        return self._interact(state, kind, lambda s: s.add_click(point, foreground=foreground))

    def box(self, corner_a_ras: Sequence[float], corner_b_ras: Sequence[float]) -> EffectResult:
        """A box between two opposite world RAS corners (world-axis aligned, as slice views draw it).

        A box flat along one axis (both corners on one axial, coronal or sagittal slice)
        gets the mean of its other two sides as depth, centred on the slice.
        """
        state = self._current()
        a, b = np.array(_point(corner_a_ras)), np.array(_point(corner_b_ras))
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        flat = (hi - lo) < FLAT_BOX_MM
        if flat.sum() > 1:
            raise InputError("the box has no area; click two opposite corners of the lesion, apart from each other")
        if flat.any():
            middle, depth = (lo + hi) / 2.0, float(np.mean((hi - lo)[~flat]))
            lo[flat], hi[flat] = middle[flat] - depth / 2.0, middle[flat] + depth / 2.0
        seg = self.owner.editorNode.GetSegmentationNode()
        corners = [regions.world_ras_to_frame_lps(np.where(signs, hi, lo), seg)
                   for signs in itertools.product((False, True), repeat=3)]
        return self._apply_box(state, corners)

    def box_corner(self, ras_point: Sequence[float]) -> EffectResult:
        """Two-click box: the first click notes a corner, the second applies the box."""
        self._current()
        if self._corner is None:
            self._corner = _point(ras_point)
            return self._done(EffectResult("First box corner noted; click the opposite corner"))
        corner, self._corner = self._corner, None
        return self.box(corner, ras_point)

    def box_from_roi(self, roi: Any) -> EffectResult:
        """The box of a markups ROI node (``vtkMRMLMarkupsROINode``: centre, size, orientation, transforms)."""
        if roi is None or not hasattr(roi, "GetObjectToWorldMatrix"):
            raise InputError("select a markups ROI for the box (or click two opposite corners in Box mode)")
        if min(roi.GetSize()) <= 0:
            raise InputError(f"the ROI '{roi.GetName()}' has zero size; give it a size in all three directions")
        state = self._current()
        seg = self.owner.editorNode.GetSegmentationNode()
        corners = [tuple(geometry_bridge.LPS_FROM_RAS[:3, :3] @ c) for c in regions.roi_corners_in(roi, seg)]
        return self._apply_box(state, corners)

    def scribble(self, points_ras: Sequence[Sequence[float]], foreground: bool = True) -> EffectResult:
        """A painted stroke through world RAS points (parts outside the volume are dropped)."""
        state = self._current()
        seg = self.owner.editorNode.GetSegmentationNode()
        lps = [regions.world_ras_to_frame_lps(p, seg) for p in points_ras]
        inside = [p for p in lps if regions.point_in_image(state.image, p)]
        if not inside:
            raise InputError("the stroke is outside the source volume; paint on the image")
        kind = "scribble" if foreground else "background scribble"
        radius = self.scribbleRadiusMm
        return self._interact(state, kind, lambda s: s.add_scribble(inside, foreground=foreground, radius_mm=radius))

    def undo(self) -> EffectResult:
        """Step the session back one interaction and rewrite the segment (base | previous result)."""
        if self._corner is not None:
            self._corner = None
            return self._done(EffectResult("Box corner forgotten"))
        state = self._state
        if state is None or not state.kinds or self._current() is not state:
            return self._done(EffectResult("Nothing to undo in this session (use the editor's Undo)"))
        started = time.perf_counter()
        previous = state.session.undo()
        state.kinds.pop()
        state.actions.pop()
        state.written.pop()
        reference = self.owner.backend.referenceGeometry()
        lesion = self._lesion(previous, reference)
        state.written[-1] = self._write(state.base | lesion, SET)
        message = f"Undone; {self._summary(state, int(lesion.sum()), reference)}" if state.kinds \
            else "Undone; the segment is back to what it was before the session"
        return self._done(EffectResult(message, True, int(lesion.sum()), False, time.perf_counter() - started))

    # ------------------------------------------------------------------ internals

    def _key(self) -> tuple:
        """What a session belongs to: segmentation, source volume (its voxel object and placement),
        segment and the editor's reference grid."""
        seg, source, sid = self.owner.selection()
        image = source.GetImageData()
        matrix = geometry_bridge.volume_ijk_to_frame(source, seg)
        reference = self.owner.backend.referenceGeometry()
        return (seg.GetID(), source.GetID(), sid, image.GetAddressAsString("vtkImageData") if image else None,
                tuple(np.round(matrix, 9).ravel()), tuple(reference.GetExtent()),
                tuple(np.round(geometry_bridge.oriented_image_to_world(reference), 9).ravel()))

    def _current(self) -> _State:
        """The session of the current selection (a new one when the selection or volume changed)."""
        key = self._key()
        seg, source, sid = self.owner.selection()
        reference = self.owner.backend.referenceGeometry()
        state = self._state
        if state is not None and state.key == key:
            now = np.packbits(regions.segment_mask(seg, sid, reference))
            if np.array_equal(now, state.written[-1]):
                return state
            for steps, earlier in enumerate(reversed(state.written[:-1]), start=1):
                if np.array_equal(now, earlier):  # the editor's Undo took back our last edit(s): follow it
                    for _ in range(steps):
                        state.session.undo()
                        state.kinds.pop()
                        state.actions.pop()
                        state.written.pop()
                    logger.info("followed the editor's Undo: %d interaction(s) back", steps)
                    return state
            # Another tool changed the segment: its content is the new session's base.
            logger.info("the segment was edited outside the session; starting a new session")
        from tumorseg_core.interactive.session import InteractiveSession

        image = regions.snap_spacing(geometry_bridge.volume_to_sitk(source, frame_node=seg)[0])
        base = regions.segment_mask(seg, sid, reference)
        estimator = self._estimator()
        self._state = _State(key, image, base, InteractiveSession(image, estimator=estimator),
                             written=[np.packbits(base)])
        self._corner = None
        logger.info("interactive session started on '%s' (segment %s)%s", source.GetName(), sid,
                    " with the click network" if estimator is not None else "")
        return self._state

    def _estimator(self) -> Optional[WorkerClickNet]:
        """The click network answered by the worker, when :attr:`clickNetwork` holds one; else None."""
        folder = self.clickNetwork
        if folder is None or not has_click_network(Path(folder)):
            return None
        return WorkerClickNet(self.owner.segmentationLogic.runner, Path(folder))

    @staticmethod
    def _without_network(state: _State, reason: ClickNetworkUnavailable) -> None:
        """Go on with the model-free session: the earlier interactions are answered again without the network."""
        from tumorseg_core.interactive.session import InteractiveSession

        logger.warning("the click network could not answer (%s); this session goes on without it", reason)
        session = InteractiveSession(state.image)
        for action in state.actions:
            action(session)
        state.session = session

    def _inside(self, state: _State, ras_point: Sequence[float], what: str) -> tuple:
        seg = self.owner.editorNode.GetSegmentationNode()
        point = regions.world_ras_to_frame_lps(_point(ras_point), seg)
        if not regions.point_in_image(state.image, point):
            raise InputError(f"the {what} is outside the source volume; click inside the image")
        roi = self.owner.roiNode
        if roi is not None and not regions.point_in_roi(_point(ras_point), roi):
            raise InputError(f"the {what} is outside the ROI; click inside the ROI or clear the ROI selector")
        return point

    def _apply_box(self, state: _State, corners_lps: List[tuple]) -> EffectResult:
        """Give the session the box holding ``corners_lps`` (8 corners, segmentation frame, LPS).

        The session's box is axis-aligned in the image's index space; a box rotated against
        the volume's axes (a world-aligned ROI on an oblique volume) becomes its index-space
        bounding box, which the message says.
        """
        image = state.image
        index = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, c))) for c in corners_lps])
        size = np.asarray(image.GetSize(), dtype=float)
        lo, hi = index.min(axis=0), index.max(axis=0)
        if np.any(hi < -0.5) or np.any(lo > size - 0.5):
            raise InputError("the box does not overlap the source volume; draw it on the image")
        # Clipped just inside the image's outer voxel faces (the session refuses corners outside).
        lo, hi = np.maximum(lo, -0.5 + BOX_EPSILON), np.minimum(hi, size - 0.5 - BOX_EPSILON)
        a = tuple(map(float, image.TransformContinuousIndexToPhysicalPoint(lo.tolist())))
        b = tuple(map(float, image.TransformContinuousIndexToPhysicalPoint(hi.tolist())))
        widened = _box_volume_mm3(index.min(axis=0), index.max(axis=0), image) > \
            ROTATED_BOX_RATIO * _hull_volume_mm3(corners_lps)
        result = self._interact(state, "box", lambda s: s.set_box(a, b))
        if widened:
            result.message += " (the box was rotated against the volume's axes and was widened to them)"
        return result

    def _interact(self, state: _State, kind: str, action: Any) -> EffectResult:
        """Run ``action(session)`` (one interaction) and write its result; on any error nothing changes."""
        started = time.perf_counter()
        reference = self.owner.backend.referenceGeometry()
        note = ""
        try:
            result = action(state.session)
        except ClickNetworkUnavailable as exc:  # nothing was written: answer without the network
            self._without_network(state, exc)
            result = action(state.session)
            note = f" (without the click network: {exc})"
        state.kinds.append(kind)
        state.actions.append(action)
        try:
            lesion = self._lesion(result, reference)
            first = len(state.kinds) == 1
            state.written.append(self._write(lesion if first else state.base | lesion, ADD if first else SET))
        except BaseException:
            state.session.undo()  # the session forgets the interaction the segment never got
            state.kinds.pop()
            state.actions.pop()
            raise
        voxels = int(lesion.sum())
        return self._done(EffectResult(self._summary(state, voxels, reference) + note, True, voxels, False,
                                       time.perf_counter() - started))

    def _lesion(self, result: Optional[sitk.Image], reference: Any) -> np.ndarray:
        """A session result (None: nothing) as a bool (z, y, x) mask on the reference grid,
        inside the ROI when one is selected (the ROI limits every mode: nothing outside it changes)."""
        if result is None:
            return np.zeros(regions.extent_shape(reference.GetExtent()), dtype=bool)
        lesion = regions.sitk_to_reference_mask(result, reference)
        if self.owner.roiNode is not None:
            lesion &= regions.roi_mask(reference, self.owner.roiNode, self.owner.editorNode.GetSegmentationNode())
        return lesion

    def _write(self, mask: np.ndarray, mode: str) -> np.ndarray:
        """Write ``mask`` (reference grid) into the selected segment as one undoable edit.

        Returns the segment as written (after the editor's masking), ``np.packbits`` of its mask.
        """
        backend = self.owner.backend
        reference = backend.referenceGeometry()
        backend.saveStateForUndo()
        backend.modifySelectedSegment(regions.mask_to_oriented(mask, reference), mode)
        seg, _, sid = self.owner.selection()
        return np.packbits(regions.segment_mask(seg, sid, reference))

    @staticmethod
    def _summary(state: _State, voxels: int, reference: Any) -> str:
        volume_ml = voxels * float(np.prod(reference.GetSpacing())) / 1000.0
        counts: dict = {}
        for kind in state.kinds:
            counts[kind] = counts.get(kind, 0) + 1
        what = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in counts.items())
        return f"Tumor: {volume_ml:.2f} mL from {what}"

    def _done(self, result: EffectResult) -> EffectResult:
        self.lastResult = result
        return self.owner.done(result)


def _point(ras_point: Sequence[float]) -> tuple:
    values = tuple(float(c) for c in ras_point)
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InputError(f"a point needs three finite coordinates, got {values}")
    return values


def _box_volume_mm3(lo: np.ndarray, hi: np.ndarray, image: sitk.Image) -> float:
    """Volume of an index-space box (continuous (x, y, z) index bounds) in mm^3."""
    return float(np.prod((hi - lo) * np.asarray(image.GetSpacing())))


def _hull_volume_mm3(corners: Sequence[Sequence[float]]) -> float:
    """Volume of a box given by its 8 corners (any orientation; order of ``itertools.product``)."""
    c = np.asarray(corners, dtype=float)
    return float(abs(np.linalg.det(np.stack([c[4] - c[0], c[2] - c[0], c[1] - c[0]]))))
