"""The real volumes: which exist, which split each belongs to, and loading each as an LPS image with its tissue maps.

| name | modality | subject | split | region |
|---|---|---|---|---|
| ``colin27`` | MRI T1 | Colin Holmes (one subject, 27 scans averaged) | eval | whole head |
| ``icbm152`` | MRI T1 | ICBM152 2009a (average of 152 other subjects) | train | whole head |
| ``ct_left`` | CT | ProMED CT 0051 (one patient) | eval | patient's left half (x >= midline) |
| ``ct_right`` | CT | ProMED CT 0051 (same patient) | train | patient's right half (x < midline) |

The CT has one subject only, so training and evaluation get different halves, cut at the
head's midline (the middle of the head mask's left-right extent); a lesion is placed at
least its radius away from the cut. The training MRI is a different subject from the
evaluation MRI. InVesalius stores the CT as ``int16 (z, y, x)`` with ``y`` running from
posterior to anterior and ``z`` from inferior to superior (seen on the images: head holder
behind, face in front, skull base at z = 0); ``x`` is taken to run to the patient's left
as in DICOM (left and right cannot be told apart on this head).
"""

from __future__ import annotations

import functools
import logging
import plistlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from benchmarks.real_anatomy import fetch_sources
from benchmarks.real_anatomy.tissue import TissueMaps, body_mask, ct_tissue, load_maps, mri_tissue, save_maps

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceInfo:
    """What a source is: modality (``mri``/``ct``), subject id, split (``eval``/``train``), region used."""

    name: str
    modality: str
    subject: str
    split: str
    region: str
    package: str


SOURCES: dict[str, SourceInfo] = {
    "colin27": SourceInfo("colin27", "mri", "colin27", "eval", "whole head", "debian:mricron-data"),
    "icbm152": SourceInfo("icbm152", "mri", "icbm152-2009a-average", "train", "whole head",
                          f"pypi:nilearn=={fetch_sources.NILEARN_VERSION}"),
    "ct_left": SourceInfo("ct_left", "ct", "promed-ct-0051", "eval", "left half", "debian:invesalius-examples"),
    "ct_right": SourceInfo("ct_right", "ct", "promed-ct-0051", "train", "right half", "debian:invesalius-examples"),
}
SPLITS: tuple[str, ...] = ("eval", "train")
DERIVED_VERSION = 1  # bump when the tissue maps change: the cached maps are remade


@dataclass
class Anatomy:
    """One real volume ready for lesions: float32 LPS image on its own grid and its tissue maps (z, y, x)."""

    info: SourceInfo
    image: sitk.Image
    tissue: TissueMaps
    background: float  # the value of air (padding when resampled)
    cut_x_lps: Optional[float] = None  # the half's cut plane (x = const, LPS mm), for halves
    cut_side: int = 0  # +1: the kept half is at x > cut (left), -1: x < cut (right)


def sources_for(split: str) -> list[SourceInfo]:
    """The sources of one split, MRI first."""
    return [s for s in SOURCES.values() if s.split == split]


def _to_lps(image: sitk.Image) -> sitk.Image:
    return sitk.DICOMOrient(image, "LPS")


def _load_colin27(root: Path) -> tuple[sitk.Image, np.ndarray]:
    t1 = sitk.Cast(_to_lps(sitk.ReadImage(str(root / fetch_sources.COLIN27_T1))), sitk.sitkFloat32)
    brain = sitk.GetArrayFromImage(_to_lps(sitk.ReadImage(str(root / fetch_sources.COLIN27_BRAIN)))) > 0
    return t1, ndimage.binary_fill_holes(brain)


def _load_icbm152(root: Path) -> tuple[sitk.Image, np.ndarray]:
    folder = root / fetch_sources.NILEARN_DIR
    t1 = sitk.Cast(_to_lps(sitk.ReadImage(str(folder / fetch_sources.NILEARN_FILES[0]))), sitk.sitkFloat32)
    gm = sitk.GetArrayFromImage(_to_lps(sitk.ReadImage(str(folder / fetch_sources.NILEARN_FILES[1]))))
    wm = sitk.GetArrayFromImage(_to_lps(sitk.ReadImage(str(folder / fetch_sources.NILEARN_FILES[2]))))
    parenchyma = (gm.astype(np.int32) + wm) > 100
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(parenchyma, iterations=3))
    return t1, brain


