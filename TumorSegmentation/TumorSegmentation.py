"""Tumor Segmentation: a thin Slicer shell over TumorSegmentationLib and tumorseg_core.

Module (metadata, Sample Data source, Segment Editor effect registration), Widget
(loads the .ui, binds the parameter node, hands everything else to
TumorSegmentationLib.widget) and the self-test. The computation lives in
``TumorSegmentationLib.logic.TumorSegmentationLogic``, usable without this file.
"""

import logging
import os

import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SAMPLE_CATEGORY = "TumorSeg"
SAMPLE_NAME = "TumorSeg phantom"
SAMPLE_NODE_NAME = "TumorSegPhantom"


class TumorSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Tumor Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["TumorSeg contributors"]
        self.parent.helpText = """
Segments tumors in CT or MRI volumes with a deep-learning model that runs on this computer
(CPU or GPU), in a background process that can be cancelled. Choose the model and its input
volumes (one per modality the model names), then Apply. Segment names, colors and SNOMED-CT
terminology come from the model. Your own models can be added as verified model packages.
See the <a href="https://github.com/tumorseg/SlicerTumorSeg#readme">documentation</a>.
"""
        self.parent.acknowledgementText = """
TumorSeg is open source (Apache-2.0). It builds on 3D Slicer, PyTorch, MONAI and SimpleITK,
and learned from SlicerMONAIAuto3DSeg, SlicerTotalSegmentator and SlicerNNUNet.
"""
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted():
    """Work that needs other modules (Sample Data, Segment Editor) to be loaded first."""
    registerSampleData()
    registerTerminology()
    registerSegmentEditorEffect()


def registerTerminology():
    """Load TumorSeg's terminology context, which the segments the module makes refer to."""
    try:
        from TumorSegmentationLib.terminology import load_into_slicer

        name = load_into_slicer()
    except Exception:
        logging.exception("Tumor Segmentation: the terminology file could not be loaded")
        return
    if name:
        logging.info("Tumor Segmentation: terminology context '%s' loaded", name)


#
# Sample data: a synthetic phantom generated locally (nothing is downloaded)
#


def loadPhantomSample(seed=0, nodeName=SAMPLE_NODE_NAME):
    """Generate a tumor phantom with tumorseg_core.synthetic and load it as a volume node."""
    import SimpleITK as sitk

    from tumorseg_core.synthetic import make_phantom

    phantom = make_phantom(seed)
    path = os.path.join(slicer.util.tempDirectory("TumorSegPhantom"), f"{nodeName}-{seed}.nrrd")
    sitk.WriteImage(phantom.image, path, True)  # LPS file; Slicer converts to RAS on load
    return slicer.util.loadVolume(path, {"name": nodeName, "show": True})


def registerSampleData():
    try:
        import SampleData
    except ImportError:
        logging.info("Tumor Segmentation: the Sample Data module is not loaded; no phantom sample")
        return
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title="Tumor Segmentation")
    # Sample Data calls customDownloader(source) from its button; there is no file to download.
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=[],
        fileNames=[],
        nodeNames=[],
        thumbnailFileName=os.path.join(iconsPath, "TumorSegmentation.png"),
        customDownloader=downloadPhantomSample,
    )


def downloadPhantomSample(source=None):
    """Sample Data button handler (a named function: Sample Data compares sources by their text)."""
    return loadPhantomSample()


def registerSegmentEditorEffect():
    """Register the Tumor effect (TumorSegmentationLib/effect.py, shipped with the module)."""
    try:
        from TumorSegmentationLib.effect import registerEffect
    except ImportError as exc:  # the effect ships with the module: failing to import it is a bug
        logging.error("Tumor Segmentation: no Segment Editor effect registered (%s)", exc)
        return
    try:
        # effect.registerEffect() handles setPythonSource's class lookup ("effectEffect" on
        # the TumorSegmentationLib package), so the package is not reloaded under its name.
        registerEffect()
    except Exception:
        logging.exception("Tumor Segmentation: the Segment Editor effect could not be registered")
        return
    logging.info("Tumor Segmentation: Segment Editor effect registered")


#
# Widget
#


class TumorSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panel = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from TumorSegmentationLib import TumorSegmentationLogic
        from TumorSegmentationLib.widget import TumorSegmentationPanel

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TumorSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TumorSegmentationLogic()
        self.panel = TumorSegmentationPanel(self.ui, self.logic)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.panel:
            self.panel.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        from TumorSegmentationLib.parameters import TumorSegmentationParameterNode

        # The singleton parameter node of this module, whatever base class the Lib Logic has.
        nodeLogic = ScriptedLoadableModuleLogic()
        nodeLogic.moduleName = "TumorSegmentation"
        parameterNode = TumorSegmentationParameterNode(nodeLogic.getParameterNode())
        if not parameterNode.inputVolume0:
            parameterNode.inputVolume0 = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self.setParameterNode(parameterNode)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.panel.updateState)
            self._parameterNodeGuiTag = None
        self._parameterNode = parameterNode
        if self._parameterNode:
            # Widgets with the "SlicerParameterName" property in the .ui are bound here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.panel.updateState)
        self.panel.setParameterNode(self._parameterNode)


#
# Self-test (same flow as Testing/slicer/headless_example.py)
#


class TumorSegmentationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from TumorSegmentationLib.effect_selftest import TumorEffectSelfTest

        self.setUp()
        self.test_phantom_end_to_end()
        TumorEffectSelfTest().runTest()  # the Segment Editor effect, clicked through the editor

    def test_phantom_end_to_end(self):
        from TumorSegmentationLib import TumorSegmentationLogic

        from tumorseg_core.modelpkg.package import open_package

        self.delayDisplay("Generating the phantom sample")
        registerSampleData()
        volume = loadPhantomSample(seed=1)
        self.assertIsNotNone(volume)

        self.delayDisplay("Segmenting (CPU)")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Phantom tumor")
        segmentation.CreateDefaultDisplayNodes()
        logic = TumorSegmentationLogic()
        logic.process([volume], segmentation, model="default", device="cpu", waitForCompletion=True,
                      uncertainty=True)
        uncertainty = slicer.mrmlScene.GetNodeByID(logic.lastResult["uncertaintyVolumeID"])
        self.assertEqual(uncertainty.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())

        self.delayDisplay("Measuring")
        table = logic.measure(segmentation, volume)
        self.assertEqual(table.GetName(), "Tumor measurements")
        self.assertGreater(table.GetNumberOfRows(), 0, "the phantom's lesions were not measured")

        expectedNames = [segment.name for segment in open_package("default").manifest.segments]
        segments = segmentation.GetSegmentation()
        names = [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]
        self.assertTrue(names, "no segment was created")
        self.assertTrue(set(names) <= set(expectedNames), f"segments {names} are not among {expectedNames}")
        # Their terminology names a context that startup loaded into Slicer.
        from TumorSegmentationLib.terminology import CONTEXT_NAME

        contexts = vtk.vtkStringArray()
        slicer.modules.terminologies.logic().GetLoadedTerminologyNames(contexts)
        loaded = [contexts.GetValue(i) for i in range(contexts.GetNumberOfValues())]
        self.assertIn(CONTEXT_NAME, loaded)

        # The result must lie on the input's grid: same spacing and axis directions.
        labelmap = segmentation.GetBinaryLabelmapInternalRepresentation(segments.GetNthSegmentID(0))
        self.assertIsNotNone(labelmap)
        for have, want in zip(labelmap.GetSpacing(), volume.GetSpacing()):
            self.assertAlmostEqual(have, want, places=4)
        labelmapDirections, volumeDirections = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        labelmap.GetDirectionMatrix(labelmapDirections)
        volume.GetIJKToRASDirectionMatrix(volumeDirections)
        for row in range(3):
            for col in range(3):
                self.assertAlmostEqual(labelmapDirections.GetElement(row, col),
                                       volumeDirections.GetElement(row, col), places=4)

        path = os.path.join(slicer.util.tempDirectory("TumorSegTest"), "phantom.seg.nrrd")
        self.assertTrue(slicer.util.saveNode(segmentation, path))
        self.assertGreater(os.path.getsize(path), 0)
        self.delayDisplay("Test passed")
