"""The panel's decisions, tested without Qt or Slicer (TumorSegmentationLib.panel_state and widget)."""

import contextlib
import importlib
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "TumorSegmentation") not in sys.path:
    sys.path.insert(0, str(ROOT / "TumorSegmentation"))

from TumorSegmentationLib import panel_state as ps  # noqa: E402


@dataclass
class FakeModelInfo:  # the fields of tumorseg_core.modelpkg.package.ModelInfo the panel reads
    key: str
    name: str
    version: str = "1.0.0"
    description: str = ""
    input_modalities: list = field(default_factory=lambda: ["MRI"])


class Node:  # stands for a volume node; identity matters, not content
    def __init__(self, name):
        self.name = name


def test_run_options_are_the_engines():
    from tumorseg_core.options import SegmentOptions, TumorSegError

    assert ps.run_options() == {"quality": "normal", "backend": "auto", "cascade": None}
    assert ps.run_options("fast", "openvino", "off") == {"quality": "fast", "backend": "openvino", "cascade": False}
    # normal = the model's own settings: no overlap or TTA is forced on the engine
    resolved = SegmentOptions.from_mapping(ps.run_options("normal"))
    assert resolved.window_overlap is None and resolved.use_tta is False
    assert SegmentOptions.from_mapping(ps.run_options("tta")).use_tta is True
    with pytest.raises(TumorSegError, match="unknown quality 'best'"):
        ps.run_options("best")
    with pytest.raises(TumorSegError, match="unknown backend"):
        ps.run_options(backend="tensorrt")
    assert set(ps.QUALITY_LABELS) == set(ps.QUALITY_CHOICES)

def test_input_slots_follow_manifest_modalities():
    slots = ps.input_slots(["T1c", "T1", "T2", "FLAIR"])
    assert [s.visible for s in slots] == [True] * 4
    assert [s.label for s in slots] == ["T1c:", "T1:", "T2:", "FLAIR:"]
    assert "channel 4" in slots[3].tooltip and "FLAIR" in slots[3].tooltip
    slots = ps.input_slots(["CT"])
    assert [s.visible for s in slots] == [True, False, False, False]
    assert slots[0].label == "CT:" and slots[1].label == "Input 2:"
    assert [s.index for s in slots] == [0, 1, 2, 3]
    assert not any(s.visible for s in ps.input_slots([]))
    with pytest.raises(ValueError, match="at most 4"):
        ps.input_slots(["a", "b", "c", "d", "e"])


def test_import_source_stands_for_the_model_folder():
    assert ps.import_source("/m/pkg/manifest.json") == "/m/pkg"
    assert ps.import_source("/m/Dataset001/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json").endswith("3d_fullres")
    assert ps.import_source("/m/spleen_ct_segmentation/configs/metadata.json") == "/m/spleen_ct_segmentation"
    assert ps.import_source("/m/model.zip") == "/m/model.zip" and ps.import_source("/m/w.pt") == "/m/w.pt"


def test_modalities_of_a_model_info():
    assert ps.modalities_of(FakeModelInfo("default", "tumorseg-default", input_modalities=["T1", "FLAIR"])) == ["T1", "FLAIR"]
    assert ps.modalities_of(None) == []


def test_model_items_use_key_and_end_with_add_entry():
    items = ps.model_items([FakeModelInfo("default", "tumorseg-default", description="Brain MRI"),
                            FakeModelInfo("liver", "liver", version="2.1", input_modalities=["CT", "CT late"])])
    assert [i.name for i in items] == ["default", "liver", None]
    assert items[0].text == "tumorseg-default 1.0.0 [default]"
    assert items[1].text == "liver 2.1"
    assert "Brain MRI" in items[0].tooltip and "Inputs: CT, CT late" in items[1].tooltip
    assert items[-1].text == ps.ADD_MODEL_ITEM
    assert ps.model_items([])[0].name is None


def test_device_labels_say_what_was_detected():
    assert len(ps.device_labels(None)) == len(ps.DEVICE_CHOICES)
    assert "not checked" in ps.device_labels(None)[2]
    gpu = {"cuda_available": True, "auto_device": "cuda", "torch_threads": 8,
           "gpus": [{"index": 0, "name": "NVIDIA RTX 4090", "memory_gib": 24.0}, {"index": 1, "name": "x"}]}
    auto, cpu, cuda, mps = ps.device_labels(gpu)
    assert auto == "auto (uses cuda)" and cpu == "cpu (8 threads)"
    assert cuda == "cuda (NVIDIA RTX 4090, 24.0 GiB, +1 more)"
    no_gpu = {"cuda_available": False, "gpus": [], "cpu_count": 2}
    auto, cpu, cuda, mps = ps.device_labels(no_gpu)
    assert auto == "auto (uses cpu)" and cpu == "cpu (2 threads)" and cuda == "cuda (no NVIDIA GPU detected)"
    # Each label starts with its choice, so the combo and the parameter stay readable together.
    for choice, label in zip(ps.DEVICE_CHOICES, ps.device_labels(gpu)):
        assert label.startswith(choice)


