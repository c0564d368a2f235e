"""Qt-free logic of the Tumor effect's "Live" mode: a 2.5D model previews the slice under the mouse.

As the user moves the mouse or scrolls, the effect calls :meth:`LivePreviewLogic.request`
with the slice view's node (and the mouse's world RAS point). The logic turns that into
``(axis, index)`` on the *source volume's own grid* (:func:`slice_under_mouse`), sends a
``slice`` request to the warm background worker (``tumorseg_core.worker``, the same
process and ``WorkerRunner`` that Auto mode uses) and shows the answer as a preview; a
click (:meth:`accept`) adds the previewed slice into the selected segment, one Undo step.

- **Debounce.** At most one slice request is in flight; while it runs, newer requests only
  replace the one pending request (the latest wins), which is sent when the answer comes.
  The worker supersedes queued slice requests the same way. The effect adds a QTimer delay.
- **Never blocking.** :meth:`request` and :meth:`poll` return at once; the effect calls
  :meth:`poll` on a timer. Nothing waits for the worker except :meth:`wait` (tests, scripts)
  and :meth:`stop` (a few seconds at most, for a request still in flight).
- **Preview.** A separate segmentation node ("TumorSeg live preview": hidden from editors,
  never saved, under the segmentation's transform) with one segment holding the model's
  output label on that one slice. The user's segmentation is never touched while previewing;
  :meth:`stop` removes the node and the temporary folder, so the scene is as before.
- **Geometry.** The source volume is written once (per start, and again only if its voxels
  change) as a MetaImage in the segmentation's frame (``geometry_bridge.write_volume``), so the
  worker normalizes it once. Slices are planes of the volume's own grid: ``axial`` fixes
  numpy axis 0 (k), ``coronal`` axis 1 (j), ``sagittal`` axis 2 (i). A slice view that is not
  parallel to one of them (an oblique view, e.g. a Red view on a rotated volume before
  "Rotate to volume plane") is refused with one line saying what to do.

Only the model's first input is used (Live needs a one-input ``unet25d`` model). Errors from
the worker end the live session: the one-line message is kept in :attr:`LivePreviewLogic.message`
and the scene is left as it was before :meth:`start`.
"""

from __future__ import annotations

import base64
import logging
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import slicer

from tumorseg_core.errors import InputError, TumorSegError

from . import effect_regions as regions
from . import geometry_bridge as gb
from .effect_logic import ADD, EffectResult

logger = logging.getLogger(__name__)

#: The architecture a Live model must have (``tumorseg_core.inference.slice_mode.ARCHITECTURE``).
SLICE_ARCHITECTURE = "unet25d"
#: The shipped 2.5D model Live uses when the selected model is not a 2.5D one.
LIVE_DEFAULT_MODEL = "realtime"
#: Slice axis names by numpy axis of a (z, y, x) array (the worker's ``axis`` values).
AXIS_NAMES = ("axial", "coronal", "sagittal")
PREVIEW_NODE_NAME = "TumorSeg live preview"
#: |sin| of the largest angle between a view plane and a grid plane still taken as parallel.
PARALLEL_TOLERANCE = 1e-3
_ENCODING = "zlib+base64"


def live_model_for(selected: Optional[str], manifest_of: Any) -> str:
    """The model Live runs: ``selected`` when it is a 2.5D model, else TumorSeg's shipped ``"realtime"`` model.

    ``manifest_of(model) -> Manifest`` reads a manifest (``TumorSegmentationLogic.modelManifest``);
    a selection that cannot be read falls back too, so Live works with no extra choice.
    """
    if selected:
        try:
            if manifest_of(selected).architecture == SLICE_ARCHITECTURE:
                return selected
        except TumorSegError:
            pass
    return LIVE_DEFAULT_MODEL


