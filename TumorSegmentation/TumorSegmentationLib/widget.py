"""Qt adapter of the Tumor Segmentation panel.

Copies the decisions of :mod:`TumorSegmentationLib.panel_state` onto the widgets of
``Resources/UI/TumorSegmentation.ui`` and forwards clicks to the Logic. It holds no
rules of its own: what a label says, when Apply is enabled, what the status line
reads are all decided (and unit-tested) in panel_state. Inference runs in the
Logic's background worker; a QTimer calls ``logic.poll()`` so the UI never freezes,
and Apply turns into Cancel while it runs.
"""

import logging
import time

import qt
import slicer

from TumorSegmentationLib import install
from TumorSegmentationLib import panel_state as ps

logger = logging.getLogger(__name__)

POLL_INTERVAL_MS = 200


class TumorSegmentationPanel:
    """Drives the panel widgets; ``ui`` is ``slicer.util.childWidgetVariables(uiWidget)``."""

    def __init__(self, ui, logic):
        self.ui = ui
        self.logic = logic
        self._parameterNode = None
        self._modelInfos = []
        self._modelItems = []
        self._modalities = ["Image"]
        self._deviceReport = None
        self._dependenciesChecked = False
        self._running = False
        self._startTime = 0.0
        self._fraction = None
        self._message = ""
        self._inputRows = [
            (ui.inputVolume0Label, ui.inputVolume0Selector),
            (ui.inputVolume1Label, ui.inputVolume1Selector),
            (ui.inputVolume2Label, ui.inputVolume2Selector),
            (ui.inputVolume3Label, ui.inputVolume3Selector),
        ]
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)
        ui.applyButton.connect("clicked(bool)", self.onApplyOrCancel)
        ui.addModelButton.connect("clicked(bool)", self.onAddModel)
        ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelIndexChanged)
        ui.show3DButton.connect("toggled(bool)", self.onShow3D)
        ui.measureButton.connect("clicked(bool)", self.onMeasure)
        ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        ui.progressBar.setRange(0, 100)
        ui.progressBar.visible = False

    # -- parameter node ----------------------------------------------------------------
    def setParameterNode(self, parameterNode) -> None:
        """Call after ``connectGui`` (which refills the bound combo boxes with raw choices)."""
        self._parameterNode = parameterNode
        self.decorateCombos()
        if parameterNode is not None and not self._modelItems:
            self.refreshModels()  # reads every manifest: only once, or after "Add model"
        elif parameterNode is not None:
            self._selectModel(parameterNode.model)
        self.updateState()

    def decorateCombos(self) -> None:
        for index, text in enumerate(ps.device_labels(self._deviceReport)):
            if index < self.ui.deviceComboBox.count:
                self.ui.deviceComboBox.setItemText(index, text)
        for index, choice in enumerate(ps.QUALITY_CHOICES):
            if index < self.ui.qualityComboBox.count:
                self.ui.qualityComboBox.setItemText(index, ps.QUALITY_LABELS[choice])

    # -- models ------------------------------------------------------------------------
    def refreshModels(self, select=None) -> None:
        from tumorseg_core.modelpkg import package

        try:
            self._modelInfos = list(package.installed_models(verify=False))  # manifests only: no hashing here
        except Exception as exc:  # a broken model folder must not break the panel
            logger.error("Could not list installed models: %s", exc)
            self._modelInfos = []
        self._modelItems = ps.model_items(self._modelInfos)
        wanted = select or (self._parameterNode.model if self._parameterNode else ps.DEFAULT_MODEL)
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for index, item in enumerate(self._modelItems):
            combo.addItem(item.text)
            combo.setItemData(index, item.tooltip, qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)
        self._selectModel(wanted)

    def _selectModel(self, name) -> None:
        names = [item.name for item in self._modelItems]
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.currentIndex = names.index(name) if name in names else (0 if self._modelInfos else -1)
        combo.blockSignals(wasBlocked)
        self._applyModel(combo.currentIndex)

    def onModelIndexChanged(self, index) -> None:
        if 0 <= index < len(self._modelItems) and self._modelItems[index].name is None:
            self.onAddModel()
            return
        self._applyModel(index)

    def _applyModel(self, index) -> None:
        info = self._modelInfos[index] if 0 <= index < len(self._modelInfos) else None
        self._modalities = ps.modalities_of(info) if info is not None else []
        if info is not None and self._parameterNode and self._parameterNode.model != self._modelItems[index].name:
            self._parameterNode.model = self._modelItems[index].name
        try:
            slots = ps.input_slots(self._modalities)
        except ValueError as exc:
            self.ui.statusLabel.text = str(exc)
            slots = ps.input_slots(self._modalities[: ps.MAX_INPUTS])
        for slot, (label, selector) in zip(slots, self._inputRows):
            label.visible = selector.visible = slot.visible
            label.text = slot.label
            selector.toolTip = slot.tooltip
        self.updateState()

    def onAddModel(self) -> None:
        from tumorseg_core.errors import ModelAlreadyInstalledError

        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Import model: choose a package .zip, a checkpoint, or the manifest.json/"
            "dataset.json in a model folder", "", ps.IMPORT_FILE_FILTER)
        if not path:
            self.refreshModels()  # puts the combo back on the current model
            return
        source = ps.import_source(path)
        self.ui.statusLabel.text = f"Importing {source} …"

        def progress(fraction, message) -> None:
            self.ui.statusLabel.text = f"Importing: {message}"

        try:
            with slicer.util.tryWithErrorDisplay("Could not import the model.", waitCursor=True):
                try:
                    name = self.logic.importModel(source, progressCallback=progress)
                except ModelAlreadyInstalledError as exc:
                    if not slicer.util.confirmYesNoDisplay(f"{exc}.\n\nReplace the installed model?"):
                        raise
                    name = self.logic.importModel(source, overwrite=True, progressCallback=progress)
        except Exception:
            self.refreshModels()
            return
        self.ui.statusLabel.text = f"Installed model '{name}' (all files verified)"
        self.refreshModels(select=name)

    # -- state -------------------------------------------------------------------------
    def _inputs(self) -> list:
        return [selector.currentNode() for _label, selector in self._inputRows]

    def updateState(self, caller=None, event=None) -> None:
        pn = self._parameterNode
        if pn is None:
            messages = ["The module is not initialized"]
        else:
            messages = ps.validation_messages(self._inputs(), self._modalities, pn.model, pn.device, self._deviceReport)
        state = ps.apply_button_state(self._running, messages)
        self.ui.applyButton.text = state.text
        self.ui.applyButton.toolTip = state.tooltip
        self.ui.applyButton.enabled = state.enabled
        self.ui.show3DButton.enabled = bool(pn and pn.outputSegmentation) and not self._running
        haveResult = bool(pn and pn.outputSegmentation and self._inputs()[0]) and not self._running
        self.ui.measureButton.enabled = haveResult
        self.ui.exportDicomSegButton.enabled = haveResult

    # -- run ---------------------------------------------------------------------------
    def onApplyOrCancel(self) -> None:
        if self._running:
            self.logic.cancel()  # kills the worker process tree; the scene is left as it was
            self._finish(ps.CANCELLED)
            return
        self.start()

    def _checkDependencies(self) -> bool:
        if self._dependenciesChecked:
            return True
        try:
            install.ensure_dependencies()
        except install.DependencyError as exc:
            self.ui.statusLabel.text = f"Cannot run yet: {exc}"
            slicer.util.errorDisplay(str(exc), windowTitle="Tumor Segmentation - Python packages")
            return False
        self._dependenciesChecked = True
        try:
            self._deviceReport = self.logic.deviceReport()  # asked of the worker: no torch in Slicer's UI process
        except Exception as exc:
            logger.warning("Could not detect compute devices: %s", exc)
        self.decorateCombos()
        return True

    def start(self) -> None:
        pn = self._parameterNode
        if pn is None or not self._checkDependencies():
            return
        self.updateState()
        if not self.ui.applyButton.enabled:  # the device check may have found no GPU
            self.ui.statusLabel.text = self.ui.applyButton.toolTip
            return
        inputs = self._inputs()[: len(self._modalities)]
        if pn.outputSegmentation is None:
            name = ps.output_segmentation_name(inputs[0].GetName() if inputs and inputs[0] else None)
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentation.CreateDefaultDisplayNodes()
            pn.outputSegmentation = segmentation
        self._running = True
        self._startTime, self._fraction, self._message = time.monotonic(), 0.0, "Starting"
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.updateState()
        try:
            self.logic.process(inputs, pn.outputSegmentation, model=pn.model, device=pn.device,
                               waitForCompletion=False, progressCallback=self.onProgress,
                               options=ps.run_options(pn.quality, pn.backend, pn.cascade), replaceExisting=True,
                               uncertainty=bool(pn.uncertainty))
        except Exception as exc:
            logger.exception("Segmentation could not start")
            self._finish(ps.FAILED, str(exc))
            return
        self.timer.start()
        self._showStatus()

    def onProgress(self, fraction, message="") -> None:
        self._fraction, self._message = fraction, message or self._message
        self.ui.progressBar.value = ps.progress_value(fraction)
        self._showStatus()

    def _showStatus(self) -> None:
        self.ui.statusLabel.text = ps.status_text(
            ps.RUNNING, time.monotonic() - self._startTime, self._message, self._fraction)

    def onTimer(self) -> None:
        try:
            stillRunning = self.logic.poll()
        except Exception as exc:  # a bug, not a user error (those end as status "error")
            logger.exception("Polling the segmentation failed")
            self._finish(ps.FAILED, str(exc))
            return
        if stillRunning:
            self._showStatus()
            return
        # Logic.status: "done", "cancelled" or "error" (with Logic.lastError).
        outcome = {"done": ps.DONE, "cancelled": ps.CANCELLED}.get(self.logic.status, ps.FAILED)
        self._finish(outcome, "" if outcome != ps.FAILED else (self.logic.lastError or ""))

    def _finish(self, state, message="") -> None:
        self.timer.stop()
        self._running = False
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = ps.status_text(state, time.monotonic() - self._startTime, message)
        if state == ps.FAILED:
            logger.error("Tumor segmentation failed: %s", message)
        self.updateState()
        if state == ps.DONE and self.ui.show3DButton.checked:
            self.onShow3D(True)
        if state == ps.DONE:
            uncertaintyID = (self.logic.lastResult or {}).get("uncertaintyVolumeID")
            if uncertaintyID:
                slicer.util.setSliceViewerLayers(foreground=uncertaintyID, foregroundOpacity=0.4)
            self.onMeasure()

    def _result(self):
        """(output segmentation, first input volume), or None while either is missing."""
        pn = self._parameterNode
        volume = self._inputs()[0]
        if pn is None or pn.outputSegmentation is None or volume is None:
            return None
        return pn.outputSegmentation, volume

    def onMeasure(self) -> None:
        result = self._result()
        if result is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not measure the segments.", waitCursor=True):
            table = self.logic.measure(*result)
            self.ui.measurementsTableView.setMRMLTableNode(table)

    def onExportDicomSeg(self) -> None:
        import tempfile
        from pathlib import Path

        from DICOMLib import DICOMUtils

        result = self._result()
        if result is None:
            return
        segmentation, volume = result
        with slicer.util.tryWithErrorDisplay("Could not export the DICOM SEG.", waitCursor=True):
            with tempfile.TemporaryDirectory(prefix="TumorSeg-SEG-") as folder:
                self.logic.exportDicomSeg(segmentation, volume, Path(folder) / "TumorSeg.dcm")
                DICOMUtils.importDicom(folder, slicer.dicomDatabase, copyFiles=True)
            self.ui.statusLabel.text = f"DICOM SEG of '{volume.GetName()}' added to the DICOM database"

    def onShow3D(self, checked) -> None:
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentation is None:
            return
        if checked:
            segmentation.CreateClosedSurfaceRepresentation()
            displayNode = segmentation.GetDisplayNode()
            if displayNode:
                displayNode.SetVisibility3D(True)
        else:
            segmentation.RemoveClosedSurfaceRepresentation()

    def cleanup(self) -> None:
        """Module widget destroyed (application exit): stop the run and the worker process."""
        self.timer.stop()
        self._running = False
        self.logic.shutdown()
