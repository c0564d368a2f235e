"""The "Tumor" Segment Editor effect: thin Qt glue over :mod:`TumorSegmentationLib.effect_logic`.

Every decision (what a click does, how the result is masked and written, Auto runs)
lives in the Qt-free ``TumorEffectLogic``; this file builds the options widgets, turns
slice-view clicks into RAS points and shows the logic's messages. Edits go through the
editor widget's own logic (``modifySelectedSegmentByLabelmap``/``saveStateForUndo``),
so masking and the editor's Undo/Redo work as for every other effect.

Register it once at startup (the module shell does this)::

    from TumorSegmentationLib.effect import registerEffect
    registerEffect()
"""

import logging
import os
import sys

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from tumorseg_core.errors import TumorSegError
from TumorSegmentationLib import effect_interactive as ei
from TumorSegmentationLib import effect_logic as el
from TumorSegmentationLib import panel_state as ps

logger = logging.getLogger(__name__)

ICON_PATH = os.path.join(os.path.dirname(__file__), "..", "Resources", "Icons", "TumorEffect.png")
ROI_REFERENCE_ROLE = "Tumor.ROI"
POLL_INTERVAL_MS = 200
LIVE_DEBOUNCE_MS = 60  # Live: wait this long after the last mouse move / scroll before asking for a slice
LIVE_POLL_MS = 25


def scriptedEffectClassName(path: str = __file__) -> str:
    """Class name ``qSlicerSegmentEditorScriptedEffect.setPythonSource`` looks up for ``path``.

    Slicer uses the file's base name (+ "Effect") and the parent folder's name as the
    module: for this file, ``TumorSegmentationLib.effectEffect``.
    """
    name = os.path.splitext(os.path.basename(path))[0]
    return name if name.endswith("Effect") else name + "Effect"


def registerEffect() -> None:
    """Register the Tumor effect with the Segment Editor (call once, e.g. on ``startupCompleted``)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    # setPythonSource() first looks for the class on the already imported package
    # (sys.modules["TumorSegmentationLib"]); without this alias it would re-load this file
    # *as* "TumorSegmentationLib" and replace the real package in sys.modules.
    setattr(sys.modules["TumorSegmentationLib"], scriptedEffectClassName(), TumorSegmentEditorEffect)
    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(__file__.replace("\\", "/"))
    instance.self().register()


class ScriptedEffectBackend:
    """``effect_logic``'s editor backend routed through the editor widget (its logic, its undo stack)."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect

    def referenceGeometry(self):
        image = self.scriptedEffect.referenceGeometryImage()
        if image is None:
            raise TumorSegError("the segmentation has no reference geometry; select a source volume")
        return image

    def saveStateForUndo(self):
        self.scriptedEffect.saveStateForUndo()

    def modifySelectedSegment(self, labelmap, mode):
        qtMode = getattr(slicer.qSlicerSegmentEditorAbstractEffect, "ModificationMode" + mode)  # el.SET / el.ADD
        self.scriptedEffect.modifySelectedSegmentByLabelmap(labelmap, qtMode)

    def undo(self):
        for editor in slicer.util.findChildren(className="qMRMLSegmentEditorWidget"):
            if editor.mrmlSegmentEditorNode() is self.scriptedEffect.parameterSetNode():
                editor.undo()
                return


class TumorSegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Segment a tumor by a click (Seed), a model (Auto) or keep clicked lesions (Refine)."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Tumor"  # not translated: modules find effects by name
        scriptedEffect.title = "Tumor"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = None
        self._segmentationLogic = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        return qt.QIcon(ICON_PATH) if os.path.exists(ICON_PATH) else qt.QIcon()

    def helpText(self):
        return """<html>Segment a tumor into the selected segment.<p><ul style="margin: 0">
<li><b>Seed:</b> click inside a lesion to segment it (no model needed).
<b>Shift+click</b> adds a seed, <b>Ctrl+click</b> marks background; a plain click starts a new lesion.</li>
<li><b>Auto:</b> run the selected model on the source volume and write one of its labels
into the selected segment (other segments are not changed).</li>
<li><b>Refine:</b> click the lesion(s) to keep in the segment; Ctrl+click removes one.</li>
<li><b>Click / Box / Scribble:</b> each click, box or painted stroke refines the last result;
<b>Shift</b> or <b>Ctrl</b> marks background; a box comes from two opposite corners or an ROI;
<b>Undo step</b> steps back one interaction.</li>
<li><b>Live:</b> a 2.5D model previews the slice under the mouse as you scroll; a click adds it
to the selected segment (Undo works).</li>
<li><b>ROI:</b> optional box; only the image inside it is used and changed.</li>
</ul><p>Masking settings (editable area, intensity range, overwrite) apply as for other effects.</html>"""

    # ------------------------------------------------------------------ widgets

    def setupOptionsFrame(self):
        self.modeComboBox = qt.QComboBox()
        self.modeComboBox.addItems(list(el.MODES))
        self.modeComboBox.addItems(list(ei.MODES))  # Click / Box / Scribble (effect_interactive)
        self.modeComboBox.toolTip = "Seed: click a lesion. Auto: run a model. Refine: keep clicked lesions."
        self.scriptedEffect.addLabeledOptionsWidget("Mode:", self.modeComboBox)

        self.modelComboBox = qt.QComboBox()
        self.modelComboBox.toolTip = "Model used by Auto mode (installed models)"
        self.scriptedEffect.addLabeledOptionsWidget("Model:", self.modelComboBox)
        self.outputLabelComboBox = qt.QComboBox()
        self.outputLabelComboBox.toolTip = "Which output of the model is written into the selected segment"
        self.scriptedEffect.addLabeledOptionsWidget("Output:", self.outputLabelComboBox)
        self.deviceComboBox = qt.QComboBox()
        self.deviceComboBox.addItems(list(ps.DEVICE_CHOICES))
        self.scriptedEffect.addLabeledOptionsWidget("Device:", self.deviceComboBox)

        self.roiSelector = slicer.qMRMLNodeComboBox()
        self.roiSelector.nodeTypes = ["vtkMRMLMarkupsROINode"]
        self.roiSelector.noneEnabled = True
        self.roiSelector.addEnabled = False
        self.roiSelector.setMRMLScene(slicer.mrmlScene)
        self.roiSelector.toolTip = "Optional: only the image inside this box is used and changed"
        self.scriptedEffect.addLabeledOptionsWidget("ROI:", self.roiSelector)

        self.boxFrame = qt.QWidget()
        boxRow = qt.QHBoxLayout(self.boxFrame)
        boxRow.setContentsMargins(0, 0, 0, 0)
        boxRow.addWidget(qt.QLabel("Box ROI:"))
        self.boxRoiSelector = slicer.qMRMLNodeComboBox()
        self.boxRoiSelector.nodeTypes = ["vtkMRMLMarkupsROINode"]
        self.boxRoiSelector.noneEnabled = True
        self.boxRoiSelector.addEnabled = False
        self.boxRoiSelector.setMRMLScene(slicer.mrmlScene)
        self.boxRoiSelector.toolTip = "Box mode: the ROI whose box holds the lesion"
        boxRow.addWidget(self.boxRoiSelector)
        self.boxFromRoiButton = qt.QPushButton("Box from ROI")
        self.boxFromRoiButton.toolTip = "Refine the result with the selected ROI's box (or click two opposite corners)"
        boxRow.addWidget(self.boxFromRoiButton)
        self.scriptedEffect.addOptionsWidget(self.boxFrame)
        self.undoStepButton = qt.QPushButton("Undo step")
        self.undoStepButton.toolTip = "Click / Box / Scribble: step back one interaction and rewrite the segment"

        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.toolTip = "Run the model (Auto mode); turns into Cancel while it runs"
        self.clearPointsButton = qt.QPushButton("Clear points")
        self.clearPointsButton.toolTip = "Forget the clicks; the next click starts a new lesion"
        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.applyButton)
        buttons.addWidget(self.clearPointsButton)
        buttons.addWidget(self.undoStepButton)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.progressBar = qt.QProgressBar()
        self.progressBar.setRange(0, 100)
        self.progressBar.visible = False
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self.setupLiveOptions()  # Live mode (effect_live)

        self.refreshModels()
        self.modeComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.outputLabelComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.deviceComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.roiSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateMRMLFromGUI)
        self.applyButton.connect("clicked()", self.onApplyOrCancel)
        self.clearPointsButton.connect("clicked()", self.onClearPoints)
        self.boxFromRoiButton.connect("clicked()", self.onBoxFromRoi)
        self.undoStepButton.connect("clicked()", self.onUndoStep)

    def refreshModels(self):
        from tumorseg_core.modelpkg.package import installed_models

        try:
            items = [item for item in ps.model_items(installed_models(verify=False)) if item.name is not None]
        except Exception as exc:  # noqa: BLE001 - a broken models folder must not break the editor
            logger.warning("could not list models: %s", exc)
            items = []
        wasBlocked = self.modelComboBox.blockSignals(True)
        self.modelComboBox.clear()
        for item in items:
            self.modelComboBox.addItem(item.text, item.name)
            self.modelComboBox.setItemData(self.modelComboBox.count - 1, item.tooltip, qt.Qt.ToolTipRole)
        self.modelComboBox.blockSignals(wasBlocked)
        self.refreshOutputLabels()

    def refreshOutputLabels(self):
        wasBlocked = self.outputLabelComboBox.blockSignals(True)
        self.outputLabelComboBox.clear()
        model = self.modelComboBox.currentData
        if model:
            try:
                for info in self.segmentationLogic().modelManifest(model).segments:
                    self.outputLabelComboBox.addItem(info.name, int(info.value))
            except Exception as exc:  # noqa: BLE001 - shown to the user; Auto stays unavailable
                self.statusLabel.text = f"Model '{model}' cannot be opened: {exc}"
        self.outputLabelComboBox.blockSignals(wasBlocked)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Mode", el.MODE_SEED)
        self.scriptedEffect.setParameterDefault("Model", "default")
        self.scriptedEffect.setParameterDefault("Device", "auto")
        self.scriptedEffect.setParameterDefault("OutputLabel", "")

    def updateGUIFromMRML(self):
        params = {name: self.scriptedEffect.parameter(name) for name in ("Mode", "Model", "Device", "OutputLabel")}
        for combo, value, byData in ((self.modeComboBox, params["Mode"], False), (self.deviceComboBox, params["Device"], False),
                                     (self.modelComboBox, params["Model"], True)):
            wasBlocked = combo.blockSignals(True)
            index = combo.findData(value) if byData else combo.findText(value)
            if index >= 0:
                combo.currentIndex = index
            combo.blockSignals(wasBlocked)
        self.refreshOutputLabels()
        wasBlocked = self.outputLabelComboBox.blockSignals(True)
        index = self.outputLabelComboBox.findText(params["OutputLabel"])
        self.outputLabelComboBox.currentIndex = max(index, 0)
        self.outputLabelComboBox.blockSignals(wasBlocked)
        wasBlocked = self.roiSelector.blockSignals(True)
        self.roiSelector.setCurrentNode(self.scriptedEffect.parameterSetNode().GetNodeReference(ROI_REFERENCE_ROLE))
        self.roiSelector.blockSignals(wasBlocked)
        self.updateButtons()

    def updateMRMLFromGUI(self, *args):
        self.scriptedEffect.setParameter("Mode", self.modeComboBox.currentText)
        self.scriptedEffect.setParameter("Model", self.modelComboBox.currentData or "")
        self.scriptedEffect.setParameter("Device", self.deviceComboBox.currentText)
        self.scriptedEffect.setParameter("OutputLabel", self.outputLabelComboBox.currentText)
        self.scriptedEffect.parameterSetNode().SetNodeReferenceID(ROI_REFERENCE_ROLE, self.roiSelector.currentNodeID)
        self.updateButtons()

    def onModelChanged(self, *args):
        self.refreshOutputLabels()
        self.updateMRMLFromGUI()

    def updateButtons(self):
        auto = self.modeComboBox.currentText == el.MODE_AUTO
        running = self.logic is not None and self.logic.isRunning
        self.applyButton.visible = auto
        self.applyButton.text = "Cancel" if running else "Apply"
        self.applyButton.enabled = running or bool(self.modelComboBox.currentData)
        for widget in (self.modelComboBox, self.outputLabelComboBox, self.deviceComboBox):
            widget.enabled = auto and not running
        self.clearPointsButton.visible = not auto
        self.undoStepButton.visible = self.modeComboBox.currentText in ei.MODES
        self.boxFrame.visible = self.modeComboBox.currentText == ei.MODE_BOX
        self.progressBar.visible = running
        self.updateLiveWidgets()

    # ------------------------------------------------------------------ logic

    def segmentationLogic(self):
        if self._segmentationLogic is None:
            from TumorSegmentationLib.logic import TumorSegmentationLogic

            self._segmentationLogic = TumorSegmentationLogic()
        return self._segmentationLogic

    def effectLogic(self):
        """The Qt-free logic bound to the current parameter node and this editor's undo stack."""
        editorNode = self.scriptedEffect.parameterSetNode()
        if self.logic is None or self.logic.editorNode is not editorNode:
            self.logic = el.TumorEffectLogic(slicer.mrmlScene, editorNode, ScriptedEffectBackend(self.scriptedEffect),
                                             self.segmentationLogic())
        self.logic.roiNode = editorNode.GetNodeReference(ROI_REFERENCE_ROLE)
        return self.logic

    def showResult(self, result):
        self.statusLabel.text = result.message
        self.statusLabel.styleSheet = "color: #c07000" if result.bounded else ""

    def showError(self, exc):
        self.statusLabel.text = str(exc)
        self.statusLabel.styleSheet = "color: red"

    def deactivate(self):
        self.stopLive()
        if self.logic is not None:
            self.logic.resetPoints()
            self.logic.interactive.reset()

    def onClearPoints(self):
        self.effectLogic().resetPoints()
        self.effectLogic().interactive.reset()
        self.statusLabel.text = "Points cleared"

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if self.processLiveEvent(callerInteractor, eventId, viewWidget):
            return True
        if self.scriptedEffect.parameter("Mode") in ei.MODES:
            return self.processInteractiveEvent(callerInteractor, eventId, viewWidget)
        if viewWidget.className() != "qMRMLSliceWidget" or eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        mode = self.scriptedEffect.parameter("Mode")
        if mode not in (el.MODE_SEED, el.MODE_REFINE) or callerInteractor.GetAltKey():
            return False
        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return True
        ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        add, background = bool(callerInteractor.GetShiftKey()), bool(callerInteractor.GetControlKey())
        logic = self.effectLogic()
        try:
            with slicer.util.WaitCursor():
                click = logic.seed_click if mode == el.MODE_SEED else logic.refine_click
                self.showResult(click(ras, add=add, background=background))
        except TumorSegError as exc:
            self.showError(exc)
        return True

    def processInteractiveEvent(self, callerInteractor, eventId, viewWidget):
        """Click / Box / Scribble: forward press, move and release (as RAS) to the logic, which decides."""
        if viewWidget.className() != "qMRMLSliceWidget" or callerInteractor.GetAltKey():
            return False
        logic = self.effectLogic().interactive
        ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        try:
            if eventId == vtk.vtkCommand.LeftButtonPressEvent:
                if not self.scriptedEffect.confirmCurrentSegmentVisible():
                    return True
                background = bool(callerInteractor.GetShiftKey() or callerInteractor.GetControlKey())
                with slicer.util.WaitCursor():
                    result = logic.press(self.scriptedEffect.parameter("Mode"), ras, background=background)
            elif eventId == vtk.vtkCommand.MouseMoveEvent:
                return logic.move(ras)
            elif eventId == vtk.vtkCommand.LeftButtonReleaseEvent and logic.strokeRas:
                with slicer.util.WaitCursor():
                    result = logic.release(ras)
            else:
                return False
        except TumorSegError as exc:
            self.showError(exc)
            return True
        if result is not None:
            self.showResult(result)
        return True

    def onBoxFromRoi(self):
        try:
            with slicer.util.WaitCursor():
                self.showResult(self.effectLogic().interactive.box_from_roi(self.boxRoiSelector.currentNode()))
        except TumorSegError as exc:
            self.showError(exc)

    def onUndoStep(self):
        try:
            self.showResult(self.effectLogic().interactive.undo())
        except TumorSegError as exc:
            self.showError(exc)

    def onApplyOrCancel(self):
        logic = self.effectLogic()
        if logic.isRunning:
            logic.cancel()
            self.updateButtons()
            return
        self.stopLive()  # Auto needs the shared worker
        label = self.outputLabelComboBox.currentData
        self.progressBar.value = 0
        try:
            logic.run_auto(self.modelComboBox.currentData, self.deviceComboBox.currentText, output_label=label,
                           waitForCompletion=False, progressCallback=self.onProgress,
                           completionCallback=self.onAutoFinished)
        except TumorSegError as exc:
            self.showError(exc)
            return
        self.statusLabel.text = "Segmenting…"
        self.timer.start()
        self.updateButtons()

    def onProgress(self, fraction, message):
        self.progressBar.value = ps.progress_value(fraction)
        self.statusLabel.text = message or "Segmenting…"

    def onTimer(self):
        try:
            running = self.logic is not None and self.logic.poll()
        except TumorSegError as exc:
            self.showError(exc)
            running = False
        if not running:
            self.timer.stop()
            self.updateButtons()

    def onAutoFinished(self, result):
        self.showResult(result)
        self.updateButtons()

    def cleanup(self):
        self.stopLive()
        self.timer.stop()
        if self.logic is not None and self.logic.isRunning:
            self.logic.cancel()

    # ------------------------------------------------------------------ Live mode (effect_live.LivePreviewLogic)

    def setupLiveOptions(self):
        self.live = None
        self.livePending = None  # (slice node, RAS point or None): the latest slice asked for, sent after the delay
        self.liveCheckBox = qt.QCheckBox("Live")
        self.liveCheckBox.toolTip = ("Preview a 2.5D model's result on the slice under the mouse while scrolling "
                                     "(the selected model if it is 2.5D, else the shipped real-time model); "
                                     "click to add it to the selected segment")
        self.scriptedEffect.addOptionsWidget(self.liveCheckBox)
        self.liveDebounceTimer = qt.QTimer()
        self.liveDebounceTimer.singleShot = True
        self.liveDebounceTimer.setInterval(LIVE_DEBOUNCE_MS)
        self.liveDebounceTimer.connect("timeout()", self.onLiveDebounce)
        self.livePollTimer = qt.QTimer()
        self.livePollTimer.setInterval(LIVE_POLL_MS)
        self.livePollTimer.connect("timeout()", self.onLivePoll)
        self.liveCheckBox.connect("toggled(bool)", self.onLiveToggled)

    def updateLiveWidgets(self):
        """Live uses the Model, Output and Device choices, so they stay enabled while it is on."""
        if getattr(self, "liveCheckBox", None) is not None and self.liveCheckBox.checked:
            for widget in (self.modelComboBox, self.outputLabelComboBox, self.deviceComboBox):
                widget.enabled = True

    def liveActive(self):
        return getattr(self, "live", None) is not None and self.live.isActive

    def onLiveToggled(self, checked):
        if not checked:
            self.stopLive()
            return
        from TumorSegmentationLib.effect_live import LivePreviewLogic, live_model_for

        logic = self.effectLogic()
        if self.live is None or self.live.effectLogic is not logic:
            self.live = LivePreviewLogic(logic)
        try:
            self.live.start(live_model_for(self.modelComboBox.currentData, logic.segmentationLogic.modelManifest),
                            self.deviceComboBox.currentText,
                            output_label=self.outputLabelComboBox.currentData)
        except TumorSegError as exc:
            self.showError(exc)
            self.setLiveChecked(False)
            return
        self.statusLabel.text = self.live.message
        self.statusLabel.styleSheet = ""
        self.updateLiveWidgets()

    def setLiveChecked(self, checked):
        wasBlocked = self.liveCheckBox.blockSignals(True)
        self.liveCheckBox.checked = checked
        self.liveCheckBox.blockSignals(wasBlocked)

    def stopLive(self):
        if getattr(self, "live", None) is None:
            return
        self.liveDebounceTimer.stop()
        self.livePollTimer.stop()
        self.livePending = None
        self.live.stop()
        self.setLiveChecked(False)

    def processLiveEvent(self, callerInteractor, eventId, viewWidget):
        """Live: mouse moves ask (after a short delay) for the slice under the mouse; a click accepts the preview."""
        if not self.liveActive() or viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.MouseMoveEvent:
            ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
            self.livePending = (viewWidget.mrmlSliceNode(), ras)
            self.liveDebounceTimer.start()
            return False  # other handlers (crosshair, data probe) still see the move
        if eventId == vtk.vtkCommand.LeftButtonPressEvent and not callerInteractor.GetAltKey():
            if not self.scriptedEffect.confirmCurrentSegmentVisible():
                return True
            try:
                self.showResult(self.live.accept())
            except TumorSegError as exc:
                self.showError(exc)
            return True
        return False

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        """Live: scrolling (the slice node changed) asks for the new slice."""
        if self.liveActive() and callerViewNode is not None and callerViewNode.IsA("vtkMRMLSliceNode"):
            self.livePending = (callerViewNode, None)
            self.liveDebounceTimer.start()

    def onLiveDebounce(self):
        pending, self.livePending = self.livePending, None
        if pending is None or not self.liveActive():
            return
        try:
            self.live.request(*pending)
        except TumorSegError as exc:
            self.showError(exc)
        if self.live.isBusy:
            self.livePollTimer.start()

    def onLivePoll(self):
        try:
            busy = self.live is not None and self.live.poll()
        except TumorSegError as exc:
            self.showError(exc)
            busy = False
        if self.live is not None and not self.live.isActive:  # a worker error ended the session
            self.setLiveChecked(False)
            self.statusLabel.text = self.live.message
            self.statusLabel.styleSheet = "color: red"
        elif self.live is not None and self.live.preview is not None:
            self.statusLabel.text = self.live.message
            self.statusLabel.styleSheet = ""
        if not busy:
            self.livePollTimer.stop()
