"""Export TumorSeg segments as a DICOM SEG of the series their volume was loaded from.

Slicer's DICOM loader marks a volume with the SOP Instance UIDs of its files (the
``DICOM.instanceUIDs`` attribute); the DICOM database maps each UID to its file. From those
files the engine (:func:`tumorseg_core.dicom.write_dicom_seg`) writes a DICOM Segmentation
that references the series, study and frame of reference, one segment per TumorSeg
segment with its terminology codes. Qt-free: the module's button calls
:func:`export_dicom_seg` with ``slicer.dicomDatabase.fileForInstance`` and imports the result
into the database; tests give their own UID-to-file lookup.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from tumorseg_core.errors import TumorSegError

from .segments_on_volume import segments_label_image

logger = logging.getLogger(__name__)

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
FileForInstance = Callable[[str], str]


def source_files(volume_node: Any, file_for_instance: FileForInstance) -> list:
    """The DICOM files the volume was loaded from, via its instance UIDs; TumorSegError if unknown."""
    uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise TumorSegError(f"volume '{volume_node.GetName()}' was not loaded from DICOM; load its series through "
                            "Slicer's DICOM module to export a DICOM SEG")
    files = []
    for uid in uids:
        path = file_for_instance(uid) or ""
        if not path or not Path(path).is_file():
            raise TumorSegError(f"the DICOM file of instance {uid} of '{volume_node.GetName()}' is not in the "
                                "DICOM database any more; import the series again")
        files.append(Path(path))
    return files


def _database_lookup() -> FileForInstance:
    import slicer

    database = getattr(slicer, "dicomDatabase", None)
    if database is None or not database.isOpen:
        raise TumorSegError("Slicer's DICOM database is not open; open it in the DICOM module first")
    return database.fileForInstance


def export_dicom_seg(
    segmentation_node: Any,
    volume_node: Any,
    output_path: Union[str, Path],
    file_for_instance: Optional[FileForInstance] = None,
    segment_ids: Optional[Sequence[str]] = None,
    algorithm_name: str = "TumorSeg",
    algorithm_version: str = "",
) -> Path:
    """Write the segments as a DICOM SEG of ``volume_node``'s source series to ``output_path``.

    The segments (default: those TumorSeg created) are taken on the volume's grid; the
    segmentation and the volume must share their transform (DICOM coordinates are the
    scanner's). Written atomically: on any error there is no output file.
    """
    from tumorseg_core.dicom.seg_write import check_seg_output_path, write_dicom_seg

    out = check_seg_output_path(output_path)
    if segmentation_node.GetParentTransformNode() is not volume_node.GetParentTransformNode():
        raise TumorSegError(f"'{segmentation_node.GetName()}' and '{volume_node.GetName()}' are under different "
                            "transforms; harden or remove the transforms before exporting DICOM SEG")
    files = source_files(volume_node, file_for_instance or _database_lookup())
    labels, infos, _ = segments_label_image(segmentation_node, volume_node, segment_ids)
    folder = Path(tempfile.mkdtemp(prefix="TumorSeg-dicom-"))
    try:
        for i, path in enumerate(files):  # the series alone: a database folder may hold other series
            shutil.copyfile(path, folder / f"{i:05d}.dcm")
        write_dicom_seg(labels, folder, out, segments=infos, algorithm_name=algorithm_name,
                        algorithm_version=algorithm_version)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("wrote DICOM SEG %s (%d segment(s))", out, len(infos))
    return out