def slice_under_mouse(slice_to_ras: np.ndarray, ijk_to_world: np.ndarray, shape_zyx: Sequence[int],
                      point_ras: Optional[Sequence[float]] = None) -> Optional[Tuple[str, int]]:
    """``(axis name, index)`` of the volume slice a slice view shows, or None off the volume.

    Args:
        slice_to_ras: (4, 4) the slice node's SliceToRAS (columns 0, 1: the view's in-plane
            directions; column 3: a point of the plane), world RAS.
        ijk_to_world: (4, 4) the volume's IJK-to-RAS in world coordinates (transforms folded in).
        shape_zyx: the volume's array shape (z, y, x) = (k, j, i) sizes.
        point_ras: the mouse's world RAS point (on the view plane); default: the plane's point.

    Raises InputError when the view plane is oblique to the volume's grid.
    """
    to_ijk = np.linalg.inv(np.asarray(ijk_to_world, dtype=float))
    in_plane = to_ijk[:3, :3] @ np.asarray(slice_to_ras, dtype=float)[:3, :2]  # (3 ijk, 2 directions)
    # The view shows a plane of constant IJK coordinate c when both in-plane directions have no c part.
    # Compare directions on the grid's own (unit) axes, so anisotropic spacing does not skew the angle.
    spacing = np.linalg.norm(np.asarray(ijk_to_world, dtype=float)[:3, :3], axis=0)
    physical = in_plane * spacing[:, None]
    physical /= np.maximum(np.linalg.norm(physical, axis=0, keepdims=True), 1e-12)
    parallel = [c for c in range(3) if np.all(np.abs(physical[c]) <= PARALLEL_TOLERANCE)]
    if len(parallel) != 1:
        raise InputError("the slice view is oblique to the source volume's grid; Live previews only views "
                         "aligned with it (slice view menu: Reset field of view / Rotate to volume plane)")
    c = parallel[0]
    point = np.asarray(point_ras if point_ras is not None else np.asarray(slice_to_ras)[:3, 3], dtype=float)
    position = float((to_ijk @ np.r_[point[:3], 1.0])[c])
    axis = 2 - c  # IJK axis i, j, k is numpy axis 2, 1, 0
    n = int(shape_zyx[axis])
    if not -0.5 <= position < n - 0.5:
        return None
    return AXIS_NAMES[axis], int(np.floor(position + 0.5))


@dataclass
class _Preview:
    """What the preview node shows: ``labels`` (P, Q) uint8, the model's labels of that slice."""

    axis: str
    index: int
    labels: np.ndarray
    seconds: float