def test_apply_button_state():
    running = ps.apply_button_state(True, ["Select an input volume for T1"])
    assert (running.text, running.enabled) == ("Cancel", True)
    blocked = ps.apply_button_state(False, ["Select an input volume for T1", "other"])
    assert (blocked.text, blocked.enabled, blocked.tooltip) == ("Apply", False, "Select an input volume for T1")
    ready = ps.apply_button_state(False, [])
    assert (ready.text, ready.enabled) == ("Apply", True)


def test_validation_messages():
    t1, flair = Node("t1"), Node("flair")
    assert ps.validation_messages([t1, flair, None, None], ["T1", "FLAIR"]) == []
    assert ps.validation_messages([t1, None, None, None], ["T1", "FLAIR"]) == ["Select an input volume for FLAIR"]
    assert ps.validation_messages([], ["CT"]) == ["Select an input volume for CT"]
    # hidden selectors beyond the model's inputs are ignored, even if they hold the same node
    assert ps.validation_messages([t1, None, t1, t1], ["T1"]) == []
    same = ps.validation_messages([t1, t1], ["T1", "FLAIR"])
    assert same == ["The same volume is selected for two inputs; select a different volume for each"]
    assert ps.validation_messages([t1], ["T1"], model="") == ["Select a model"]
    assert "not installed" in ps.validation_messages([t1], [], model="default")[0]
    assert "Unknown device" in ps.validation_messages([t1], ["T1"], device="tpu")[0]
    no_gpu = {"cuda_available": False}
    assert "no NVIDIA GPU" in ps.validation_messages([t1], ["T1"], device="cuda", report=no_gpu)[0]
    assert ps.validation_messages([t1], ["T1"], device="cuda", report=None) == []  # not checked yet
    assert ps.validation_messages([t1], ["T1"], device="cuda", report={"cuda_available": True}) == []


@pytest.mark.parametrize("seconds, text", [
    (0, "0:00"), (5.9, "0:05"), (65, "1:05"), (3599, "59:59"), (3600, "1:00:00"),
    (3725, "1:02:05"), (-3, "0:00"), (float("nan"), "0:00"), (float("inf"), "0:00"),
])
def test_format_elapsed(seconds, text):
    assert ps.format_elapsed(seconds) == text


def test_status_text():
    assert ps.status_text(ps.IDLE) == "Ready"
    assert ps.status_text(ps.RUNNING, 75, "window 12/30", 0.4) == "window 12/30 — 40% — elapsed 1:15"
    assert ps.status_text(ps.RUNNING, 3, "", None) == "Segmenting — elapsed 0:03"
    assert ps.status_text(ps.RUNNING, 3, "x", 1.7) == "x — 100% — elapsed 0:03"
    assert ps.status_text(ps.DONE, 42) == "Done in 0:42"
    assert ps.status_text(ps.FAILED, 12, "CUDA out of memory") == "Failed after 0:12: CUDA out of memory"
    assert "Python console" in ps.status_text(ps.FAILED, 1)
    assert ps.status_text(ps.CANCELLED, 3).startswith("Cancelled after 0:03")
    with pytest.raises(ValueError):
        ps.status_text("paused")


def test_progress_value_and_output_name():
    assert [ps.progress_value(f) for f in (None, float("nan"), -1, 0.004, 0.5, 1, 2)] == [0, 0, 0, 0, 50, 100, 100]
    assert ps.output_segmentation_name("Brain T1") == "Brain T1 tumor segmentation"
    assert ps.output_segmentation_name(None) == "Tumor segmentation"


# -- The Qt adapter (widget.py) driven with stand-in widgets -----------------------------
# PythonQt is not installable here, so qt/slicer are replaced by small fakes that expose
# the same attribute-style properties; this checks that widget.py applies the decisions
# above (Apply <-> Cancel, the timer, the status line) and calls the Logic as documented.



class FakeWidget:
    def __init__(self, **properties):
        self.text, self.toolTip, self.enabled, self.visible, self.checked, self.value = "", "", True, True, False, 0
        self.__dict__.update(properties)
        self.slots = {}

    def connect(self, signal, slot):
        self.slots[signal] = slot

    def setRange(self, low, high):
        self.range = (low, high)


