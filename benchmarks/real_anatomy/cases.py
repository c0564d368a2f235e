"""One case of the real-anatomy set, and a whole set written as ``images/`` + ``labels/`` + ``cases.json``.

Case ``i`` of a split is drawn from ``numpy.random.default_rng([seed, SPLIT_CODE[split], i])``
alone, so a set is the same on every run and every case can be remade by itself. Sources
alternate MRI (even ``i``) and CT (odd ``i``) within the split's sources (:mod:`.sources`);
one case in six is lesion-free (``i % 12`` is 4 (MRI) or 11 (CT)), the others get 1-3 lesions of 5-50 mm
diameter (log-uniform, at least 1.2 slice thicknesses) of a random kind (:mod:`.lesions`)
and placement (:mod:`.placement`). The layout is the one ``tumorseg evaluate --data``
reads: ``images/case_XX.nii.gz`` (float32) and ``labels/case_XX.nii.gz`` (uint8, 1 = tumor)
on exactly the same grid. The truth is resampled nearest-neighbour with one value per
lesion, and each lesion keeps its largest 26-connected piece on the new grid (thin margins
of an oblique or thick sampling can leave one-voxel crumbs that would count as lesions).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from benchmarks.real_anatomy.acquisition import (
    add_bias_and_noise,
    choose_acquisition,
    direction_for,
    reacquire,
)
from benchmarks.real_anatomy.lesions import LESION_KINDS, LesionSpec, insert_lesion
from benchmarks.real_anatomy.placement import PLACEMENTS, choose_center
from benchmarks.real_anatomy.sources import SPLITS, load_anatomy, sources_for
from benchmarks.real_anatomy.tissue import largest_component

logger = logging.getLogger(__name__)

SPLIT_CODE = {"eval": 1, "train": 2}
PLACEMENT_WEIGHTS = (0.3, 0.2, 0.2, 0.15, 0.15)  # PLACEMENTS order
CT_UNIT_HU = 25.0


@dataclass
class Case:
    """A made case: float32 image and uint8 label on one grid, and its ``cases.json`` record."""

    image: sitk.Image
    label: sitk.Image
    record: dict[str, Any]


def is_lesion_free(index: int) -> bool:
    """Whether case ``index`` of a set has no lesion: one case in six, MRI (4, 16, ...) and CT (11, 23, ...) alike."""
    return index % 12 in (4, 11)


def make_case(split: str, index: int, seed: int, orientation: Optional[str] = None,
              thickness_mm: Optional[float] = None) -> Case:
    """Case ``index`` of ``split`` (``eval``/``train``) for ``seed``; deterministic.

    ``orientation`` / ``thickness_mm`` replace the drawn ones (the rest of the case is drawn as usual).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
    infos = sources_for(split)
    mri = [s for s in infos if s.modality == "mri"]
    ct = [s for s in infos if s.modality == "ct"]
    pool = mri if index % 2 == 0 else ct
    info = pool[int(rng.integers(len(pool)))]
    anatomy = load_anatomy(info.name)
    tissue = anatomy.tissue
    acquisition = choose_acquisition(rng, info.modality)
    if orientation is not None or thickness_mm is not None:
        acquisition = replace(
            acquisition, orientation=orientation or acquisition.orientation,
            thickness_mm=float(thickness_mm or acquisition.thickness_mm),
            direction=tuple(float(v) for v in direction_for(orientation, rng).ravel()) if orientation
            else acquisition.direction)
    array = sitk.GetArrayFromImage(anatomy.image).astype(np.float32)
    label = np.zeros(array.shape, np.uint8)
    spacing_zyx = np.asarray(anatomy.image.GetSpacing()[::-1], float)
    unit = (tissue.white - tissue.csf) if info.modality == "mri" else CT_UNIT_HU
    lesions: list[dict[str, Any]] = []
    taken: list[tuple[np.ndarray, float]] = []
    count = 0 if is_lesion_free(index) else int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    low = max(5.0, 1.2 * acquisition.thickness_mm)
    for _ in range(count):
        diameter = float(np.exp(rng.uniform(np.log(low), np.log(50.0))))
        kind = str(rng.choice(LESION_KINDS))
        wanted = str(rng.choice(PLACEMENTS, p=PLACEMENT_WEIGHTS))
        center, placement = choose_center(anatomy, wanted, diameter / 2.0, taken, rng)
        if center is None:
            logger.warning("%s case %d: no room for a %.0f mm lesion; left out", split, index, diameter)
            continue
        point = np.asarray(anatomy.image.TransformContinuousIndexToPhysicalPoint(center[::-1].tolist()))
        spec = LesionSpec(kind, placement, tuple(float(v) for v in point), diameter)
        volume = insert_lesion(array, label, tissue.brain, spacing_zyx, center, spec, unit, rng,
                               lesion_id=len(lesions) + 1)
        taken.append((point, diameter / 2.0))
        lesions.append({"kind": kind, "placement": placement, "placement_wanted": wanted,
                        "diameter_mm": round(diameter, 2), "center_lps": [round(float(v), 2) for v in point],
                        "volume_mm3": round(volume, 1)})
    source_image = sitk.GetImageFromArray(array)
    source_image.CopyInformation(anatomy.image)
    source_label = sitk.GetImageFromArray(label)
    source_label.CopyInformation(anatomy.image)
    image, out_label = reacquire(source_image, source_label, tissue.body | tissue.brain, acquisition,
                                 anatomy.background)
    image = add_bias_and_noise(image, info.modality, tissue.white, rng)
    ids = sitk.GetArrayFromImage(out_label)
    truth = np.zeros(ids.shape, np.uint8)
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    for number, lesion in enumerate(lesions, start=1):  # each lesion one piece: sampling can leave crumbs
        piece = largest_component(ids == number)
        truth[piece] = 1
        lesion["volume_on_grid_mm3"] = round(float(piece.sum()) * voxel_mm3, 1)
    out_label = sitk.GetImageFromArray(truth)
    out_label.CopyInformation(image)
    label_voxels = int(np.count_nonzero(truth))
    record = {
        "case": f"case_{index:02d}", "index": index, "seed": seed, "split": split, "source": info.name,
        "package": info.package, "subject": info.subject, "region": info.region, "modality": info.modality,
        "lesion_free": not lesions, "lesions": lesions,
        "thickness_mm": acquisition.thickness_mm, "inplane_mm": acquisition.inplane_mm,
        "orientation": acquisition.orientation, "direction": [round(v, 6) for v in acquisition.direction],
        "size_xyz": list(image.GetSize()),
        "truth_volume_mm3": round(label_voxels * float(np.prod(image.GetSpacing())), 1),
    }
    return Case(image, out_label, record)


