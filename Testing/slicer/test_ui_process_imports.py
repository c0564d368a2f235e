"""Slicer's UI process never imports torch or MONAI (issue 18).

A fresh interpreter with torch and MONAI blocked imports the module's UI-side code (the
Logic, the panel state, the effect logic, the parameter choices) and does what the panel
does before a run: list the installed models, read a model's manifest and check inputs,
build the run options, measure a label map, load the DICOM SEG writer, answer a click without the
network and build the click network's question (the cube and its inputs; the worker answers it).
Only the background worker may import torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.abc, json, sys, types
BLOCKED = ("torch", "monai", "onnxruntime", "openvino")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} imported in Slicer's UI process")
        return None

sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
import slicer
from TumorSegmentationLib import TumorSegmentationLogic, effect_logic, geometry_bridge, panel_state, terminology
from tumorseg_core.modelpkg import package
from tumorseg_core import options

from TumorSegmentationLib import dicom_export, measurements_table, segments_on_volume, uncertainty_volume
from TumorSegmentationLib import click_estimator, effect_interactive, effect_live
from tumorseg_core.clicknet.cube import cube_inputs
from tumorseg_core.interactive.session import InteractiveSession
from tumorseg_core.dicom import seg_read, seg_write
from tumorseg_core.measurement import measure
import numpy as np, SimpleITK as sitk

mask = np.zeros((6, 8, 8), np.uint8)
mask[2:4, 3:6, 3:6] = 1
infos = package.installed_models(verify=False)
logic = TumorSegmentationLogic()
manifest = logic.modelManifest("default")
state = {
    "models": [i.key for i in infos],
    "modalities": panel_state.modalities_of(infos[0]),
    "segments": [s.name for s in manifest.segments],
    "options": panel_state.run_options("normal", "auto", "auto"),
    "devices": panel_state.device_labels(None),
    "lesions": len(measure(sitk.GetImageFromArray(mask)).rows),
    "clicked": int(sitk.GetArrayFromImage(InteractiveSession(sitk.GetImageFromArray(mask.astype(np.float32) * 100)).add_click((4.0, 4.0, 2.0))).sum()),
    "cube": list(cube_inputs(sitk.GetImageFromArray(mask.astype(np.float32) * 100), [(4.0, 4.0, 2.0)])[1].shape),
    "clicknet_folder": str(click_estimator.shipped_click_network()),
    "blocked_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}
print(json.dumps(state))
"""


def test_ui_side_code_runs_with_torch_and_monai_blocked():
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "TumorSegmentation")], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert "default" in state["models"] and len(state["modalities"]) == 1
    assert state["lesions"] == 1  # the measurement table is computed in the UI process
    assert state["clicked"] > 0  # the effect's Click mode runs in the UI process
    assert state["segments"] and state["options"] == {"quality": "normal", "backend": "auto", "cascade": None}
    assert state["cube"] == [5, 40, 40, 40]  # the click network's question is built in the UI process
    from tumorseg_core.clicknet.predict import shipped_folder

    assert state["clicknet_folder"] == str(shipped_folder())  # found there without importing predict (torch)
    assert state["blocked_loaded"] == []