class FakeCombo(FakeWidget):
    def __init__(self, items=()):
        super().__init__()
        self.items, self.currentIndex = list(items), 0 if items else -1

    @property
    def count(self):
        return len(self.items)

    def clear(self):
        self.items, self.currentIndex = [], -1

    def addItem(self, text):
        self.items.append(text)

    def setItemText(self, index, text):
        self.items[index] = text

    def setItemData(self, index, value, role):
        pass

    def blockSignals(self, block):
        return False


class FakeSelector(FakeWidget):
    node = None

    def currentNode(self):
        return self.node


class FakeNode:
    def __init__(self, name):
        self.name = name

    def GetName(self):
        return self.name

    def CreateDefaultDisplayNodes(self):
        pass


class FakeLogic:
    def __init__(self):
        self.calls, self.running, self.status, self.lastError, self.lastResult = [], False, "idle", None, None

    def measure(self, segmentation, volume):
        self.calls.append(("measure", segmentation, volume))
        return "Tumor measurements"

    def process(self, inputs, output, **kwargs):
        self.calls.append(("process", inputs, output, kwargs))
        self.running, self.status = True, "running"

    def poll(self):
        return self.running

    def cancel(self):
        self.calls.append(("cancel",))
        self.running, self.status = False, "cancelled"

    def shutdown(self):
        self.calls.append(("shutdown",))

    def importModel(self, source, overwrite=False, progressCallback=None):  # runs in the worker for real
        from tumorseg_core.errors import ModelAlreadyInstalledError

        self.calls.append(("import", source, overwrite))
        if not overwrite:
            raise ModelAlreadyInstalledError("ct", "/models")
        progressCallback(1.0, "installed ct")
        return "ct"

    def deviceReport(self):  # the real Logic asks its worker process (no torch in the UI process)
        return {"cuda_available": False, "gpus": [], "torch_threads": 2, "auto_device": "cpu"}


@pytest.fixture
def panel(monkeypatch):
    timers = []

    class QTimer(FakeWidget):
        def __init__(self):
            super().__init__(active=False)
            timers.append(self)

        def setInterval(self, ms):
            self.interval = ms

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    dialog = types.SimpleNamespace(answer="")
    qt = types.SimpleNamespace(QTimer=QTimer, Qt=types.SimpleNamespace(ToolTipRole=3),
                               QFileDialog=types.SimpleNamespace(getOpenFileName=lambda *a: dialog.answer))
    created = []

    def add_node(cls, name):
        created.append((cls, name))
        return FakeNode(name)

    errors, confirmations = [], []

    @contextlib.contextmanager
    def try_with_error_display(message, waitCursor=False):
        try:
            yield
        except Exception as exc:
            errors.append(f"{message} {exc}")
            raise

    def confirm(text):
        confirmations.append(text)
        return True

    slicer = types.SimpleNamespace(
        mrmlScene=types.SimpleNamespace(AddNewNodeByClass=add_node),
        util=types.SimpleNamespace(errorDisplay=lambda text, **kw: errors.append(text), mainWindow=lambda: None,
                                   tryWithErrorDisplay=try_with_error_display, confirmYesNoDisplay=confirm))
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.delitem(sys.modules, "TumorSegmentationLib.widget", raising=False)
    widget = importlib.import_module("TumorSegmentationLib.widget")
    monkeypatch.setattr(widget.install, "ensure_dependencies", lambda: None)
    import tumorseg_core.modelpkg.package

    monkeypatch.setattr(tumorseg_core.modelpkg.package, "installed_models", lambda verify: [
        FakeModelInfo("default", "tumorseg-default", input_modalities=["T1c", "FLAIR"]),
        FakeModelInfo("ct", "ct", input_modalities=["CT"])])
    names = ["applyButton", "addModelButton", "show3DButton", "progressBar", "statusLabel", "measureButton",
             "exportDicomSegButton"]
    ui = types.SimpleNamespace(**{n: FakeWidget() for n in names})
    ui.modelComboBox, ui.deviceComboBox, ui.qualityComboBox = FakeCombo(), FakeCombo(ps.DEVICE_CHOICES), FakeCombo(ps.QUALITY_CHOICES)
    ui.measurementsTableView = FakeWidget(tables=[])
    ui.measurementsTableView.setMRMLTableNode = ui.measurementsTableView.tables.append
    for i in range(4):
        setattr(ui, f"inputVolume{i}Label", FakeWidget())
        setattr(ui, f"inputVolume{i}Selector", FakeSelector())
    logic = FakeLogic()
    p = widget.TumorSegmentationPanel(ui, logic)
    pn = types.SimpleNamespace(model="default", device="auto", quality="fast", backend="auto", cascade="off",
                               outputSegmentation=None, uncertainty=False)
    p.setParameterNode(pn)
    yield types.SimpleNamespace(panel=p, ui=ui, logic=logic, pn=pn, timer=timers[0], created=created, errors=errors,
                                dialog=dialog, confirmations=confirmations)
    sys.modules.pop("TumorSegmentationLib.widget", None)  # it was bound to the fake qt/slicer


