"""Qt-free state of the Tumor Segmentation module panel: what every widget shows.

The Qt adapter (:mod:`TumorSegmentationLib.widget`) only copies what these functions
return onto widgets, so everything a user can see change (which input selectors are
shown and how they are labelled, what Apply says, the status line, the validation
messages) is decided here and unit-tested without Qt or Slicer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Mapping, Optional, Sequence

from tumorseg_core.options import BACKENDS, DEVICES, QUALITIES, SegmentOptions, cascade_from_choice
from tumorseg_core.options import QUALITY_LABELS as QUALITY_LABELS  # the combo's texts, for the widget

MAX_INPUTS = 4
DEFAULT_MODEL = "default"
ADD_MODEL_ITEM = "Import model…"

# The choices of the device, quality, backend and cascade combo boxes are the engine's own
# (tumorseg_core.options): the panel offers exactly what the CLI, the API and the worker take.
DEVICE_CHOICES = DEVICES
QUALITY_CHOICES = QUALITIES
BACKEND_CHOICES = BACKENDS


def run_options(quality: str = "normal", backend: str = "auto", cascade: str = "auto") -> dict:
    """The ``options`` the panel passes to ``Logic.process`` (validated by SegmentOptions).

    ``quality`` ``normal`` means the model's own settings: the same windows, and so the same
    label map, as ``tumorseg segment`` with that model.
    """
    options = {"quality": quality, "backend": backend, "cascade": cascade_from_choice(cascade)}
    SegmentOptions.from_mapping(options)  # one validation, the engine's
    return options


@dataclass(frozen=True)
class InputSlot:
    """What one of the four input volume selectors shows."""

    index: int
    visible: bool
    label: str
    tooltip: str


def modalities_of(model_info: Any) -> list:
    """Input modality names of an installed model (a ``ModelInfo``: ``input_modalities``), in channel order.

    ``None`` (no model selected) gives no inputs.
    """
    if model_info is None:
        return []
    return [str(m) for m in model_info.input_modalities]


def input_slots(modalities: Sequence[str]) -> list:
    """The four selectors: one visible, labelled selector per model input channel."""
    if len(modalities) > MAX_INPUTS:
        raise ValueError(f"the model needs {len(modalities)} input images; this panel supports at most {MAX_INPUTS}")
    slots = []
    for index in range(MAX_INPUTS):
        if index < len(modalities):
            name = modalities[index] or f"Input {index + 1}"
            slots.append(InputSlot(index, True, f"{name}:", f"Volume used as the model's {name} input (channel {index + 1})"))
        else:
            slots.append(InputSlot(index, False, f"Input {index + 1}:", "Not used by the selected model"))
    return slots


@dataclass(frozen=True)
class ModelItem:
    """One entry of the model combo box: shown text, the name passed to the Logic, tooltip."""

    text: str
    name: Optional[str]
    tooltip: str


def model_items(installed: Sequence[Any]) -> list:
    """Combo entries for installed models, followed by the "Add model…" entry (name None)."""
    items = []
    for info in installed:
        # ModelInfo.key is what the Logic takes as model=; name/version are for display.
        text = f"{info.name} {info.version}".strip()
        if info.name != info.key:
            text += f" [{info.key}]"
        modalities = ", ".join(modalities_of(info))
        tooltip = "\n".join(part for part in (info.description, f"Inputs: {modalities}" if modalities else "") if part)
        items.append(ModelItem(text, info.key, tooltip))
    items.append(ModelItem(ADD_MODEL_ITEM, None, "Install a model package (.zip or folder with manifest.json) or import a model"))
    return items


def device_labels(report: Optional[Mapping] = None) -> list:
    """Text of the device combo items (same order as DEVICE_CHOICES), saying what was detected.

    ``report`` is the worker's device report (``Logic.deviceReport()``, which runs
    ``tumorseg_core.inference.devices.device_report`` in the worker process: torch is never
    imported in Slicer's UI process), or None when no report was asked for yet.
    """
    if report is None:
        return ["auto (detected on first run)", "cpu", "cuda (not checked yet)", "mps (Apple GPU, not checked yet)"]
    gpus = list(report.get("gpus") or [])
    if report.get("cuda_available") and gpus:
        first = gpus[0]
        gpu_text = f"{first.get('name', 'GPU')}, {first.get('memory_gib', '?')} GiB"
        if len(gpus) > 1:
            gpu_text += f", +{len(gpus) - 1} more"
        cuda = f"cuda ({gpu_text})"
    else:
        cuda = "cuda (no NVIDIA GPU detected)"
    mps = "mps (Apple GPU)" if report.get("mps_available") else "mps (no Apple GPU detected)"
    auto_device = str(report.get("auto_device") or ("cuda" if report.get("cuda_available") else "cpu"))
    threads = report.get("torch_threads") or report.get("cpu_count")
    cpu = f"cpu ({threads} threads)" if threads else "cpu"
    labels = {"auto": f"auto (uses {auto_device})", "cpu": cpu, "cuda": cuda, "mps": mps}
    return [labels[choice] for choice in DEVICE_CHOICES]


@dataclass(frozen=True)
class ButtonState:
    text: str
    tooltip: str
    enabled: bool


def apply_button_state(running: bool, messages: Sequence[str] = ()) -> ButtonState:
    """Apply turns into Cancel while a segmentation runs; disabled with the reason otherwise."""
    if running:
        return ButtonState("Cancel", "Stop the segmentation; the scene is left as it was", True)
    if messages:
        return ButtonState("Apply", messages[0], False)
    return ButtonState("Apply", "Segment the tumor in the selected volumes", True)


def validation_messages(
    inputs: Sequence[Any],
    modalities: Sequence[str],
    model: Optional[str] = DEFAULT_MODEL,
    device: str = "auto",
    report: Optional[Mapping] = None,
) -> list:
    """Why Apply cannot run yet; an empty list means it can.

    ``inputs`` are the selected nodes (None when empty) in selector order. Node identity
    is used to detect the same volume chosen for two inputs.
    """
    messages = []
    if not model:
        messages.append("Select a model")
    if not modalities and model:
        messages.append(f"The model '{model}' is not installed or unusable; add it with 'Add model…'")
    for index, modality in enumerate(modalities):
        node = inputs[index] if index < len(inputs) else None
        if node is None:
            messages.append(f"Select an input volume for {modality}")
    chosen = [inputs[i] for i in range(min(len(inputs), len(modalities))) if inputs[i] is not None]
    for i, node in enumerate(chosen):
        if any(node is other for other in chosen[:i]):
            messages.append("The same volume is selected for two inputs; select a different volume for each")
            break
    if device not in DEVICE_CHOICES:
        messages.append(f"Unknown device '{device}'; choose one of {', '.join(DEVICE_CHOICES)}")
    elif device == "cuda" and report is not None and not report.get("cuda_available"):
        messages.append("CUDA is selected but no NVIDIA GPU was detected; choose auto or cpu")
    elif device == "mps" and report is not None and not report.get("mps_available"):
        messages.append("MPS is selected but no Apple GPU was detected; choose auto or cpu")
    return messages


def format_elapsed(seconds: float) -> str:
    """``m:ss`` under an hour, ``h:mm:ss`` above; negative or NaN counts as 0."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        seconds = 0
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


