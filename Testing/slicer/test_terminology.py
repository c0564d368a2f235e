"""One terminology for the CLI's .seg.nrrd and the Slicer module's segments (issue #21).

The CLI writes a segment's terminology into the ``.seg.nrrd`` header; the module puts it
on a vtkSegment. Both must be the identical string, and its context must be one Slicer
knows for those codes: TumorSeg's context file (which the module loads) for tumor codes,
the DICOM master list for others. Slicer's default "3D Slicer General Anatomy list" has
no Neoplasm type, so a tumor written with it is not found there.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from TumorSegmentationLib import terminology

from tumorseg_core.imaging import segments
from tumorseg_core.imaging.io import write_labelmap
from tumorseg_core.imaging.segments import SEEDED_TUMOR, SegmentInfo

INFOS = [
    SEEDED_TUMOR,
    SegmentInfo(2, "Enhancing tumor", (1.0, 0.8, 0.0), terminology.ENHANCING_TUMOR),
    SegmentInfo(3, "Non-enhancing tumor", (0.2, 0.2, 0.9), terminology.NON_ENHANCING_TUMOR),
    SegmentInfo(4, "Necrosis", (0.5, 0.5, 0.1), terminology.NECROSIS),
    SegmentInfo(5, "Edema", (0.3, 0.8, 0.3), terminology.EDEMA),
    SegmentInfo(6, "Liver", (0.6, 0.3, 0.2),
                {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}),
]


def _header_entries(tmp_path) -> dict[str, str]:
    """Segment name -> the TerminologyEntry tag value of a .seg.nrrd written as the CLI writes it."""
    labels = sitk.GetImageFromArray(np.arange(7, dtype=np.uint8).repeat(2).reshape(2, 7, 1).repeat(3, axis=2))
    labels.SetSpacing((0.8, 1.2, 3.0))
    labels.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / "out.seg.nrrd"
    write_labelmap(labels, path, segments=INFOS)
    image = sitk.ReadImage(str(path))
    entries = {}
    for i in range(len(INFOS)):
        tags = image.GetMetaData(f"Segment{i}_Tags").split("|")
        entry = [t.split(":", 1)[1] for t in tags if t.startswith("TerminologyEntry:")]
        entries[image.GetMetaData(f"Segment{i}_Name")] = entry[0]
    return entries


def test_cli_header_and_slicer_segments_carry_the_identical_terminology(tmp_path):
    header = _header_entries(tmp_path)
    for info in INFOS:
        assert header[info.name] == terminology.terminology_entry(info.terminology), info.name
    assert header["Tumor"].startswith(terminology.CONTEXT_NAME + "~")
    assert header["Liver"].startswith(terminology.DICOM_MASTER_CONTEXT + "~")
    assert not any("General Anatomy" in entry for entry in header.values())


def test_the_engine_knows_exactly_the_codes_of_the_context_file():
    assert terminology.context_entries() == segments.TUMORSEG_CONTEXT_ENTRIES
    assert terminology.CONTEXT_NAME == segments.TUMORSEG_CONTEXT


def test_malformed_codes_are_refused_by_both_doors():
    bad = {"category": ["SCT", "49755003", "Morphologically|Altered"], "type": ["SCT", "108369006", "Neoplasm"]}
    with pytest.raises(ValueError, match="reserved"):
        terminology.terminology_entry(bad)
    with pytest.raises(Exception, match="reserved"):
        segments.terminology_string(bad)


def test_slicer_reads_the_cli_file_and_finds_every_tumor_code_in_the_loaded_context(tmp_path):
    slicer = pytest.importorskip("slicer")
    vtk = pytest.importorskip("vtk")
    scene = slicer.vtkMRMLScene()
    header = _header_entries(tmp_path)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "out.seg.nrrd"))
    assert storage.ReadData(node)
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadTerminologyFromFile(str(terminology.TERMINOLOGY_FILE)) == terminology.CONTEXT_NAME
    segmentation = node.GetSegmentation()
    tag_name = slicer.vtkSegment.GetTerminologyEntryTagName()
    assert len(segmentation.GetSegmentIDs()) == len(INFOS)
    in_our_context = 0
    for sid in segmentation.GetSegmentIDs():
        segment = segmentation.GetSegment(sid)
        tag = vtk.reference("")
        assert segment.GetTag(tag_name, tag), sid
        assert tag.get() == header[segment.GetName()]
        if not tag.get().startswith(terminology.CONTEXT_NAME):
            continue
        in_our_context += 1
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(tag.get(), entry)
        assert logic.UpdateEntryFromLoadedTerminologies(entry, [terminology.CONTEXT_NAME], []), segment.GetName()
        found = entry.GetTypeModifierObject() if entry.GetTypeModifierObject().GetCodeValue() else entry.GetTypeObject()
        # Found in the context => Slicer fills in its recommended color (127 gray means not found).
        assert tuple(found.GetRecommendedDisplayRGBValue()) != (127, 127, 127), segment.GetName()
    assert in_our_context == 5  # every tumor code; the liver is in the DICOM master list