def test_adapter_shows_model_inputs_and_blocks_apply(panel):
    ui = panel.ui
    assert ui.modelComboBox.items == ["tumorseg-default 1.0.0 [default]", "ct 1.0.0", ps.ADD_MODEL_ITEM]
    assert [ui.inputVolume0Label.text, ui.inputVolume1Label.text] == ["T1c:", "FLAIR:"]
    assert [getattr(ui, f"inputVolume{i}Selector").visible for i in range(4)] == [True, True, False, False]
    assert ui.qualityComboBox.items[2] == ps.QUALITY_LABELS["tta"]
    assert (ui.applyButton.text, ui.applyButton.enabled) == ("Apply", False)
    assert ui.applyButton.toolTip == "Select an input volume for T1c"
    ui.modelComboBox.currentIndex = 1
    panel.panel.onModelIndexChanged(1)
    assert panel.pn.model == "ct" and ui.inputVolume0Label.text == "CT:" and not ui.inputVolume1Selector.visible


def test_adapter_run_progress_done_cancel_and_error(panel):
    ui, logic, p = panel.ui, panel.logic, panel.panel
    ui.inputVolume0Selector.node, ui.inputVolume1Selector.node = FakeNode("t1c"), FakeNode("flair")
    p.updateState()
    assert ui.applyButton.enabled
    p.onApplyOrCancel()
    _, inputs, output, kwargs = logic.calls[0]
    assert [n.name for n in inputs] == ["t1c", "flair"] and output.name == "t1c tumor segmentation"
    assert panel.pn.outputSegmentation is output and panel.created == [("vtkMRMLSegmentationNode", output.name)]
    assert kwargs["options"] == {"quality": "fast", "backend": "auto", "cascade": False}
    assert kwargs["waitForCompletion"] is False
    assert ui.deviceComboBox.items == ps.device_labels({"cuda_available": False, "torch_threads": 2, "auto_device": "cpu"})
    assert (ui.applyButton.text, ui.applyButton.enabled, panel.timer.active, ui.progressBar.visible) == ("Cancel", True, True, True)
    kwargs["progressCallback"](0.5, "window 3/6")
    assert ui.progressBar.value == 50 and ui.statusLabel.text.startswith("window 3/6 — 50% — elapsed 0:0")
    p.onTimer()
    assert ui.applyButton.text == "Cancel"
    logic.running, logic.status = False, "done"
    p.onTimer()
    assert ui.statusLabel.text.startswith("Done in 0:0") and ui.applyButton.text == "Apply"
    assert not panel.timer.active and not ui.progressBar.visible
    # A finished run is measured at once and the table shown (issue #22).
    assert logic.calls[-1] == ("measure", output, inputs[0]) and ui.measurementsTableView.tables == ["Tumor measurements"]
    assert kwargs["uncertainty"] is False
    logic.calls.pop()

    p.onApplyOrCancel()  # run again, then Cancel
    assert ui.applyButton.text == "Cancel" and len(logic.calls) == 2  # output reused, not recreated
    p.onApplyOrCancel()
    assert logic.calls[-1] == ("cancel",) and ui.statusLabel.text.startswith("Cancelled after")
    assert ui.applyButton.text == "Apply" and not panel.timer.active

    p.onApplyOrCancel()  # run again, the worker reports an error
    logic.running, logic.status, logic.lastError = False, "error", "CUDA out of memory"
    p.onTimer()
    assert ui.statusLabel.text.startswith("Failed after 0:0") and ui.statusLabel.text.endswith("CUDA out of memory")
    p.cleanup()
    assert logic.calls[-1] == ("shutdown",)


def test_adapter_refuses_cuda_without_gpu(panel):
    ui, p = panel.ui, panel.panel
    ui.inputVolume0Selector.node, ui.inputVolume1Selector.node = FakeNode("a"), FakeNode("b")
    panel.pn.device = "cuda"
    p.onApplyOrCancel()  # the dependency check detects devices: no GPU here
    assert panel.logic.calls == []
    assert "no NVIDIA GPU" in ui.statusLabel.text and not ui.applyButton.enabled


def test_adapter_imports_through_the_logic_and_confirms_a_replacement(panel):
    panel.dialog.answer = "/downloads/ct-model/manifest.json"
    panel.panel.onAddModel()
    assert panel.logic.calls[-2:] == [("import", "/downloads/ct-model", False), ("import", "/downloads/ct-model", True)]
    assert len(panel.confirmations) == 1 and "already installed" in panel.confirmations[0]
    assert panel.ui.statusLabel.text == "Installed model 'ct' (all files verified)" and panel.pn.model == "ct"
