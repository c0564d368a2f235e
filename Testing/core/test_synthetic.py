"""Tests of the synthetic phantoms: determinism, geometry, contents, files."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.synthetic import make_multimodal_phantom, make_phantom, write_phantom

OBLIQUE_30 = (1.0, 0.0, 0.0, 0.0, math.cos(math.pi / 6), -math.sin(math.pi / 6),
              0.0, math.sin(math.pi / 6), math.cos(math.pi / 6))
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def test_deterministic_for_seed_and_args():
    a = make_phantom(5, size_xyz=(48, 48, 40), modality="ct")
    b = make_phantom(5, size_xyz=(48, 48, 40), modality="ct")
    c = make_phantom(6, size_xyz=(48, 48, 40), modality="ct")
    assert np.array_equal(_arr(a.image), _arr(b.image))
    assert np.array_equal(_arr(a.truth), _arr(b.truth))
    assert a.lesions == b.lesions
    assert not np.array_equal(_arr(a.image), _arr(c.image))


def test_types_and_default_grid():
    ph = make_phantom(1, size_xyz=(40, 36, 30), spacing_xyz=(2.0, 2.0, 2.5))
    assert ph.image.GetPixelID() == sitk.sitkFloat32
    assert ph.truth.GetPixelID() == sitk.sitkUInt8
    assert ph.image.GetSize() == (40, 36, 30) and ph.truth.GetSize() == (40, 36, 30)
    assert ph.image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    center = ph.image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ph.image.GetSize()])
    assert np.allclose(center, 0.0, atol=1e-6)  # default origin centres the grid
    for key in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(ph.image, key)() == getattr(ph.truth, key)()
    assert set(np.unique(_arr(ph.truth))) <= {0, 1}


@pytest.mark.parametrize("grid", [
    {"direction": OBLIQUE_30},
    {"direction": FLIPPED, "origin": (30.0, -20.0, 5.0)},
    {"spacing_xyz": (0.8, 0.8, 3.0), "size_xyz": (160, 160, 40)},
])
def test_lesion_centres_map_to_truth(grid):
    ph = make_phantom(3, lesion_radius_mm=(4.0, 15.0), n_lesions=3, **grid)
    assert ph.lesions
    truth = _arr(ph.truth)
    for les in ph.lesions:
        idx = ph.truth.TransformPhysicalPointToIndex(les.center_lps)
        assert truth[idx[::-1]] == 1, f"lesion at {les.center_lps} not in the truth"


def test_same_scene_through_different_grids():
    # One physical scene sampled through an axial and a finer oblique grid: same tumor volume.
    mm = make_multimodal_phantom(7, ("mri", "mri"), n_lesions=2, lesion_radius_mm=(6.0, 12.0),
                                 grids=[None, {"direction": OBLIQUE_30, "spacing_xyz": (1.0, 1.0, 1.0),
                                               "size_xyz": (144, 144, 120)}])
    vols = [_arr(t).sum() * np.prod(t.GetSpacing()) for t in mm.truths]
    assert vols[0] > 0
    assert vols[1] == pytest.approx(vols[0], rel=0.1)


def test_lesion_free_has_empty_truth():
    ph = make_phantom(2, size_xyz=(48, 48, 40), lesion_free=True)
    assert ph.lesions == []
    assert _arr(ph.truth).sum() == 0


def test_ct_intensities_are_hu_like():
    ph = make_phantom(4, modality="ct")
    a = _arr(ph.image)
    assert a.min() < -900  # air outside the body
    body = a[a > -500]
    assert -150 < float(np.median(body)) < 150  # soft tissue / organs
    assert (body < -50).mean() > 0.02  # some fat
    truth = _arr(ph.truth) > 0
    assert 0 < float(np.median(a[truth])) < 300


def test_mri_and_pet_ranges():
    mri = _arr(make_phantom(4, modality="mri").image)
    pet = make_phantom(4, modality="pet", lesion_kinds=("hyper",))
    p = _arr(pet.image)
    assert mri.min() >= 0 and p.min() >= 0
    truth = _arr(pet.truth) > 0
    assert np.median(p[truth]) > 1.5 * np.median(p[(p > 0.1) & ~truth])  # hot lesions


@pytest.mark.parametrize("seed", range(6))
def test_lesion_sizes_within_requested_range(seed):
    lo, hi = 3.0, 15.0
    ph = make_phantom(seed, lesion_radius_mm=(lo, hi), modality="random")
    for les in ph.lesions:
        assert lo <= les.radius_mm <= hi
        eq_r = (3 * les.volume_mm3 / (4 * math.pi)) ** (1 / 3)
        assert 0.6 * lo <= eq_r <= 1.4 * hi


def test_all_contrast_kinds_render():
    for kind in ("hyper", "hypo", "necrotic", "rim"):
        ph = make_phantom(11, n_lesions=1, lesion_radius_mm=(12.0, 14.0), lesion_kinds=(kind,))
        assert [les.kind for les in ph.lesions] == [kind]
        a, t = _arr(ph.image), _arr(ph.truth) > 0
        c = ph.image.TransformPhysicalPointToIndex(ph.lesions[0].center_lps)[::-1]
        ring = np.zeros_like(t)
        ring[tuple(slice(max(v - 12, 0), v + 13) for v in c)] = True
        organ_like = float(np.median(a[ring & ~t]))
        centre = float(np.median(a[tuple(slice(v - 1, v + 2) for v in c)]))
        if kind == "hyper":
            assert centre > organ_like
        elif kind in ("hypo", "necrotic"):
            assert centre < organ_like


def test_multimodal_on_different_grids():
    mm = make_multimodal_phantom(3, ("ct", "pet"), n_lesions=2, lesion_radius_mm=(6.0, 12.0),
                                 grids=[None, {"spacing_xyz": (3.0, 3.0, 3.0), "size_xyz": (48, 48, 40)}])
    assert len(mm.images) == 2 and mm.modalities == ["ct", "pet"]
    assert mm.images[1].GetSpacing() == (3.0, 3.0, 3.0)
    assert mm.truth.GetSize() == mm.images[0].GetSize()
    for img, truth in zip(mm.images, mm.truths):
        assert truth.GetSize() == img.GetSize()
        for les in mm.lesions:
            assert _arr(truth)[truth.TransformPhysicalPointToIndex(les.center_lps)[::-1]] == 1


def test_write_phantom_roundtrip(tmp_path):
    ph = make_phantom(0, size_xyz=(40, 40, 32))
    paths = write_phantom(ph, tmp_path / "out", "case1")
    assert set(paths) == {"image", "truth"}
    back = sitk.ReadImage(str(paths["truth"]))
    assert np.array_equal(_arr(back), _arr(ph.truth))
    assert back.GetOrigin() == pytest.approx(ph.truth.GetOrigin())
    with pytest.raises(InputError):
        write_phantom(ph, tmp_path, "../evil")


def test_bad_arguments_raise_input_error():
    with pytest.raises(InputError):
        make_phantom(0, modality="xray")
    with pytest.raises(InputError):
        make_phantom(0, direction=(1, 0, 0, 0, 2, 0, 0, 0, 1))
    with pytest.raises(InputError):
        make_phantom(0, lesion_radius_mm=(10, 5))
    with pytest.raises(InputError):
        make_phantom(0, spacing_xyz=(0, 1, 1))


def test_speed_default_size():
    make_phantom(0)  # warm caches
    t0 = time.perf_counter()
    make_phantom(1)
    assert time.perf_counter() - t0 < 3.0  # ~0.5 s alone; generous for a shared 2-core machine


def test_no_torch_import():
    code = ("import sys, tumorseg_core.synthetic, tumorseg_core.interactive.seeds; "
            "sys.exit(1 if 'torch' in sys.modules or 'monai' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