def _load_invesalius(root: Path) -> sitk.Image:
    folder = root / fetch_sources.INVESALIUS_DIR
    with open(folder / "main.plist", "rb") as fh:
        meta = plistlib.load(fh)
    shape = tuple(int(v) for v in meta["matrix"]["shape"])
    array = np.fromfile(folder / meta["matrix"]["filename"], dtype=meta["matrix"]["dtype"]).reshape(shape)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    sx, sy, sz = (float(v) for v in meta["spacing"])
    image.SetSpacing((sx, sy, sz))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))  # y index runs posterior -> anterior
    image.SetOrigin((-shape[2] * sx / 2.0, shape[1] * sy / 2.0, -shape[0] * sz / 2.0))
    return _to_lps(image)


def _spacing_zyx(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetSpacing()[::-1], float)


@functools.lru_cache(maxsize=4)
def load_anatomy(name: str, cache: Optional[Path] = None) -> Anatomy:
    """Load source ``name`` (a key of :data:`SOURCES`), fetching the sources first if needed."""
    info = SOURCES[name]
    root = fetch_sources.ensure_sources(cache, [name])
    derived = root / "derived" / f"{name}-v{DERIVED_VERSION}.npz"
    if info.modality == "mri":
        image, brain = _load_colin27(root) if name == "colin27" else _load_icbm152(root)
        array = sitk.GetArrayViewFromImage(image)
        tissue = load_maps(derived)
        if tissue is None:
            body = body_mask(array, float(np.percentile(array[brain], 5)) * 0.4)
            tissue = mri_tissue(array, body | brain, brain, _spacing_zyx(image))
            save_maps(derived, tissue)
        return Anatomy(info, image, tissue, 0.0)
    whole = _load_invesalius(root)
    array = sitk.GetArrayViewFromImage(whole)
    full = load_maps(root / "derived" / f"ct-v{DERIVED_VERSION}.npz")
    if full is None:
        full = ct_tissue(array, _spacing_zyx(whole))  # the skull is closed only in the whole head
        save_maps(root / "derived" / f"ct-v{DERIVED_VERSION}.npz", full)
    xs = np.nonzero(full.body.any(axis=(0, 1)))[0]
    mid = int(round((xs[0] + xs[-1]) / 2.0))
    keep_left = info.region == "left half"  # LPS: larger x index = patient's left (direction +x after orienting)
    half = whole[mid:, :, :] if keep_left else whole[:mid, :, :]
    cut_x = whole.TransformContinuousIndexToPhysicalPoint((mid - 0.5, 0.0, 0.0))[0]
    cut = np.s_[:, :, mid:] if keep_left else np.s_[:, :, :mid]
    tissue = TissueMaps(full.body[cut], full.brain[cut], {k: m[cut] for k, m in full.classes.items()},
                        full.csf, full.gray, full.white)
    return Anatomy(info, half, tissue, -1024.0, cut_x, 1 if keep_left else -1)


def export_sources(split: str, dest: Path) -> list[Path]:
    """Copy what ``split``'s sources are loaded from (their files and tissue maps) into the cache folder
    ``dest``, so that a machine without the registries (a lent GPU) can build that split from it alone
    (``$TUMORSEG_REAL_ANATOMY_CACHE=dest``). Fetches and derives here first; returns the files written."""
    import shutil

    names = [s.name for s in sources_for(split)]
    for name in names:
        load_anatomy(name)  # fetched and its tissue maps made here
    root = fetch_sources.cache_dir()
    files = {rel for name in names for rel in fetch_sources.REQUIRED_BY_SOURCE[name]}
    files |= {Path("derived") / f"{'ct' if SOURCES[n].modality == 'ct' else n}-v{DERIVED_VERSION}.npz"
              for n in names}
    written = []
    for rel in sorted(files):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
        written.append(dest / rel)
    return written
