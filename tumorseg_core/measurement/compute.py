"""``measure``: every lesion of a label map measured in physical space, as a :class:`MeasurementTable`.

The label map, the image and the PET image must share one grid (a label map on a box of
the image's own voxel lattice, as Slicer saves a cropped ``.seg.nrrd``, is accepted and
placed on the full grid); any other grid is an InputError naming both grids. An empty
label map gives an empty table.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.imaging.segments import SegmentInfo
from tumorseg_core.measurement.diameters import max_diameter_3d, recist
from tumorseg_core.measurement.intensity import intensity_stats
from tumorseg_core.measurement.labelmap import (
    check_labelmap,
    on_image_grid,
    segment_name,
    segments_from_header,
)
from tumorseg_core.measurement.lesions import Lesion, find_lesions
from tumorseg_core.measurement.pet import pet_stats, sphere_kernel
from tumorseg_core.measurement.pet_input import PetSource, open_pet
from tumorseg_core.measurement.physical import Physical
from tumorseg_core.measurement.surface import sphericity, surface_mesh
from tumorseg_core.measurement.table import LesionMeasurement, MeasurementTable, check_table_path

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def _point(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _ends(physical: Physical, ends_zyx: np.ndarray, offset_zyx: np.ndarray) -> tuple:
    points = physical.points_zyx(ends_zyx + offset_zyx)
    return (_point(points[0]), _point(points[1]))


def _measure_lesion(lesion: Lesion, physical: Physical, segments: Sequence[SegmentInfo],
                    image_zyx: Optional[np.ndarray], suv_zyx: Optional[np.ndarray],
                    kernel: Optional[np.ndarray]) -> LesionMeasurement:
    points = physical.points_zyx(lesion.index_zyx())
    half = physical.half_extent_lps()
    volume = lesion.voxels * physical.voxel_volume_mm3()
    axes = recist(lesion.mask, physical)
    diameter, ends3d = max_diameter_3d(lesion.mask, physical)
    area, mesh_volume = surface_mesh(lesion.mask, physical)
    offset = lesion.offset_zyx
    extra: dict = {}
    if image_zyx is not None:
        stats = intensity_stats(image_zyx[lesion.box][lesion.mask])
        extra.update({f"intensity_{k}": v for k, v in vars(stats).items()})
    if suv_zyx is not None:
        extra.update(vars(pet_stats(suv_zyx, lesion, physical, kernel)))
    return LesionMeasurement(
        lesion_id=lesion.lesion_id, label=lesion.label, segment=segment_name(lesion.label, segments),
        voxels=lesion.voxels, volume_mm3=volume, volume_ml=volume / 1000.0,
        centroid_lps=_point(points.mean(axis=0)),
        bbox_min_lps=_point(points.min(axis=0) - half), bbox_max_lps=_point(points.max(axis=0) + half),
        recist_slice=int(axes.slice_index + offset[0]),
        recist_long_mm=axes.long_mm, recist_short_mm=axes.short_mm,
        recist_long_ends_lps=_ends(physical, axes.long_ends_zyx, offset),
        recist_short_ends_lps=_ends(physical, axes.short_ends_zyx, offset),
        max_diameter_3d_mm=diameter, max_diameter_3d_ends_lps=_ends(physical, ends3d, offset),
        surface_mm2=area, sphericity=sphericity(mesh_volume, area),
        **extra,
    )


def measure(labels: sitk.Image, image: Optional[sitk.Image] = None, pet: Optional[PetSource] = None,
            suv_factor: Optional[float] = None,
            segments: Optional[Sequence[SegmentInfo]] = None) -> MeasurementTable:
    """Measure every lesion (26-connected component) of every label of ``labels``.

    ``labels``: 3D integer label map (0 = background). ``image``: the image whose
    intensities are summarised (HU on CT), on the label map's grid. ``pet``: a PET image
    (with ``suv_factor``) or a PET DICOM folder/file (SUV factor from its headers unless
    ``suv_factor`` is given), on the label map's grid. ``segments``: the names of the
    label values (default: the ``.seg.nrrd`` header of ``labels``, else ``label_N``).
    Raises InputError for a grid mismatch or an unusable input; an empty map gives an
    empty table.
    """
    labels = check_labelmap(labels)
    if segments is None:
        segments = segments_from_header(labels)
    image_zyx = None
    if image is not None:
        if not isinstance(image, sitk.Image):
            raise InputError(f"image is a {type(image).__name__}; give a SimpleITK image")
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"the image is {image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} "
                             "value(s) per voxel; give a 3D scalar image")
        labels = on_image_grid(labels, image, "image")
        image_zyx = sitk.GetArrayViewFromImage(image)
    pet_image, factor = open_pet(pet, suv_factor)
    suv_zyx = None
    if pet_image is not None:
        labels = on_image_grid(labels, pet_image, "PET image")
        suv_zyx = sitk.GetArrayViewFromImage(pet_image).astype(np.float64) * factor
    physical = Physical.of(labels)
    kernel = sphere_kernel(physical) if suv_zyx is not None else None
    lesions = find_lesions(sitk.GetArrayViewFromImage(labels))
    rows = [_measure_lesion(lesion, physical, segments, image_zyx, suv_zyx, kernel) for lesion in lesions]
    logger.info("measured %d lesion(s)", len(rows))
    return MeasurementTable(rows=rows, has_intensity=image is not None, suv_factor=factor)


def measure_to_file(labels_image: sitk.Image, image: Optional[sitk.Image], out_path: PathLike,
                    segments: Optional[Sequence[SegmentInfo]] = None, pet: Optional[PetSource] = None,
                    suv_factor: Optional[float] = None) -> Path:
    """Measure ``labels_image`` (see :func:`measure`) and write the table to ``out_path``.

    ``.csv`` or ``.json`` by the extension (checked before anything is measured); written
    atomically. Returns the path. For ``tumorseg segment --measure F``.
    """
    check_table_path(out_path)
    table = measure(labels_image, image=image, pet=pet, suv_factor=suv_factor, segments=segments)
    return table.write(out_path)