def write_set(folder: Path, split: str, count: int, seed: int) -> list[dict[str, Any]]:
    """Write ``count`` cases of ``split`` into ``folder`` (images/, labels/, cases.json); returns the records.

    Files are written atomically; earlier ``case_*.nii.gz`` files and ``cases.json`` in the folder are replaced.
    """
    from tumorseg_core.imaging.io import write_image, write_labelmap

    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for old in [*images.glob("case_*.nii.gz"), *labels.glob("case_*.nii.gz")]:
        old.unlink()
    records = []
    for index in range(count):
        case = make_case(split, index, seed)
        name = case.record["case"]
        write_image(case.image, images / f"{name}.nii.gz")
        write_labelmap(case.label, labels / f"{name}.nii.gz")
        records.append(case.record)
        logger.info("%s: %s %s, %s %.1f mm, %d lesion(s) %s", name, case.record["source"], case.record["modality"],
                    case.record["orientation"], case.record["thickness_mm"], len(case.record["lesions"]),
                    ", ".join(f"{les['kind']}/{les['placement']} {les['diameter_mm']:.0f} mm"
                              for les in case.record["lesions"]))
    tmp = folder / ".cases.json.tmp"
    tmp.write_text(json.dumps({"split": split, "seed": seed, "cases": records}, indent=1), encoding="utf-8")
    os.replace(tmp, folder / "cases.json")
    return records
