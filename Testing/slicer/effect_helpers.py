"""Shared helpers of the Tumor effect tests (slicer-core MRML, no mocks)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from tumorseg_core.synthetic import make_phantom  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SLICER_DIR = REPO / "TumorSegmentation"
if str(SLICER_DIR) not in sys.path:
    sys.path.insert(0, str(SLICER_DIR))

from TumorSegmentationLib import effect_regions as regions  # noqa: E402
from TumorSegmentationLib import geometry_bridge as gb  # noqa: E402
from TumorSegmentationLib.effect_logic import TumorEffectLogic  # noqa: E402

# The VTK logic's enum, for tests that edit segments through vtkSlicerSegmentEditorLogic directly
# (the effect's own modes are names: effect_logic.SET / ADD).
SET = slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet


def load_volume(scene, image: sitk.Image, folder: Path, name: str, ext: str = ".nrrd"):
    """Write ``image`` and load it the way Slicer loads files."""
    path = folder / f"{name}{ext}"
    sitk.WriteImage(image, str(path))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    assert storage.ReadData(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def exported(scene, seg, segment_id: str, source) -> np.ndarray:
    """The segment as a boolean (z, y, x) array on the source volume's grid."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg, ids, labelmap, source)
    image, matrix = gb.volume_to_sitk(labelmap)
    source_image, source_matrix = gb.volume_to_sitk(source)
    assert np.allclose(matrix, source_matrix, atol=1e-4)
    scene.RemoveNode(labelmap)
    return sitk.GetArrayFromImage(image) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def ras(point_lps) -> tuple:
    return (-point_lps[0], -point_lps[1], point_lps[2])


def lesion_truth(phantom) -> np.ndarray:
    """Truth of the phantom's first lesion (its connected component)."""
    from scipy import ndimage

    truth = sitk.GetArrayFromImage(phantom.truth) > 0
    index = phantom.truth.TransformPhysicalPointToIndex(phantom.lesions[0].center_lps)
    components, _ = ndimage.label(truth)
    value = components[index[2], index[1], index[0]]
    assert value, "the lesion centre must be inside its truth"
    return components == value


def phantom_with_lesions(seed: int, n_lesions: int = 1, **options):
    """``make_phantom`` with exactly ``n_lesions`` placed (the generator drops lesions that do not fit)."""
    for attempt in range(40):
        phantom = make_phantom(seed + 1000 * attempt, n_lesions=n_lesions, **options)
        if len(phantom.lesions) == n_lesions:
            return phantom
    raise AssertionError(f"no phantom with {n_lesions} lesion(s) near seed {seed}")


def setup_effect(scene, source, name: str = "Tumor", click_network: bool = False):
    """The effect on a new segmentation; its interactive modes model-free unless ``click_network``
    (the shipped click network through a worker: Testing/slicer/test_effect_clicknet.py)."""
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    effect = TumorEffectLogic(scene)
    if not click_network:
        effect.interactive.clickNetwork = None
    sid = effect.setup(seg, source)
    return effect, seg, sid


def add_segment(effect, seg, name: str, mask: np.ndarray) -> str:
    """A second segment holding ``mask`` (reference grid), written by the editor logic itself."""
    sid = seg.GetSegmentation().AddEmptySegment(name, name, (0.2, 0.5, 0.9))
    reference = effect.backend.referenceGeometry()
    effect.backend.logic.ModifySegmentByLabelmap(seg, sid, regions.mask_to_oriented(mask, reference), SET, True, True)
    return sid


OBLIQUE = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(np.pi / 6), -np.sin(np.pi / 6)],
                    [0.0, np.sin(np.pi / 6), np.cos(np.pi / 6)]])  # 30 degrees about x
GEOMETRIES = {
    "lps": {"size_xyz": (80, 80, 64), "spacing_xyz": (1.5, 1.5, 1.5)},
    "oblique30": {"size_xyz": (80, 80, 64), "spacing_xyz": (1.5, 1.5, 1.5), "direction": OBLIQUE.ravel()},
    "anisotropic": {"size_xyz": (128, 128, 40), "spacing_xyz": (0.9, 0.9, 3.0)},
}


def roi_node(scene, center_ras, size):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
    roi.SetXYZ(*center_ras)
    roi.SetSize(*size)
    return roi


def ras_grid_points(source) -> np.ndarray:
    """RAS centres of the source voxels, (z, y, x, 3)."""
    matrix = gb.volume_ijk_to_frame(source)
    dims = source.GetImageData().GetDimensions()
    k, j, i = np.meshgrid(*(np.arange(n) for n in dims[::-1]), indexing="ij")
    return np.einsum("rc,zyxc->zyxr", matrix[:3, :3], np.stack([i, j, k], -1)) + matrix[:3, 3]
