"""The module's parameter node: every user choice, saved with the scene.

Only importable inside Slicer (``slicer.parameterNodeWrapper`` needs the application's
Qt bindings); outside Slicer the import fails with a clear message. The .ui binds
widgets to these fields with the ``SlicerParameterName`` dynamic property, which
Testing/slicer/test_extension_files.py checks by parsing this file with ``ast``.

The model combo is not bound (its items are the installed models, which change at
run time, while a bound QComboBox needs a fixed ``Choice``); the widget keeps
``model`` and the combo in sync itself.
"""

from typing import Annotated

try:
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
    from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
except ImportError as exc:  # slicer-core or plain Python: no parameterNodeWrapper
    raise ImportError(
        "TumorSegmentationLib.parameters needs 3D Slicer's parameterNodeWrapper; "
        "use TumorSegmentationLogic directly outside the Slicer application"
    ) from exc

# The engine's own choices, in their order (the combo items): one definition for every door.
from tumorseg_core.options import BACKENDS, CASCADE_CHOICES, DEVICES, QUALITIES  # noqa: E402


@parameterNodeWrapper
class TumorSegmentationParameterNode:
    """
    inputVolume0..3 - input images, in the order the model's manifest names its channels.
    model - name (or path) of the installed model package.
    device - "auto" picks a GPU when there is one.
    quality - fast (no window overlap), normal (the model's own settings), tta (test-time augmentation).
    backend - inference engine; "auto" picks the fastest installed one.
    cascade - ROI cascade: auto (the model's default), on, off.
    outputSegmentation - segmentation that receives the result (created when empty).
    uncertainty - also make the uncertainty map (a volume shown over the image).
    """

    inputVolume0: vtkMRMLScalarVolumeNode
    inputVolume1: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    model: str = "default"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    quality: Annotated[str, Choice(list(QUALITIES))] = "normal"
    backend: Annotated[str, Choice(list(BACKENDS))] = "auto"
    cascade: Annotated[str, Choice(list(CASCADE_CHOICES))] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    uncertainty: bool = False

    def inputVolumes(self) -> list:
        """The four input slots in order (None where empty)."""
        return [self.inputVolume0, self.inputVolume1, self.inputVolume2, self.inputVolume3]