class LivePreviewLogic:
    """Live mode of the Tumor effect on MRML (see the module docstring).

    Args:
        effectLogic: the effect's ``TumorEffectLogic`` (selection, editor backend, undo, and
            its ``segmentationLogic`` whose warm worker runs the slices).
        runner: the ``WorkerRunner`` to use (default: the effect's segmentation logic's).

    Attributes:
        message: one line for the effect's status label (last result, refusal or error).
        sentRequests: ``(axis, index)`` of every slice request sent to the worker, in order.
    """

    def __init__(self, effectLogic: Any, runner: Any = None) -> None:
        self.effectLogic = effectLogic
        self._runner = runner
        self.message = ""
        self.sentRequests: List[Tuple[str, int]] = []
        self._session: Optional[Dict[str, Any]] = None
        self._inflight: Optional[Tuple[int, str, int, float]] = None  # (request id, axis, index, sent at)
        self._pending: Optional[Tuple[str, int]] = None
        self._preview: Optional[_Preview] = None
        self._node: Any = None

    # ------------------------------------------------------------------ state

    @property
    def runner(self) -> Any:
        return self._runner if self._runner is not None else self.effectLogic.segmentationLogic.runner

    @property
    def isActive(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (or an error)."""
        return self._session is not None

    @property
    def isBusy(self) -> bool:
        """True while a slice request is in flight or waiting to be sent (keep polling)."""
        return self._inflight is not None or self._pending is not None

    @property
    def preview(self) -> Optional[Tuple[str, int]]:
        """``(axis, index)`` of the slice the preview shows, or None."""
        return (self._preview.axis, self._preview.index) if self._preview is not None else None

    @property
    def previewLabels(self) -> Optional[np.ndarray]:
        """The model's labels (P, Q) uint8 of the previewed slice (a copy), or None."""
        return None if self._preview is None else self._preview.labels.copy()

    @property
    def previewNode(self) -> Any:
        """The preview segmentation node, once a preview has been shown."""
        return self._node

    # ------------------------------------------------------------------ start / stop

    def start(self, model: str = "default", device: str = "auto", output_label: Any = None,
              options: Optional[dict] = None) -> None:
        """Begin a live session with ``model`` (a one-input 2.5D package) on the selected source volume.

        Nothing is added to the scene here; the worker starts (if needed) with the first request.
        ``output_label`` (value or name; default the first label) is what the preview shows and
        :meth:`accept` writes. ``options``: engine options; only ``backend`` matters for slices.
        """
        from tumorseg_core.modelpkg.package import resolve_package_path
        from tumorseg_core.options import SegmentOptions

        self.stop()
        seg, source, _ = self.effectLogic.selection()
        run_options = SegmentOptions.from_mapping({**dict(options or {}), "device": device})
        manifest = self.effectLogic.segmentationLogic.modelManifest(model)
        if manifest.architecture != SLICE_ARCHITECTURE:
            raise InputError(f"model '{manifest.name}' is a {manifest.architecture} model; Live needs a 2.5D model "
                             f"({SLICE_ARCHITECTURE}); choose one in the Model list")
        if len(manifest.input_modalities) != 1:
            raise InputError(f"model '{manifest.name}' needs {len(manifest.input_modalities)} inputs; Live uses only "
                             "the source volume: choose a one-input 2.5D model")
        value, name, color = self._output_label(manifest, output_label)
        gb.volume_array(source)  # raises InputError for a volume without voxels
        self._session = {
            "model": str(Path(resolve_package_path(model)).resolve()), "device": run_options.device,
            "options": {k: v for k, v in run_options.to_dict().items() if k != "device"},
            "value": value, "name": name, "color": color, "selection": (seg.GetID(), source.GetID()),
            "temp": Path(tempfile.mkdtemp(prefix="TumorSegLive-")), "written": None,
        }
        self.message = f"Live: move the mouse over a slice ({manifest.name}, {name})"

    @staticmethod
    def _output_label(manifest: Any, label: Any) -> Tuple[int, str, Tuple[float, float, float]]:
        segments = list(manifest.segments)
        if not segments:
            raise InputError(f"model '{manifest.name}' has no output labels")
        chosen = segments[0] if label is None or label == "" else None
        for info in segments:
            if chosen is None and (str(label).lower() in (str(info.value), info.name.lower())):
                chosen = info
        if chosen is None:
            names = ", ".join(info.name for info in segments)
            raise InputError(f"the model has no output label '{label}'; choose one of: {names}")
        return int(chosen.value), chosen.name, tuple(float(c) for c in chosen.color)[:3]

    def stop(self, timeout: float = 5.0) -> None:
        """End the session: remove the preview node and the temporary folder; the scene is as before.

        A slice request still in flight is waited for up to ``timeout`` seconds (the shared
        worker must be free for the next Auto run); after that the worker is stopped (it
        restarts cold on demand).
        """
        inflight, self._inflight, self._pending = self._inflight, None, None
        if inflight is not None:
            seen = self.runner.wait_for(inflight[0], timeout=timeout)
            if not any(e.get("id") == inflight[0] and e.get("event") in ("slice", "error") for e in seen):
                logger.warning("live slice request %s did not finish in %.0f s; stopping the worker",
                               inflight[0], timeout)
                self.runner.cancel()
        self._clear_preview()
        session, self._session = self._session, None
        if session is not None:
            shutil.rmtree(session["temp"], ignore_errors=True)

    # ------------------------------------------------------------------ requests

    def slice_for_view(self, sliceNode: Any, pointRas: Optional[Sequence[float]] = None) -> Optional[Tuple[str, int]]:
        """``(axis, index)`` on the source volume's grid of the slice ``sliceNode`` shows (None: off the volume)."""
        _, source, _ = self.effectLogic.selection()
        slice_to_ras = gb.matrix_to_numpy(sliceNode.GetSliceToRAS())
        return slice_under_mouse(slice_to_ras, gb.volume_ijk_to_frame(source), regions.extent_shape(source.GetImageData().GetExtent()), pointRas)

    def request(self, sliceNode: Any, pointRas: Optional[Sequence[float]] = None) -> bool:
        """Preview the slice ``sliceNode`` shows (at the mouse's world RAS ``pointRas``); never blocks.

        Returns True when a request was sent or queued (the latest queued one replaces any
        older), False when nothing is needed (already shown or asked for) or the mouse is off
        the volume (the preview is then hidden). Raises InputError for an oblique view (the
        preview is hidden) or when no live session is active.
        """
        if self._session is None:
            raise InputError("Live is off; turn on Live first")
        try:
            target = self.slice_for_view(sliceNode, pointRas)
        except TumorSegError as exc:
            self._pending = None
            self._clear_preview()
            self.message = str(exc)
            raise
        if target is None:
            self._pending = None
            self._clear_preview()
            self.message = "Live: move the mouse over the source volume"
            return False
        return self.requestSlice(*target)

    def requestSlice(self, axis: str, index: int) -> bool:
        """Preview slice ``index`` along ``axis`` (a name of :data:`AXIS_NAMES`); see :meth:`request`."""
        if self._session is None:
            raise InputError("Live is off; turn on Live first")
        target = (str(axis), int(index))
        inflight = self._inflight[1:3] if self._inflight is not None else None
        if target == inflight or (inflight is None and target == self.preview and not self._stale()):
            self._pending = None
            return False
        self._pending = target
        self._send_pending()
        return True

    def _stale(self) -> bool:
        """True if the source volume changed since it was written for the worker."""
        session = self._session
        return session is not None and session["written"] is not None and session["written"][0] != self._stamp()

    def _stamp(self) -> tuple:
        seg, source, _ = self.effectLogic.selection()
        image = source.GetImageData()
        return (source.GetID(), image.GetMTime() if image is not None else 0,
                tuple(gb.volume_ijk_to_frame(source, seg).ravel()))

    def _input_path(self) -> str:
        """The source volume as a MetaImage in the segmentation's frame (written once per change)."""
        session = self._session
        assert session is not None
        seg, source, _ = self.effectLogic.selection()
        if (seg.GetID(), source.GetID()) != session["selection"]:
            raise InputError("the segmentation or source volume changed; turn Live off and on again")
        stamp = self._stamp()
        if session["written"] is None or session["written"][0] != stamp:
            # A new file name per version: the worker's cache is keyed on path, size and mtime.
            path = session["temp"] / f"source{len(self.sentRequests)}.mha"
            matrix = gb.write_volume(source, path, frame_node=seg)
            old = session["written"]
            session["written"] = (stamp, str(path), matrix, regions.extent_shape(source.GetImageData().GetExtent()))
            if old is not None:
                Path(old[1]).unlink(missing_ok=True)
        return session["written"][1]

    def _send_pending(self) -> None:
        """Send the pending request if nothing is in flight and the shared worker is free."""
        if self._pending is None or self._inflight is not None or self._session is None:
            return
        runner = self.runner
        segmentation_logic = self.effectLogic.segmentationLogic
        if runner.busy or segmentation_logic.isRunning:
            return  # an Auto run (or another request) owns the worker; retried by poll()
        axis, index = self._pending
        session = self._session
        request = {"cmd": "slice", "images": [self._input_path()], "model": session["model"],
                   "device": session["device"], "options": session["options"], "axis": axis, "index": index}
        try:
            rid = runner.submit(request)
        except OSError as exc:
            self._end_with_error(f"could not start the segmentation worker: {exc}")
            return
        self._pending = None
        self._inflight = (rid, axis, index, time.perf_counter())
        self.sentRequests.append((axis, index))

    def poll(self) -> bool:
        """Handle the worker's answer and send the latest pending request; True while busy."""
        if self._inflight is not None:
            rid = self._inflight[0]
            for event in self.runner.poll():
                if event.get("id") != rid:
                    continue
                kind = event.get("event")
                if kind == "slice":
                    self._answer(event)
                elif kind == "error":
                    self._end_with_error(str(event.get("message") or "the live preview failed"))
                    return False
        self._send_pending()
        return self.isBusy

    def wait(self, timeout: float = 60.0, interval: float = 0.01) -> bool:
        """Poll until no request is in flight or pending (scripts, tests); True if idle in time."""
        deadline = time.monotonic() + timeout
        while self.poll():
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True

    def _answer(self, event: Dict[str, Any]) -> None:
        inflight, self._inflight = self._inflight, None
        assert inflight is not None
        if event.get("superseded"):
            return
        try:
            labels = self._decode(event, inflight[1], inflight[2])
            self._show(_Preview(inflight[1], inflight[2], labels, time.perf_counter() - inflight[3]))
        except TumorSegError as exc:
            self._end_with_error(str(exc))

    def _decode(self, event: Dict[str, Any], axis: str, index: int) -> np.ndarray:
        session = self._session
        assert session is not None and session["written"] is not None
        shape_zyx = session["written"][3]
        plane = tuple(n for a, n in enumerate(shape_zyx) if a != AXIS_NAMES.index(axis))
        if event.get("encoding") != _ENCODING or (event.get("axis"), event.get("index")) != (axis, index):
            raise TumorSegError("the worker answered a different slice request; please report this")
        try:
            raw = zlib.decompress(base64.b64decode(str(event.get("data", ""))))
        except (ValueError, zlib.error) as exc:
            raise TumorSegError(f"the worker's slice answer is corrupt ({exc})") from exc
        if tuple(event.get("shape") or ()) != plane or len(raw) != int(np.prod(plane)):
            raise TumorSegError(f"the worker's slice has size {event.get('shape')} but the slice has {list(plane)}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(plane).copy()

    def _end_with_error(self, message: str) -> None:
        logger.warning("live preview: %s", message)
        self._inflight = None
        self.stop()
        self.message = message

    # ------------------------------------------------------------------ the preview node

    def _slice_image(self, axis: str, index: int, mask: np.ndarray) -> Any:
        """A uint8 vtkOrientedImageData of one slice of the source grid (segmentation frame)."""
        session = self._session
        assert session is not None and session["written"] is not None
        _, _, matrix, shape_zyx = session["written"]
        a = AXIS_NAMES.index(axis)
        volume_shape = list(shape_zyx)
        volume_shape[a] = 1
        slab = np.ascontiguousarray(np.expand_dims(mask.astype(np.uint8), a))
        image = gb.oriented_image(slab, matrix)
        extent = [0, shape_zyx[2] - 1, 0, shape_zyx[1] - 1, 0, shape_zyx[0] - 1]
        extent[2 * (2 - a)] = extent[2 * (2 - a) + 1] = index  # same voxels, at the slice's own index
        image.SetExtent(extent)
        return image

    def _show(self, preview: _Preview) -> None:
        session = self._session
        assert session is not None
        seg, _, _ = self.effectLogic.selection()
        mask = preview.labels == session["value"]
        image = self._slice_image(preview.axis, preview.index, mask)
        node = self._preview_node(seg)
        segment_id = node.GetSegmentation().GetSegmentIDs()[0]
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        self._preview = preview
        spacing = np.linalg.norm(session["written"][2][:3, :3], axis=0)
        area_cm2 = int(mask.sum()) * float(np.prod(np.delete(spacing, 2 - AXIS_NAMES.index(preview.axis)))) / 100.0
        self.message = (f"Live {preview.axis} slice {preview.index}: {session['name']} {area_cm2:.2f} cm² "
                        f"({preview.seconds * 1000:.0f} ms); click to add it to the segment")

    def _preview_node(self, seg: Any) -> Any:
        """The preview segmentation node (created on first use, under the segmentation's transform)."""
        node = self._node
        if node is not None and node.GetScene() is not None:
            return node
        session = self._session
        assert session is not None
        scene = self.effectLogic.scene
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(PREVIEW_NODE_NAME))
        node.SetHideFromEditors(True)
        node.SetSaveWithScene(False)
        node.SetAndObserveTransformNodeID(seg.GetTransformNodeID())
        node.GetSegmentation().AddEmptySegment("LivePreview", f"Live preview: {session['name']}", session["color"])
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetOpacity2DFill(0.35)
            display.SetOpacity2DOutline(1.0)
        self._node = node
        return node

    def _clear_preview(self) -> None:
        """Hide the preview: its node is removed (made again by the next answer)."""
        self._preview = None
        node, self._node = self._node, None
        scene = node.GetScene() if node is not None else None
        if scene is not None:
            displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
            scene.RemoveNode(node)
            for display in displays:  # MRML leaves display nodes behind when their node goes
                if display is not None and display.GetScene() is not None:
                    scene.RemoveNode(display)

    # ------------------------------------------------------------------ accept

    def accept(self) -> EffectResult:
        """Add the previewed slice's output label into the selected segment (one Undo step).

        Only that slice's voxels can change, through the editor's masking rules (editable area,
        intensity range, overwrite); other slices and other segments are left alone.
        """
        started = time.perf_counter()
        preview, session = self._preview, self._session
        if session is None or preview is None:
            raise InputError("nothing to accept yet: move the mouse over a slice and wait for the live preview")
        seg, source, _ = self.effectLogic.selection()
        if (seg.GetID(), source.GetID()) != session["selection"]:
            raise InputError("the segmentation or source volume changed; turn Live off and on again")
        mask = preview.labels == session["value"]
        reference = self.effectLogic.backend.referenceGeometry()
        node = slicer.vtkMRMLScalarVolumeNode()  # transient, never added to a scene
        a = AXIS_NAMES.index(preview.axis)
        slab = np.ascontiguousarray(np.expand_dims(mask.astype(np.uint8), a))
        shift = np.eye(4)
        shift[2 - a, 3] = preview.index
        node.SetAndObserveImageData(regions.plain_image(slab))
        node.SetIJKToRASMatrix(gb.numpy_to_matrix(session["written"][2] @ shift))
        lesion = regions.sitk_to_reference_mask(gb.volume_to_sitk(node)[0], reference)
        voxels = int(lesion.sum())
        if voxels:
            self.effectLogic.backend.saveStateForUndo()
            self.effectLogic.backend.modifySelectedSegment(regions.mask_to_oriented(lesion, reference), ADD)
        message = (f"Added {voxels} voxel(s) of {session['name']} on {preview.axis} slice {preview.index}" if voxels
                   else f"{preview.axis.capitalize()} slice {preview.index}: the model found no {session['name']}; "
                        "nothing added")
        self.message = message
        return self.effectLogic.done(EffectResult(message, bool(voxels), voxels, False, time.perf_counter() - started))
