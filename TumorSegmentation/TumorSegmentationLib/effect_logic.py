"""Qt-free logic of the "Tumor" Segment Editor effect (every decision the effect makes).

The effect edits the *selected segment* through Slicer's own segment editor layer
(``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`` on a
``vtkMRMLSegmentEditorNode``), so the editable area, the editable intensity range and
"overwrite other segments" are honoured exactly as by Paint, Threshold or Grow from
seeds, and every edit is one Undo step.

Three modes:

- **Seed**: a click in a lesion segments it (``tumorseg_core.interactive.seeds``, no model);
  Shift+click adds a seed, Ctrl+click marks background. The clicks of one lesion form
  a *session*: each click recomputes the lesion from all its points and replaces what
  the previous click of the session wrote, keeping what the segment held before.
- **Auto**: runs a model (``TumorSegmentationLogic``, background worker) on the source
  volume and writes only the chosen output label into the selected segment.
- **Refine**: clicks keep the connected lesions pointed at (Ctrl+click removes one),
  from what the segment held when the refine session started.

An optional markups ROI restricts every mode: the image is cropped to it and nothing
outside it is changed. Points are world RAS (what a slice view click gives); RAS->LPS
and node<->image conversions go through :mod:`geometry_bridge` only.

Headless, :class:`EditorBackend` drives a private ``vtkSlicerSegmentEditorLogic``; in
Slicer the effect passes a backend that routes through the editor widget's logic
(``scriptedEffect.modifySelectedSegmentByLabelmap``/``saveStateForUndo``) so the
editor's Undo button sees the edits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import slicer

from tumorseg_core.errors import InputError, TumorSegError

from . import effect_regions as regions
from . import geometry_bridge

logger = logging.getLogger(__name__)

MODE_AUTO, MODE_SEED, MODE_REFINE = "Auto", "Seed", "Refine"
MODES = (MODE_AUTO, MODE_SEED, MODE_REFINE)
# Modification modes by name: each backend maps them onto its own enum
# ("ModificationMode" + name on vtkSlicerSegmentEditorLogic or on the Qt effect). Nothing
# here may touch vtkSlicerSegmentEditorLogic at import: Slicer has it only since 5.10, and
# the effect in Slicer 5.6-5.8 imports this module but uses the Qt effect's modes.
SET, ADD = "Set", "Add"

ProgressCallback = Callable[[float, str], None]


@dataclass
class EffectResult:
    """Outcome of one effect action, shown in the effect's status line."""

    message: str
    changed: bool = False
    voxels: int = 0  #: foreground voxels of the lesion(s) computed (before masking)
    bounded: bool = False  #: the seeded region hit its size limit (the click was probably not a lesion)
    seconds: float = 0.0


class EditorBackend:
    """Headless access to Slicer's segment editor layer (the C++ logic the editor widget uses)."""

    def __init__(self, scene: Any, editorNode: Any) -> None:
        self.editorNode = editorNode
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(editorNode)

    def referenceGeometry(self) -> Any:
        """The geometry every modifier labelmap must have (the segmentation's reference grid)."""
        if not self.logic.UpdateReferenceGeometryImage():
            raise TumorSegError("the segmentation has no reference geometry; select a source volume")
        return self.logic.GetReferenceGeometryImage()

    def saveStateForUndo(self) -> None:
        self.logic.SaveStateForUndo()

    def modifySelectedSegment(self, labelmap: Any, mode: str) -> None:
        node = self.editorNode
        vtkMode = getattr(slicer.vtkSlicerSegmentEditorLogic, "ModificationMode" + mode)
        self.logic.ModifySegmentByLabelmap(node.GetSegmentationNode(), node.GetSelectedSegmentID(), labelmap,
                                           vtkMode, True, False)

    def undo(self) -> None:
        self.logic.Undo()


@dataclass
class _Session:
    """Clicks on one lesion (or one refine pass) and the segment as it was before them."""

    key: tuple
    mode: str
    base: np.ndarray  #: selected segment before the session, bool (z, y, x) on the reference grid
    seeds: List[tuple] = field(default_factory=list)
    background: List[tuple] = field(default_factory=list)
    history: List[tuple] = field(default_factory=list)  #: (seeds, background) before each applied click


