"""TumorSegmentationLogic: volume nodes in, segments out, inference in a background worker.

Qt-free and usable headless (slicer-core, ``Slicer --no-main-window``, the Python
console)::

    logic = TumorSegmentationLogic()
    logic.process([t1Node], segmentationNode, model="default")             # blocks
    logic.process([t1Node], segmentationNode, waitForCompletion=False)      # returns at once
    while logic.poll(): time.sleep(0.1)                                     # or a QTimer

The scene is only modified once the worker has finished successfully: the new segments
are built outside the scene and added in one step, so an error or a cancel leaves the
scene exactly as it was (same nodes, same segments). The temporary folder holding the
exported inputs and the result is always deleted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import slicer
import vtk

from tumorseg_core.errors import CancelledError, TumorSegError

from . import geometry_bridge, terminology, uncertainty_volume
from .runner import DEFAULT_IDLE_TIMEOUT_S, WorkerRunner

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
CompletionCallback = Callable[[bool, str], None]

#: Segment tags that mark segments TumorSeg created (used by ``replaceExisting``).
MODEL_TAG = "TumorSeg.Model"
LABEL_VALUE_TAG = "TumorSeg.LabelValue"


def _logic_base() -> type:
    """ScriptedLoadableModuleLogic inside the Slicer application, else ``object`` (headless)."""
    if getattr(slicer, "app", None) is None:
        return object
    try:
        from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

        return ScriptedLoadableModuleLogic
    except ImportError:
        return object


@dataclass
class _Job:
    """One running segmentation (private to the Logic)."""

    request_id: int
    temp_dir: Path
    output_path: Path
    segmentation_node: Any
    manifest: Any
    ijk_to_frame: Any
    shape_zyx: tuple
    reference_volume: Any
    replace_existing: bool
    uncertainty: bool
    progress_callback: Optional[ProgressCallback]
    completion_callback: Optional[CompletionCallback]
    started: float = field(default_factory=time.perf_counter)


_LogicBase = _logic_base()


class TumorSegmentationLogic(_LogicBase):  # type: ignore[misc, valid-type]
    """Runs TumorSeg models on MRML volume nodes; results become segments with terminology.

    Attributes:
        status: ``"idle"``, ``"running"``, ``"done"``, ``"error"`` or ``"cancelled"``.
        lastError: one-line message of the last failure (or ``None``).
        lastResult: after success: ``seconds`` (worker), ``totalSeconds``, ``warm``,
            ``workerPid``, ``segmentIDs`` (the new segments, in manifest order).
    """

    def __init__(self, runner: Optional[WorkerRunner] = None, idleTimeout: float = DEFAULT_IDLE_TIMEOUT_S) -> None:
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        self.runner = runner or WorkerRunner(idle_timeout=idleTimeout)
        self.status = "idle"
        self.lastError: Optional[str] = None
        self.lastResult: Optional[Dict[str, Any]] = None
        self._job: Optional[_Job] = None
        self._scene_observations: List[tuple] = []
        self._manifests: Dict[tuple, Any] = {}

    # ------------------------------------------------------------------ public API

    @property
    def isRunning(self) -> bool:
        """True while a segmentation is in progress."""
        return self._job is not None

    def modelManifest(self, model: str = "default") -> Any:
        """The validated manifest of a model package (read once per version on disk).

        Only the manifest is read here, in the UI process: the weights are not hashed (the
        worker verifies every file of the package before it runs the model).
        """
        from tumorseg_core.modelpkg.package import read_manifest, resolve_package_path
        from tumorseg_core.worker import model_fingerprint

        path = str(resolve_package_path(model))
        key = (path, model_fingerprint(path))
        if key not in self._manifests:
            self._manifests = {k: v for k, v in self._manifests.items() if k[0] != path}
            self._manifests[key] = read_manifest(path)
        return self._manifests[key]

    def deviceReport(self, timeout: float = 120.0) -> Dict[str, Any]:
        """What the worker can run on: torch build, GPUs, MPS, threads (``device_report``).

        Asked of the background worker (started if needed), so Slicer's UI process never
        imports torch. Raises TumorSegError while a segmentation runs or if the worker fails.
        """
        if self.isRunning:
            raise TumorSegError("a segmentation is running; ask for the device report when it has finished")
        try:
            rid = self.runner.submit({"cmd": "devices"})
        except OSError as exc:
            raise TumorSegError(f"could not start the segmentation worker: {exc}") from exc
        app = getattr(slicer, "app", None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.runner.poll():
                if event.get("id") != rid:
                    continue
                if event.get("event") == "devices":
                    return dict(event.get("report") or {})
                if event.get("event") == "error":
                    raise TumorSegError(str(event.get("message") or "the worker could not report its devices"))
            if app is not None:
                app.processEvents()
            time.sleep(0.02)
        self.runner.cancel()
        raise TumorSegError(f"the worker did not report its devices within {timeout:.0f} s; try again")

    def importModel(self, path: Any, overwrite: bool = False, progressCallback: Optional[ProgressCallback] = None,
                    timeout: Optional[float] = None) -> str:
        """Install a model package, or import a pretrained model, into the user model folder.

        ``path`` is a TumorSeg package (folder or .zip) or a model TumorSeg can import
        (``tumorseg import``: an nnU-Net v2 model folder or zip, a MONAI bundle). The work runs in the background worker (hashing, reading and
        converting weights never block Slicer's UI process); returns the installed model's
        name, what :meth:`process` takes as ``model``. Raises ModelAlreadyInstalledError when
        the name is taken (pass ``overwrite=True`` to replace it), TumorSegError otherwise.
        """
        from tumorseg_core.errors import ModelAlreadyInstalledError

        if self.isRunning:
            raise TumorSegError("a segmentation is running; import the model when it has finished")
        source = Path(str(path)).expanduser()
        if not source.exists():
            raise TumorSegError(f"{source} does not exist; choose a model folder or file")
        try:
            rid = self.runner.submit({"cmd": "import", "source": str(source.resolve()), "overwrite": bool(overwrite)})
        except OSError as exc:
            raise TumorSegError(f"could not start the segmentation worker: {exc}") from exc
        app = getattr(slicer, "app", None)
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            for event in self.runner.poll():
                if event.get("id") != rid:
                    continue
                kind = event.get("event")
                if kind == "progress" and progressCallback is not None:
                    progressCallback(float(event.get("fraction", 0.0)), str(event.get("message", "")))
                elif kind == "imported":
                    self._manifests = {}
                    return str(event["name"])
                elif kind == "error":
                    message = str(event.get("message") or "the import failed")
                    if event.get("kind") == ModelAlreadyInstalledError.__name__:
                        raise ModelAlreadyInstalledError(str(event.get("name", "")), str(event.get("folder", "")))
                    raise TumorSegError(message)
            if app is not None:
                app.processEvents()
            time.sleep(0.02)
        self.runner.cancel()
        raise TumorSegError(f"importing {source.name} took longer than {timeout:.0f} s and was stopped")

    def process(
        self,
        inputVolumeNodes: Any,
        outputSegmentationNode: Any,
        model: str = "default",
        device: str = "auto",
        waitForCompletion: bool = True,
        progressCallback: Optional[ProgressCallback] = None,
        options: Optional[Dict[str, Any]] = None,
        replaceExisting: bool = False,
        completionCallback: Optional[CompletionCallback] = None,
        uncertainty: bool = False,
    ) -> bool:
        """Segment ``inputVolumeNodes`` (one per model input, in manifest order) into ``outputSegmentationNode``.

        Adds one segment per label of the model (name, color, terminology); existing
        segments are never changed. With ``replaceExisting``, segments that TumorSeg
        created earlier and that have the same name as a new one are replaced.
        With ``uncertainty``, the voxel-wise uncertainty map (predictive entropy, 0..1) is
        added as a scalar volume node named "<segmentation> uncertainty" (its ID in
        ``lastResult["uncertaintyVolumeID"]``).

        With ``waitForCompletion`` (default) returns True once done and raises
        TumorSegError (CancelledError on cancel) on failure. Otherwise returns True once
        started; :meth:`poll` (or a timer calling it) drives the run, and the outcome is
        in :attr:`status` / :attr:`lastError` and passed to ``completionCallback(success, message)``.
        Invalid inputs always raise at once, before anything starts.
        """
        if self.isRunning:
            raise TumorSegError("a segmentation is already running; wait for it or cancel it")
        volumes = list(inputVolumeNodes) if isinstance(inputVolumeNodes, (list, tuple)) else [inputVolumeNodes]
        if outputSegmentationNode is None or not outputSegmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise TumorSegError("select an output segmentation node")
        if outputSegmentationNode.GetScene() is None:
            raise TumorSegError("the output segmentation node is not in a scene; add it to the scene first")
        if not isinstance(uncertainty, bool):
            raise TumorSegError(f"uncertainty must be True or False, got {uncertainty!r}")
        from tumorseg_core.options import SegmentOptions

        # The engine's own validation, here in the UI process: a bad option fails before anything starts.
        run_options = SegmentOptions.from_mapping({**dict(options or {}), "device": device})
        manifest = self.modelManifest(model)
        self._validate_inputs(volumes, manifest)

        temp_dir = Path(tempfile.mkdtemp(prefix="TumorSeg-"))
        try:
            paths, matrices = [], []
            for i, volume in enumerate(volumes):
                path = temp_dir / f"input{i}.mha"  # raw MetaImage: exact geometry, and the worker reads it in slabs
                matrices.append(geometry_bridge.write_volume(volume, path, frame_node=outputSegmentationNode))
                paths.append(str(path))
            # The worker opens exactly the package whose manifest was checked here (its cwd differs).
            from tumorseg_core.modelpkg.package import resolve_package_path

            model_arg = str(Path(resolve_package_path(model)).resolve())
            output_path = temp_dir / "labels.nrrd"
            request = {"cmd": "segment", "images": paths, "output": str(output_path), "model": model_arg,
                       "device": run_options.device,
                       "options": {k: v for k, v in run_options.to_dict().items() if k != "device"}}
            if uncertainty:
                request["uncertainty"] = True
            request_id = self.runner.submit(request)
        except BaseException as exc:
            shutil.rmtree(temp_dir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise TumorSegError(f"could not start the segmentation worker: {exc}") from exc
            raise
        dims = volumes[0].GetImageData().GetDimensions()
        self._job = _Job(
            request_id=request_id, temp_dir=temp_dir, output_path=output_path,
            segmentation_node=outputSegmentationNode, manifest=manifest, ijk_to_frame=matrices[0],
            shape_zyx=(dims[2], dims[1], dims[0]), reference_volume=volumes[0],
            replace_existing=replaceExisting, uncertainty=uncertainty, progress_callback=progressCallback,
            completion_callback=completionCallback,
        )
        self.status, self.lastError = "running", None
        self._observe_scene(outputSegmentationNode.GetScene())
        if not waitForCompletion:
            return True
        app = getattr(slicer, "app", None)
        while self.poll():
            if app is not None:
                app.processEvents()  # keep Slicer's UI (and a Cancel button) responsive
            time.sleep(0.02)
        if self.status == "cancelled":
            raise CancelledError()
        if self.status != "done":
            raise TumorSegError(self.lastError or "the segmentation failed")
        return True

    def poll(self) -> bool:
        """Handle the worker's news (progress, result, error); returns True while still running."""
        job = self._job
        if job is None:
            return False
        for event in self.runner.poll():
            if self._job is not job:
                break  # a callback cancelled the run
            kind = event.get("event")
            if event.get("id") != job.request_id:
                if kind == "ready":
                    logger.info("worker ready (pid %s)", event.get("pid"))
                continue
            if kind == "progress":
                if job.progress_callback is not None:
                    job.progress_callback(float(event.get("fraction", 0.0)), str(event.get("message", "")))
            elif kind == "done":
                self._finish(job, event)
            elif kind == "error":
                self._end(job, "error", str(event.get("message") or "the segmentation failed"))
        return self._job is not None

    def cancel(self) -> None:
        """Stop a running segmentation: kill the worker process tree; the scene stays as it was."""
        job = self._job
        if job is None:
            return
        self.runner.cancel()
        self._end(job, "cancelled", CancelledError().args[0])

    def measure(self, segmentationNode: Any, volumeNode: Any, petVolumeNode: Any = None,
                suvFactor: Optional[float] = None, segmentIDs: Optional[Sequence[str]] = None,
                tableNode: Any = None) -> Any:
        """Fill (or create) the "Tumor measurements" table node: one row per lesion; returns it.

        See :func:`TumorSegmentationLib.measurements_table.measure_segmentation`. Runs in this
        process (no torch): seconds even for a large CT.
        """
        from .measurements_table import measure_segmentation

        return measure_segmentation(segmentationNode, volumeNode, petVolumeNode, suvFactor, segmentIDs, tableNode)

    def exportDicomSeg(self, segmentationNode: Any, volumeNode: Any, outputPath: Any,
                       fileForInstance: Optional[Callable[[str], str]] = None,
                       segmentIDs: Optional[Sequence[str]] = None) -> Path:
        """Write the TumorSeg segments as a DICOM SEG of ``volumeNode``'s DICOM series; returns the path.

        ``fileForInstance`` maps a SOP Instance UID to its file (default: Slicer's DICOM
        database). See :func:`TumorSegmentationLib.dicom_export.export_dicom_seg`.
        """
        from tumorseg_core import __version__

        from .dicom_export import export_dicom_seg
        from .segments_on_volume import tumorseg_segment_ids

        ids = list(segmentIDs) if segmentIDs is not None else tumorseg_segment_ids(segmentationNode)
        models = set()
        for sid in ids:
            segment = segmentationNode.GetSegmentation().GetSegment(sid)
            tag = vtk.reference("")
            if segment is not None and segment.GetTag(MODEL_TAG, tag) and str(tag):
                models.add(str(tag))
        name = "TumorSeg" + (f" {', '.join(sorted(models))}" if models else "")
        return export_dicom_seg(segmentationNode, volumeNode, outputPath, fileForInstance, ids,
                                algorithm_name=name[:64], algorithm_version=__version__)

    def shutdown(self) -> None:
        """Cancel any run, stop the worker and stop observing scenes (module cleanup)."""
        self.cancel()
        self.runner.shutdown()
        for scene, tag in self._scene_observations:
            scene.RemoveObserver(tag)
        self._scene_observations = []

    # ------------------------------------------------------------------ steps

    @staticmethod
    def _validate_inputs(volumes: Sequence[Any], manifest: Any) -> None:
        modalities = manifest.input_modalities
        if len(volumes) != len(modalities):
            raise TumorSegError(
                f"model '{manifest.name}' needs {len(modalities)} input volume(s) ({', '.join(modalities)}), "
                f"{len(volumes)} given; select one volume per input in that order"
            )
        for i, volume in enumerate(volumes):
            label = f"input {i + 1} ({modalities[i]})"
            if volume is None:
                raise TumorSegError(f"{label} is not selected; select a volume")
            if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode") \
                    or volume.IsA("vtkMRMLVectorVolumeNode"):
                raise TumorSegError(f"{label} '{volume.GetName()}' is a {volume.GetClassName()}; select a scalar image volume")
            geometry_bridge.volume_array(volume)  # raises InputError for missing/empty/vector image data

    def _finish(self, job: _Job, event: Dict[str, Any]) -> None:
        """Import the result; any failure leaves the scene unchanged and ends the job as an error."""
        try:
            node = job.segmentation_node
            if node.GetScene() is None:
                raise TumorSegError("the output segmentation node was removed from the scene during the run")
            labels = geometry_bridge.read_labels(job.output_path, job.ijk_to_frame, job.shape_zyx)
            entropy = None
            if job.uncertainty:  # read and checked before the scene changes
                if not event.get("uncertainty"):
                    raise TumorSegError("the worker sent no uncertainty map; update TumorSeg's engine")
                entropy = uncertainty_volume.read_uncertainty(event["uncertainty"], job.ijk_to_frame, job.shape_zyx)
            segment_ids = self._add_segments(job, labels)
            uncertainty_id = None
            if entropy is not None:
                uncertainty_id = uncertainty_volume.add_uncertainty_volume(
                    node.GetScene(), entropy, job.ijk_to_frame, node, replace=job.replace_existing).GetID()
        except TumorSegError as exc:
            self._end(job, "error", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - reported as a failed run; the traceback goes to the log
            logger.exception("importing the segmentation result failed")
            self._end(job, "error", f"could not import the result: {type(exc).__name__}: {exc}")
            return
        self.lastResult = {
            "seconds": event.get("seconds"), "warm": bool(event.get("warm")), "workerPid": self.runner.pid,
            "totalSeconds": round(time.perf_counter() - job.started, 3), "segmentIDs": segment_ids,
            "uncertaintyVolumeID": uncertainty_id,
        }
        logger.info("segmentation done in %.2f s (worker %.2f s, %s worker)", self.lastResult["totalSeconds"],
                    float(event.get("seconds") or 0.0), "warm" if self.lastResult["warm"] else "cold")
        self._end(job, "done", f"added {len(segment_ids)} segment(s)")

    def _end(self, job: _Job, status: str, message: str) -> None:
        shutil.rmtree(job.temp_dir, ignore_errors=True)
        if self._job is job:
            self._job = None
        self.status = status
        self.lastError = None if status == "done" else message
        if status != "done":
            logger.warning("segmentation %s: %s", status, message)
        if job.completion_callback is not None:
            job.completion_callback(status == "done", message)

    def _build_segments(self, job: _Job, labels: Any) -> List[Any]:
        """One vtkSegment per manifest label, sharing one labelmap layer (outside any scene)."""
        label_infos = job.manifest.segments
        shared = geometry_bridge.shared_label_image(labels, [info.value for info in label_infos], job.ijk_to_frame)
        counts = geometry_bridge.label_counts(labels)
        binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        segments = []
        for info in label_infos:
            segment = slicer.vtkSegment()
            segment.SetName(info.name)
            segment.SetNameAutoGenerated(False)
            segment.SetColor(*info.color)
            segment.SetColorAutoGenerated(False)
            segment.SetLabelValue(int(info.value))
            segment.AddRepresentation(binary, shared)
            entry = terminology.terminology_entry(info.terminology)
            if entry:
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
            segment.SetTag(MODEL_TAG, job.manifest.name)
            segment.SetTag(LABEL_VALUE_TAG, str(info.value))
            if not counts.get(int(info.value)):
                logger.info("segment '%s' is empty (the model found no such voxels)", info.name)
            segments.append(segment)
        return segments

    def _add_segments(self, job: _Job, labels: Any) -> List[str]:
        """Add the new segments in one step; on any failure undo everything done here."""
        node = job.segmentation_node
        segments = self._build_segments(job, labels)
        segmentation = node.GetSegmentation()
        names = {segment.GetName() for segment in segments}
        to_replace: Dict[str, List[str]] = {}  # name -> IDs of earlier TumorSeg segments with that name
        if job.replace_existing:
            for sid in list(segmentation.GetSegmentIDs()):
                old = segmentation.GetSegment(sid)
                if old.HasTag(MODEL_TAG) and old.GetName() in names:
                    to_replace.setdefault(old.GetName(), []).append(sid)
        geometry_name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        ref_role = node.GetReferenceImageGeometryReferenceRole()
        old_geometry = segmentation.GetConversionParameter(geometry_name)
        old_reference = node.GetNodeReferenceID(ref_role)
        added: List[str] = []
        was_modifying = node.StartModify()
        try:
            node.SetReferenceImageGeometryParameterFromVolumeNode(job.reference_volume)
            for segment in segments:
                base = "TumorSeg_" + "".join(c if c.isalnum() else "_" for c in segment.GetName())
                sid = segmentation.GenerateUniqueSegmentID(base)
                # A replacement takes the place of the first segment it replaces.
                before = to_replace.get(segment.GetName(), [""])[0]
                if not segmentation.AddSegment(segment, sid, before):
                    raise TumorSegError(f"Slicer refused to add segment '{segment.GetName()}'")
                added.append(sid)
            for sid in [sid for sids in to_replace.values() for sid in sids]:
                segmentation.RemoveSegment(sid)
        except BaseException:
            for sid in added:
                segmentation.RemoveSegment(sid)
            segmentation.SetConversionParameter(geometry_name, old_geometry)
            node.SetNodeReferenceID(ref_role, old_reference)
            raise
        finally:
            node.EndModify(was_modifying)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        return added

    # ------------------------------------------------------------------ scene lifetime

    def _observe_scene(self, scene: Any) -> None:
        if any(observed is scene for observed, _ in self._scene_observations):
            return
        tag = scene.AddObserver(slicer.vtkMRMLScene.EndCloseEvent, self._on_scene_closed)
        self._scene_observations.append((scene, tag))

    def _on_scene_closed(self, caller: Any = None, event: Any = None) -> None:
        """Closing the scene ends any run and frees the worker's memory (it restarts on demand)."""
        logger.info("scene closed: stopping the segmentation worker")
        self.cancel()
        self.runner.shutdown()
