"""The Slicer module's default choices give the same label map as ``tumorseg segment`` (issue 18).

Before the options had one definition, the module's "normal" quality forced overlap 0.5 while
the model's manifest (which the CLI, the API and the effect use) says 0.25: more windows and a
possibly different result from the same model. "normal" now means the model's own settings.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from TumorSegmentationLib import geometry_bridge, panel_state  # noqa: E402

from tumorseg_core.cli import main  # noqa: E402
from tumorseg_core.commands.demo import DEMO_LESION_RADIUS_MM, DEMO_SEED  # noqa: E402
from tumorseg_core.synthetic import make_phantom  # noqa: E402


def test_module_default_quality_gives_the_cli_label_map(scene, logic, tmp_path):
    phantom = make_phantom(DEMO_SEED, modality="mri", lesion_radius_mm=DEMO_LESION_RADIUS_MM)
    image = tmp_path / "image.nii.gz"
    sitk.WriteImage(phantom.image, str(image))
    assert main(["segment", str(image), "-o", str(tmp_path / "cli.nii.gz")]) == 0
    cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli.nii.gz")))
    assert cli.any()

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(image))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "image")
    assert storage.ReadData(volume)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Out")
    defaults = panel_state.run_options()  # what Apply sends with the panel's default choices
    assert logic.process([volume], node, model="default", options=defaults)
    segmentation = node.GetSegmentation()
    (sid,) = segmentation.GetSegmentIDs()
    mask = geometry_bridge.segment_labelmap_array(segmentation.GetSegment(sid))
    assert mask.shape == cli.shape
    assert np.array_equal(mask.astype(bool), cli == 1)
