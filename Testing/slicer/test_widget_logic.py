"""The panel's decisions, tested without Qt or Slicer (TumorSegmentationLib.widget_logic)."""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "TumorSegmentation") not in sys.path:
    sys.path.insert(0, str(ROOT / "TumorSegmentation"))

from TumorSegmentationLib import widget_logic as wl  # noqa: E402


@dataclass
class FakeModelInfo:  # the fields of tumorseg_core.package.ModelInfo the panel reads
    key: str
    name: str
    version: str = "1.0.0"
    description: str = ""
    input_modalities: list = field(default_factory=lambda: ["MRI"])


class Node:  # stands for a volume node; identity matters, not content
    def __init__(self, name):
        self.name = name


def test_quality_options():
    assert wl.quality_options("fast") == {"overlap": 0.25, "tta": False}
    assert wl.quality_options("normal") == {"overlap": 0.5}
    assert wl.quality_options("tta") == {"overlap": 0.5, "tta": True}
    wl.quality_options("fast")["overlap"] = 9  # callers get a copy
    assert wl.quality_options("fast")["overlap"] == 0.25
    with pytest.raises(ValueError, match="unknown quality 'best'"):
        wl.quality_options("best")
    assert set(wl.QUALITY_LABELS) == set(wl.QUALITY_CHOICES)


def test_input_slots_follow_manifest_modalities():
    slots = wl.input_slots(["T1c", "T1", "T2", "FLAIR"])
    assert [s.visible for s in slots] == [True] * 4
    assert [s.label for s in slots] == ["T1c:", "T1:", "T2:", "FLAIR:"]
    assert "channel 4" in slots[3].tooltip and "FLAIR" in slots[3].tooltip
    slots = wl.input_slots(["CT"])
    assert [s.visible for s in slots] == [True, False, False, False]
    assert slots[0].label == "CT:" and slots[1].label == "Input 2:"
    assert [s.index for s in slots] == [0, 1, 2, 3]
    assert not any(s.visible for s in wl.input_slots([]))
    with pytest.raises(ValueError, match="at most 4"):
        wl.input_slots(["a", "b", "c", "d", "e"])


def test_modalities_of_accepts_model_info_manifest_and_dict():
    assert wl.modalities_of(FakeModelInfo("default", "tumorseg-default", input_modalities=["T1", "FLAIR"])) == ["T1", "FLAIR"]
    assert wl.modalities_of({"inputs": [{"modality": "CT", "normalization": {}}, {"normalization": {}}]}) == ["CT", "Input 2"]
    assert wl.modalities_of({"input_modalities": ["MRI"]}) == ["MRI"]
    assert wl.modalities_of(None) == []
    assert wl.modalities_of(object()) == ["Image"]


def test_model_items_use_key_and_end_with_add_entry():
    items = wl.model_items([FakeModelInfo("default", "tumorseg-default", description="Brain MRI"),
                            FakeModelInfo("liver", "liver", version="2.1", input_modalities=["CT", "CT late"])])
    assert [i.name for i in items] == ["default", "liver", None]
    assert items[0].text == "tumorseg-default 1.0.0 [default]"
    assert items[1].text == "liver 2.1"
    assert "Brain MRI" in items[0].tooltip and "Inputs: CT, CT late" in items[1].tooltip
    assert items[-1].text == wl.ADD_MODEL_ITEM
    assert wl.model_items([])[0].name is None


def test_device_labels_say_what_was_detected():
    assert len(wl.device_labels(None)) == len(wl.DEVICE_CHOICES)
    assert "not checked" in wl.device_labels(None)[2]
    gpu = {"cuda_available": True, "auto_device": "cuda", "torch_threads": 8,
           "gpus": [{"index": 0, "name": "NVIDIA RTX 4090", "memory_gib": 24.0}, {"index": 1, "name": "x"}]}
    auto, cpu, cuda = wl.device_labels(gpu)
    assert auto == "auto (uses cuda)" and cpu == "cpu (8 threads)"
    assert cuda == "cuda (NVIDIA RTX 4090, 24.0 GiB, +1 more)"
    no_gpu = {"cuda_available": False, "gpus": [], "cpu_count": 2}
    auto, cpu, cuda = wl.device_labels(no_gpu)
    assert auto == "auto (uses cpu)" and cpu == "cpu (2 threads)" and cuda == "cuda (no NVIDIA GPU detected)"
    # Each label starts with its choice, so the combo and the parameter stay readable together.
    for choice, label in zip(wl.DEVICE_CHOICES, wl.device_labels(gpu)):
        assert label.startswith(choice)


