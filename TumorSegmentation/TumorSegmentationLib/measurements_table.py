"""The "Tumor measurements" table node: one row per lesion, from the engine's measurement table.

The segments (by default the ones TumorSeg created) are put on the reference volume's
grid (:mod:`.segments_on_volume`) and measured by :func:`tumorseg_core.measurement.measure`
in physical space: volume, RECIST long and short axes, 3D diameter, surface, sphericity,
intensity statistics of the reference volume and, with a PET volume, SUVmax, SUVpeak,
MTV and TLG. Qt-free: the module shows the node in a table view, tests read it on slicer-core.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import SimpleITK as sitk
import vtk

from tumorseg_core.errors import TumorSegError
from tumorseg_core.imaging.geometry import same_grid

from . import geometry_bridge
from .segments_on_volume import segments_label_image

logger = logging.getLogger(__name__)

TABLE_NAME = "Tumor measurements"

# The columns the module shows, in this order (engine field names; the CSV/JSON have them all).
COLUMNS = (
    "lesion_id", "segment", "volume_ml", "recist_long_mm", "recist_short_mm", "max_diameter_3d_mm",
    "surface_mm2", "sphericity", "intensity_mean", "intensity_sd", "intensity_min", "intensity_max",
    "suv_max", "suv_peak", "mtv41_ml", "tlg41", "mtv25_ml", "tlg25",
    "centroid_lps_L", "centroid_lps_P", "centroid_lps_S",
)
_TEXT_COLUMNS = {"segment"}
_INT_COLUMNS = {"lesion_id"}


def _pet_on_grid(pet_node: Any, segmentation_node: Any, reference: sitk.Image) -> sitk.Image:
    """The PET volume on the reference grid (linear; unchanged voxels when the grids already match)."""
    pet, _ = geometry_bridge.volume_to_sitk(pet_node, segmentation_node)
    pet = sitk.Cast(pet, sitk.sitkFloat64)
    if same_grid(pet, reference):
        pet.CopyInformation(reference)
        return pet
    logger.info("resampling the PET volume (linear) onto the reference volume's grid for the SUV measurements")
    return sitk.Resample(pet, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat64)


def measure_segmentation(
    segmentation_node: Any,
    volume_node: Any,
    pet_volume_node: Any = None,
    suv_factor: Optional[float] = None,
    segment_ids: Optional[Sequence[str]] = None,
    table_node: Any = None,
) -> Any:
    """Measure the segments and fill (or create) the "Tumor measurements" table node; returns it.

    ``pet_volume_node`` needs ``suv_factor`` (Bq/mL to SUVbw; the PET DICOM headers give it
    through :func:`tumorseg_core.measurement.pet_suv_factor_from_dicom`). The table is built
    completely before the scene is touched: on any error the scene is unchanged.
    """
    from tumorseg_core.measurement import measure

    scene = segmentation_node.GetScene() if segmentation_node is not None else None
    if scene is None:
        raise TumorSegError("the segmentation is not in a scene; add it to the scene first")
    labels, infos, volume = segments_label_image(segmentation_node, volume_node, segment_ids)
    pet = None
    if pet_volume_node is not None:
        if suv_factor is None:
            raise TumorSegError("a PET volume needs its SUV factor; give suvFactor (from the PET DICOM headers "
                                "or by hand)")
        pet = _pet_on_grid(pet_volume_node, segmentation_node, volume)
    table = measure(labels, image=volume, pet=pet, suv_factor=suv_factor, segments=infos)
    columns = _filled_table([row.flat() for row in table.rows], pet is not None)
    if table_node is None:
        table_node = scene.GetFirstNodeByName(TABLE_NAME)
        if table_node is None or not table_node.IsA("vtkMRMLTableNode"):
            table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", TABLE_NAME)
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        for column in columns:
            table_node.AddColumn(column)
        table_node.SetUseColumnTitleAsColumnHeader(True)
        table_node.SetAttribute("TumorSeg.Segmentation", segmentation_node.GetID() or "")
        table_node.SetAttribute("TumorSeg.Volume", volume_node.GetID() or "")
    finally:
        table_node.EndModify(was_modifying)
    logger.info("measured %d lesion(s) into '%s'", len(table.rows), table_node.GetName())
    return table_node


def _filled_table(rows: list, with_pet: bool) -> list:
    """One VTK array per shown column, filled from the flat rows (missing values as NaN)."""
    names = [c for c in COLUMNS if with_pet or not (c.startswith("suv") or c.startswith(("mtv", "tlg")))]
    arrays = []
    for name in names:
        if name in _TEXT_COLUMNS:
            array = vtk.vtkStringArray()
        elif name in _INT_COLUMNS:
            array = vtk.vtkIntArray()
        else:
            array = vtk.vtkDoubleArray()
        array.SetName(name)
        for row in rows:
            value = row.get(name)
            if name in _TEXT_COLUMNS:
                array.InsertNextValue(str(value))
            elif name in _INT_COLUMNS:
                array.InsertNextValue(int(value))
            else:
                array.InsertNextValue(float("nan") if value is None else float(value))
        arrays.append(array)
    return arrays