class TumorEffectLogic:
    """All behaviour of the Tumor effect on MRML; see the module docstring.

    Args:
        scene: the MRML scene.
        editorNode: the segment editor parameter node (masking settings, selection);
            created and added to ``scene`` when None.
        backend: how edits reach the segmentation (default: :class:`EditorBackend`).
        segmentationLogic: a ``TumorSegmentationLogic`` for Auto mode (created on first use).
    """

    def __init__(self, scene: Any, editorNode: Any = None, backend: Any = None,
                 segmentationLogic: Any = None) -> None:
        self.scene = scene
        if editorNode is None:
            scene.RegisterNodeClass(slicer.vtkMRMLSegmentEditorNode())
            editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "TumorEffectEditor")
        self.editorNode = editorNode
        self.backend = backend or EditorBackend(scene, editorNode)
        self.roiNode: Any = None
        self.maxRadiusMm = 60.0
        self._segmentationLogic = segmentationLogic
        self._session: Optional[_Session] = None
        self._auto: Optional[dict] = None
        self._interactive: Any = None
        self.lastResult: Optional[EffectResult] = None

    # ------------------------------------------------------------------ selection

    def setup(self, segmentationNode: Any, sourceVolumeNode: Any, segmentID: Optional[str] = None) -> str:
        """Select segmentation, source volume and segment (adds a "Tumor" segment when none); returns its ID."""
        if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            # As the editor widget does: an empty segmentation takes the source volume's grid.
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(sourceVolumeNode)
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        self.editorNode.SetAndObserveSegmentationNode(segmentationNode)
        self.editorNode.SetAndObserveSourceVolumeNode(sourceVolumeNode)
        if segmentID is None:
            segmentation = segmentationNode.GetSegmentation()
            segmentID = segmentation.GetSegmentIDs()[0] if segmentation.GetNumberOfSegments() \
                else segmentation.AddEmptySegment("Tumor", "Tumor", (0.89, 0.36, 0.27))
        self.editorNode.SetSelectedSegmentID(segmentID)
        self._session = None
        return segmentID

    def selection(self) -> tuple:
        """``(segmentation node, source volume node, selected segment ID)`` of the editor, or an
        InputError that says what to select (the effect's modes all start here)."""
        seg = self.editorNode.GetSegmentationNode()
        source = self.editorNode.GetSourceVolumeNode()
        sid = self.editorNode.GetSelectedSegmentID()
        if seg is None or source is None:
            raise InputError("select a segmentation and a source volume in the Segment Editor")
        if not sid or seg.GetSegmentation().GetSegment(sid) is None:
            raise InputError("select (or add) the segment to write the tumor into")
        return seg, source, sid

    def resetPoints(self) -> None:
        """Forget the clicks; the next click starts a new lesion."""
        self._session = None

    @property
    def seedsRas(self) -> List[tuple]:
        return list(self._session.seeds) if self._session else []

    @property
    def backgroundRas(self) -> List[tuple]:
        return list(self._session.background) if self._session else []

    # ------------------------------------------------------------------ clicks

    def seed_click(self, ras_point: Sequence[float], add: bool = False, background: bool = False) -> EffectResult:
        """Seed mode click at world RAS ``ras_point``: segment the lesion there (see module docstring)."""
        return self._click(MODE_SEED, ras_point, add, background)

    def refine_click(self, ras_point: Sequence[float], add: bool = False, background: bool = False) -> EffectResult:
        """Refine mode click: keep the lesion(s) clicked, Ctrl (``background``) removes one."""
        return self._click(MODE_REFINE, ras_point, add, background)

    def refine(self, seeds_ras: Sequence[Sequence[float]] = (),
               background_ras: Sequence[Sequence[float]] = ()) -> EffectResult:
        """One-shot refine of the selected segment (e.g. a model result) with all points at once."""
        self._session = None
        seg, source, sid = self.selection()
        session = self._new_session(MODE_REFINE, seg, source, sid)
        session.seeds = [tuple(map(float, p)) for p in seeds_ras]
        session.background = [tuple(map(float, p)) for p in background_ras]
        self._session = session
        return self._apply(session, first=False)

    def _click(self, mode: str, ras_point: Sequence[float], add: bool, background: bool) -> EffectResult:
        seg, source, sid = self.selection()
        point = tuple(float(c) for c in ras_point)
        key = self._key(mode, seg, source, sid)
        session = self._session
        starts = session is None or session.key != key or not (add or background)
        if starts:
            session = self._new_session(mode, seg, source, sid)
        if background and not session.seeds and mode == MODE_SEED:
            self._session = session
            session.background.append(point)
            return self.done(EffectResult("Background point noted; now click inside the tumor"))
        session.history.append((list(session.seeds), list(session.background)))
        (session.background if background else session.seeds).append(point)
        self._session = session
        try:
            return self._apply(session, first=starts)
        except BaseException:
            session.seeds, session.background = session.history.pop()
            raise

    def _key(self, mode: str, seg: Any, source: Any, sid: str) -> tuple:
        roi = self.roiNode.GetID() if self.roiNode is not None else None
        return (mode, seg.GetID(), source.GetID(), sid, roi)

    def _new_session(self, mode: str, seg: Any, source: Any, sid: str) -> _Session:
        reference = self.backend.referenceGeometry()
        return _Session(self._key(mode, seg, source, sid), mode, regions.segment_mask(seg, sid, reference))

    # ------------------------------------------------------------------ computing and writing

    def _apply(self, session: _Session, first: bool) -> EffectResult:
        started = time.perf_counter()
        seg, source, _ = self.selection()
        reference = self.backend.referenceGeometry()
        lps = regions.world_ras_to_frame_lps
        seeds = [lps(p, seg) for p in session.seeds]
        background = [lps(p, seg) for p in session.background]
        image = regions.snap_spacing(geometry_bridge.volume_to_sitk(source, frame_node=seg)[0])
        crop = regions.roi_crop(image, self.roiNode, seg) if self.roiNode is not None else None
        if crop is not None:
            image = crop
            outside = [p for p in session.seeds if not regions.point_in_image(image, lps(p, seg))]
            if outside:
                raise InputError("the click is outside the ROI; click inside the ROI or clear the ROI selector")
        if session.mode == MODE_SEED:
            result = self._seeded(image, seeds, background)
            labels, message, bounded = result.labels, str(result.message or ""), bool(result.bounded)
        else:
            from tumorseg_core.interactive.refine import keep_clicked_lesions

            base_image = regions.mask_to_sitk(session.base, reference)
            labels = keep_clicked_lesions(base_image, seeds, background)
            message, bounded = "", False
        lesion = regions.sitk_to_reference_mask(labels, reference)
        if crop is not None:
            lesion &= regions.roi_mask(reference, self.roiNode, seg)
        voxels = int(lesion.sum())
        if session.mode == MODE_REFINE:
            modifier = lesion if crop is None else (lesion | (session.base & ~regions.roi_mask(reference, self.roiNode, seg)))
            mode, first = SET, False
        elif first:
            modifier, mode = lesion, ADD
        else:
            modifier, mode = lesion | session.base, SET
        self.backend.saveStateForUndo()
        self.backend.modifySelectedSegment(regions.mask_to_oriented(modifier, reference), mode)
        if not message:
            message = self._summary(session, voxels, reference)
        return self.done(EffectResult(message, True, voxels, bounded, time.perf_counter() - started))

    def _seeded(self, image: Any, seeds: list, background: list) -> Any:
        from tumorseg_core.interactive.seeds import segment_from_seeds

        return segment_from_seeds(image, seeds, background, max_radius_mm=self.maxRadiusMm)

    @staticmethod
    def _summary(session: _Session, voxels: int, reference: Any) -> str:
        volume_ml = voxels * float(np.prod(reference.GetSpacing())) / 1000.0
        points = f"{len(session.seeds)} seed(s)" + (f", {len(session.background)} background" if session.background else "")
        what = "Tumor" if session.mode == MODE_SEED else "Kept lesions"
        return f"{what}: {volume_ml:.2f} mL from {points}"

    def done(self, result: EffectResult) -> EffectResult:
        """Record ``result`` as the last one and log its message (every mode ends here)."""
        self.lastResult = result
        logger.info("%s", result.message)
        return result

    def undo(self) -> None:
        """Undo the last edit (through the editor logic) and forget the click that made it."""
        self.backend.undo()
        session = self._session
        if session is not None and session.history:
            session.seeds, session.background = session.history.pop()
            if not session.history:
                self._session = None

    # ------------------------------------------------------------------ Click / Box / Scribble

    @property
    def interactive(self) -> Any:
        """The Click / Box / Scribble logic (:class:`effect_interactive.InteractiveEffectLogic`), made on first use."""
        if self._interactive is None:
            from .effect_interactive import InteractiveEffectLogic

            self._interactive = InteractiveEffectLogic(self)
        return self._interactive

    # ------------------------------------------------------------------ Auto mode

    @property
    def segmentationLogic(self) -> Any:
        if self._segmentationLogic is None:
            from .logic import TumorSegmentationLogic

            self._segmentationLogic = TumorSegmentationLogic()
        return self._segmentationLogic

    @property
    def isRunning(self) -> bool:
        return self._auto is not None

    def run_auto(self, model: str = "default", device: str = "auto", output_label: Union[int, str, None] = None,
                 roi: Any = None, waitForCompletion: bool = True, progressCallback: Optional[ProgressCallback] = None,
                 completionCallback: Optional[Callable[[EffectResult], None]] = None,
                 options: Optional[dict] = None) -> Optional[EffectResult]:
        """Run ``model`` on the source volume and write ``output_label`` (value or name; default the first) into the selected segment.

        Only the selected segment changes (through the editor's masking rules); the
        model's other labels are discarded. With an ROI (``roi`` or :attr:`roiNode`) the
        model sees only the ROI and the segment changes only inside it. Blocking by
        default; with ``waitForCompletion=False`` call :meth:`poll` until it returns False,
        and the result goes to ``completionCallback``.
        """
        if self.isRunning:
            raise TumorSegError("a segmentation is already running; wait for it or cancel it")
        if roi is not None:
            self.roiNode = roi
        seg, source, sid = self.selection()
        self._session = None
        input_node = regions.cropped_volume_node(source, self.roiNode, seg) if self.roiNode is not None else source
        temp = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", self.scene.GenerateUniqueName("TumorEffectAuto"))
        temp.SetHideFromEditors(True)
        temp.SetSaveWithScene(False)
        temp.SetAndObserveTransformNodeID(seg.GetTransformNodeID())
        self._auto = {"temp": temp, "input": input_node if input_node is not source else None, "label": output_label,
                      "started": time.perf_counter(), "callback": completionCallback, "result": None,
                      "selection": (seg.GetID(), sid)}
        try:
            self.segmentationLogic.process([input_node], temp, model=model, device=device,
                                           waitForCompletion=waitForCompletion, progressCallback=progressCallback,
                                           options=options, completionCallback=self._auto_finished)
        except BaseException:
            self._auto_cleanup()
            raise
        # The completion callback has run (and cleaned up) by now when blocking.
        return self.lastResult if waitForCompletion else None

    def poll(self) -> bool:
        """Drive a non-blocking Auto run; True while it runs."""
        if self._auto is None:
            return False
        self.segmentationLogic.poll()
        return self._auto is not None

    def cancel(self) -> None:
        """Cancel a running Auto run; the segment is left as it was."""
        if self._auto is not None:
            self.segmentationLogic.cancel()

    def _auto_finished(self, success: bool, message: str) -> None:
        auto = self._auto
        if auto is None:
            return
        try:
            if success:
                result = self._write_auto(auto)
            else:
                result = EffectResult(message or "the segmentation failed")
        except TumorSegError as exc:
            result = EffectResult(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the run half-finished; it is logged
            logger.exception("writing the model result into the segment failed")
            result = EffectResult(f"could not write the result: {type(exc).__name__}: {exc}")
        finally:
            self._auto_cleanup()
        auto["result"] = result
        self.done(result)
        if auto["callback"] is not None:
            auto["callback"](result)

    def _write_auto(self, auto: dict) -> EffectResult:
        seg, _, sid = self.selection()
        if (seg.GetID(), sid) != auto["selection"]:
            raise TumorSegError("the selected segment changed during the run; nothing was written")
        reference = self.backend.referenceGeometry()
        segment = regions.find_output_segment(auto["temp"], auto["label"])
        lesion = regions.segment_mask(auto["temp"], auto["temp"].GetSegmentation().GetSegmentIdBySegment(segment),
                                      reference)
        mode = SET
        if self.roiNode is not None:
            inside = regions.roi_mask(reference, self.roiNode, seg)
            lesion &= inside
            lesion |= regions.segment_mask(seg, sid, reference) & ~inside
        self.backend.saveStateForUndo()
        self.backend.modifySelectedSegment(regions.mask_to_oriented(lesion, reference), mode)
        volume_ml = int(lesion.sum()) * float(np.prod(reference.GetSpacing())) / 1000.0
        seconds = time.perf_counter() - auto["started"]
        return EffectResult(f"{segment.GetName()}: {volume_ml:.2f} mL in {seconds:.1f} s", True, int(lesion.sum()),
                            False, seconds)

    def _auto_cleanup(self) -> None:
        auto, self._auto = self._auto, None
        if auto is None:
            return
        for key in ("temp", "input"):
            node = auto.get(key)
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