def test_apply_button_state():
    running = wl.apply_button_state(True, ["Select an input volume for T1"])
    assert (running.text, running.enabled) == ("Cancel", True)
    blocked = wl.apply_button_state(False, ["Select an input volume for T1", "other"])
    assert (blocked.text, blocked.enabled, blocked.tooltip) == ("Apply", False, "Select an input volume for T1")
    ready = wl.apply_button_state(False, [])
    assert (ready.text, ready.enabled) == ("Apply", True)


def test_validation_messages():
    t1, flair = Node("t1"), Node("flair")
    assert wl.validation_messages([t1, flair, None, None], ["T1", "FLAIR"]) == []
    assert wl.validation_messages([t1, None, None, None], ["T1", "FLAIR"]) == ["Select an input volume for FLAIR"]
    assert wl.validation_messages([], ["CT"]) == ["Select an input volume for CT"]
    # hidden selectors beyond the model's inputs are ignored, even if they hold the same node
    assert wl.validation_messages([t1, None, t1, t1], ["T1"]) == []
    same = wl.validation_messages([t1, t1], ["T1", "FLAIR"])
    assert same == ["The same volume is selected for two inputs; select a different volume for each"]
    assert wl.validation_messages([t1], ["T1"], model="") == ["Select a model"]
    assert "not installed" in wl.validation_messages([t1], [], model="default")[0]
    assert "Unknown device" in wl.validation_messages([t1], ["T1"], device="tpu")[0]
    no_gpu = {"cuda_available": False}
    assert "no NVIDIA GPU" in wl.validation_messages([t1], ["T1"], device="cuda", report=no_gpu)[0]
    assert wl.validation_messages([t1], ["T1"], device="cuda", report=None) == []  # not checked yet
    assert wl.validation_messages([t1], ["T1"], device="cuda", report={"cuda_available": True}) == []


@pytest.mark.parametrize("seconds, text", [
    (0, "0:00"), (5.9, "0:05"), (65, "1:05"), (3599, "59:59"), (3600, "1:00:00"),
    (3725, "1:02:05"), (-3, "0:00"), (float("nan"), "0:00"), (float("inf"), "0:00"),
])
def test_format_elapsed(seconds, text):
    assert wl.format_elapsed(seconds) == text


def test_status_text():
    assert wl.status_text(wl.IDLE) == "Ready"
    assert wl.status_text(wl.RUNNING, 75, "window 12/30", 0.4) == "window 12/30 — 40% — elapsed 1:15"
    assert wl.status_text(wl.RUNNING, 3, "", None) == "Segmenting — elapsed 0:03"
    assert wl.status_text(wl.RUNNING, 3, "x", 1.7) == "x — 100% — elapsed 0:03"
    assert wl.status_text(wl.DONE, 42) == "Done in 0:42"
    assert wl.status_text(wl.FAILED, 12, "CUDA out of memory") == "Failed after 0:12: CUDA out of memory"
    assert "Python console" in wl.status_text(wl.FAILED, 1)
    assert wl.status_text(wl.CANCELLED, 3).startswith("Cancelled after 0:03")
    with pytest.raises(ValueError):
        wl.status_text("paused")


def test_progress_value_and_output_name():
    assert [wl.progress_value(f) for f in (None, float("nan"), -1, 0.004, 0.5, 1, 2)] == [0, 0, 0, 0, 50, 100, 100]
    assert wl.output_segmentation_name("Brain T1") == "Brain T1 tumor segmentation"
    assert wl.output_segmentation_name(None) == "Tumor segmentation"