# States of one run, as the status line shows them.
IDLE, RUNNING, DONE, FAILED, CANCELLED = "idle", "running", "done", "failed", "cancelled"


def status_text(state: str, elapsed: float = 0.0, message: str = "", fraction: Optional[float] = None) -> str:
    """One status line: what happens, how far along, and the elapsed time."""
    clock = format_elapsed(elapsed)
    if state == IDLE:
        return message or "Ready"
    if state == RUNNING:
        parts = [message or "Segmenting"]
        if fraction is not None and math.isfinite(fraction):
            parts.append(f"{int(round(100 * min(max(fraction, 0.0), 1.0)))}%")
        parts.append(f"elapsed {clock}")
        return " — ".join(parts)
    if state == DONE:
        return f"Done in {clock}" + (f": {message}" if message else "")
    if state == FAILED:
        return f"Failed after {clock}: {message or 'unknown error (see the Python console)'}"
    if state == CANCELLED:
        return f"Cancelled after {clock}; the scene was left as it was"
    raise ValueError(f"unknown state '{state}'")


def progress_value(fraction: Optional[float]) -> int:
    """Progress bar value 0..100; an unknown fraction gives 0."""
    if fraction is None or not math.isfinite(fraction):
        return 0
    return int(round(100 * min(max(fraction, 0.0), 1.0)))


def import_source(chosen: str) -> str:
    """What to import when the user picked ``chosen`` in the file dialog.

    A file that describes its folder (a package's ``manifest.json``, an nnU-Net result's
    ``dataset.json``/``plans.json``) stands for that folder; a bundle's
    ``configs/metadata.json`` for the bundle; anything else (a .zip, a checkpoint) for itself.
    """
    path = PurePath(chosen)
    if path.name in ("manifest.json", "dataset.json", "plans.json"):
        return str(path.parent)
    if path.name in ("metadata.json", "inference.json") and path.parent.name == "configs":
        return str(path.parent.parent)
    return str(path)


IMPORT_FILE_FILTER = ("Models (*.zip manifest.json dataset.json plans.json metadata.json *.pt *.pth *.onnx);;"
                      "All files (*)")


def output_segmentation_name(first_input_name: Optional[str]) -> str:
    """Name of a segmentation created for the output when none is selected."""
    return f"{first_input_name} tumor segmentation" if first_input_name else "Tumor segmentation"
