"""Self-test of the Tumor effect inside the real Slicer application, through the real Segment Editor.

Run from the module's self-test or the Python console::

    from TumorSegmentationLib.effect_selftest import TumorEffectSelfTest
    TumorEffectSelfTest().runTest()

It loads a synthetic phantom, opens the Segment Editor module, selects the "Tumor"
effect, switches it to Seed mode and "clicks" the lesion through the effect's logic
(the same call a slice-view click makes, routed through the editor widget so Undo sees
it), then checks the Dice against the phantom truth, the editor's Undo, and a click
on tissue that is not a lesion.
"""

import logging
import tempfile
import unittest
from pathlib import Path

import SimpleITK as sitk
import slicer
import vtk

from TumorSegmentationLib import geometry_bridge as gb

logger = logging.getLogger(__name__)
MIN_DICE = 0.85


class TumorEffectSelfTest(unittest.TestCase):
    """Segment Editor + Tumor effect end to end (needs the Slicer application)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)
        self.tempDir = tempfile.TemporaryDirectory(prefix="TumorEffectTest-")

    def tearDown(self):
        self.tempDir.cleanup()

    def runTest(self):
        for test in (self.test_seed_click_through_segment_editor, self.test_click_box_and_undo_through_segment_editor):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    # ------------------------------------------------------------------ helpers

    def loadPhantom(self, seed=5, radius=10.0):
        from tumorseg_core.synthetic import make_phantom

        for attempt in range(20):
            phantom = make_phantom(seed + 1000 * attempt, n_lesions=1, lesion_radius_mm=(radius, radius))
            if phantom.lesions:
                break
        path = Path(self.tempDir.name) / "phantom.nrrd"
        sitk.WriteImage(phantom.image, str(path))
        return phantom, slicer.util.loadVolume(str(path))

    def segmentEditor(self, volumeNode):
        slicer.util.selectModule("SegmentEditor")
        editorWidget = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Tumor test")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentID = segmentationNode.GetSegmentation().AddEmptySegment("Tumor")
        editorWidget.setSegmentationNode(segmentationNode)
        editorWidget.setSourceVolumeNode(volumeNode)
        editorWidget.setCurrentSegmentID(segmentID)
        return editorWidget, segmentationNode, segmentID

    @staticmethod
    def segmentArray(segmentationNode, segmentID, volumeNode):
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentID)
        slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(segmentationNode, ids, labelmapNode, volumeNode)
        image, _ = gb.volume_to_sitk(labelmapNode)
        slicer.mrmlScene.RemoveNode(labelmapNode)
        return sitk.GetArrayFromImage(image) > 0

    # ------------------------------------------------------------------ test

    def test_seed_click_through_segment_editor(self):
        phantom, volumeNode = self.loadPhantom()
        editorWidget, segmentationNode, segmentID = self.segmentEditor(volumeNode)
        editorWidget.setActiveEffectByName("Tumor")
        effect = editorWidget.activeEffect()
        self.assertIsNotNone(effect, "the Tumor effect is not registered")
        self.assertEqual(effect.name, "Tumor")
        effect.setParameter("Mode", "Seed")
        effect.self().updateGUIFromMRML()
        self.assertEqual(effect.self().modeComboBox.currentText, "Seed")

        lps = phantom.lesions[0].center_lps
        result = effect.self().effectLogic().seed_click((-lps[0], -lps[1], lps[2]))
        self.assertTrue(result.changed, result.message)
        truth = sitk.GetArrayFromImage(phantom.truth) > 0
        segmented = self.segmentArray(segmentationNode, segmentID, volumeNode)
        dice = 2.0 * (segmented & truth).sum() / max(segmented.sum() + truth.sum(), 1)
        logger.info("Tumor effect self-test: Dice %.3f (%s)", dice, result.message)
        self.assertGreaterEqual(dice, MIN_DICE)

        editorWidget.undo()  # the editor's own Undo must restore the empty segment
        self.assertFalse(self.segmentArray(segmentationNode, segmentID, volumeNode).any())
        editorWidget.setActiveEffectByName("")
        logger.info("Tumor effect self-test passed")

    def test_click_box_and_undo_through_segment_editor(self):
        """Click mode, then a box from an ROI node, then the effect's Undo step and the editor's Undo."""
        phantom, volumeNode = self.loadPhantom(seed=6)
        editorWidget, segmentationNode, segmentID = self.segmentEditor(volumeNode)
        editorWidget.setActiveEffectByName("Tumor")
        effect = editorWidget.activeEffect()
        effect.setParameter("Mode", "Click")
        effect.self().updateGUIFromMRML()
        self.assertEqual(effect.self().modeComboBox.currentText, "Click")
        logic = effect.self().effectLogic().interactive

        lps = phantom.lesions[0].center_lps
        center = (-lps[0], -lps[1], lps[2])
        result = logic.press("Click", center)
        self.assertTrue(result.changed, result.message)
        truth = sitk.GetArrayFromImage(phantom.truth) > 0
        clicked = self.segmentArray(segmentationNode, segmentID, volumeNode)
        dice = 2.0 * (clicked & truth).sum() / max(clicked.sum() + truth.sum(), 1)
        logger.info("Tumor effect Click self-test: Dice %.3f (%s)", dice, result.message)
        self.assertGreaterEqual(dice, 0.6)

        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Tumor box")
        roi.SetXYZ(*center)
        radius = phantom.lesions[0].radius_mm
        roi.SetSize(3.0 * radius, 3.0 * radius, 3.0 * radius)
        result = logic.box_from_roi(roi)
        self.assertEqual(logic.interactions, 2, result.message)
        self.assertTrue(self.segmentArray(segmentationNode, segmentID, volumeNode).any())

        logic.undo()  # the effect's Undo step: back to the click's result, exactly
        self.assertTrue((self.segmentArray(segmentationNode, segmentID, volumeNode) == clicked).all())
        logic.undo()
        self.assertFalse(self.segmentArray(segmentationNode, segmentID, volumeNode).any())
        editorWidget.undo()  # the editor's Undo takes back the effect's last rewrite
        self.assertTrue((self.segmentArray(segmentationNode, segmentID, volumeNode) == clicked).all())
        editorWidget.setActiveEffectByName("")
        logger.info("Tumor effect Click/Box/Undo self-test passed")
