"""The real-anatomy set generator (benchmarks/real_anatomy, issue #20 part 1).

The real scans are fetched through the generator's own code (``apt-get download`` of
``mricron-data`` and ``invesalius-examples``, ``pip download nilearn``) into
``~/.cache/tumorseg/real_anatomy`` on first use (about 35 MB + 12 MB, plus a minute to derive
the tissue maps once). If that fails the tests FAIL with the reason: they never pass
without the real sources.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.real_anatomy.cases import is_lesion_free, make_case  # noqa: E402
from benchmarks.real_anatomy.lesions import LESION_KINDS, LesionSpec, insert_lesion  # noqa: E402
from benchmarks.real_anatomy.sources import SOURCES, load_anatomy, sources_for  # noqa: E402

SEED = 7


pytestmark = pytest.mark.usefixtures("real_anatomy_sources")  # conftest: fetched once, FAILS without them


@pytest.fixture(scope="module")
def oblique_mri():
    return make_case("eval", 0, SEED, orientation="oblique", thickness_mm=5.0)


@pytest.fixture(scope="module")
def coronal_ct():
    return make_case("eval", 1, SEED, orientation="coronal", thickness_mm=3.0)


def _grid(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _source_mask_on(case, mask_name: str) -> np.ndarray:
    """The case's source mask (``body`` or ``brain``) resampled nearest-neighbour onto the case's grid (z, y, x)."""
    anatomy = load_anatomy(case.record["source"])
    mask = sitk.GetImageFromArray(getattr(anatomy.tissue, mask_name).astype(np.uint8))
    mask.CopyInformation(anatomy.image)
    return sitk.GetArrayFromImage(sitk.Resample(mask, case.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0


@pytest.mark.parametrize("which", ["oblique_mri", "coronal_ct"])
def test_label_lies_on_the_image_grid(which, request):
    case = request.getfixturevalue(which)
    assert _grid(case.label) == _grid(case.image)
    assert case.label.GetPixelID() == sitk.sitkUInt8 and case.image.GetPixelID() == sitk.sitkFloat32
    assert case.image.GetSpacing()[2] == pytest.approx(case.record["thickness_mm"])
    direction = np.asarray(case.image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction, np.asarray(case.record["direction"]).reshape(3, 3), atol=1e-5)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    assert set(np.unique(sitk.GetArrayViewFromImage(case.label))) == {0, 1}


def test_oblique_case_is_oblique_and_thick(oblique_mri):
    direction = np.asarray(oblique_mri.image.GetDirection()).reshape(3, 3)
    assert oblique_mri.record["orientation"] == "oblique" and oblique_mri.image.GetSpacing()[2] == 5.0
    assert np.abs(direction).max(axis=0).min() < 0.99  # no index axis along an LPS axis


def test_coronal_case_slices_along_y(coronal_ct):
    direction = np.asarray(coronal_ct.image.GetDirection()).reshape(3, 3)
    assert abs(direction[1, 2]) == pytest.approx(1.0)  # the slice axis (index z) runs along LPS y


@pytest.mark.parametrize("which", ["oblique_mri", "coronal_ct"])
def test_lesions_lie_inside_the_body_and_mostly_in_the_brain(which, request):
    case = request.getfixturevalue(which)
    truth = sitk.GetArrayFromImage(case.label) > 0
    assert case.record["lesions"] and truth.any()
    assert not (truth & ~_source_mask_on(case, "body")).any()
    assert (truth & _source_mask_on(case, "brain")).sum() >= 0.9 * truth.sum()
    spacing = case.image.GetSpacing()
    assert truth.sum() * np.prod(spacing) == pytest.approx(case.record["truth_volume_mm3"], rel=1e-3)


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_inserted_lesion_changes_the_image_only_around_its_truth(kind):
    anatomy = load_anatomy("colin27")
    array = sitk.GetArrayFromImage(anatomy.image).astype(np.float32)
    before = array.copy()
    label = np.zeros(array.shape, np.uint8)
    spacing = np.asarray(anatomy.image.GetSpacing()[::-1], float)
    depth = np.argwhere(anatomy.tissue.brain)
    center = depth[len(depth) // 2].astype(float)  # a voxel in the middle of the brain
    unit = anatomy.tissue.white - anatomy.tissue.csf
    spec = LesionSpec(kind, "deep", (0.0, 0.0, 0.0), 16.0)
    volume = insert_lesion(array, label, anatomy.tissue.brain, spacing, center, spec, unit, np.random.default_rng(3))
    truth = label > 0
    assert volume == pytest.approx(truth.sum() * np.prod(spacing)) and 0.3 < volume / (4 / 3 * np.pi * 8 ** 3) < 2.5
    assert not (truth & ~anatomy.tissue.brain).any()
    change = np.abs(array - before)
    assert change[truth].mean() > 0.05 * unit  # even a low-contrast lesion is there
    far = np.ones(array.shape, bool)
    far[tuple(slice(int(c) - 30, int(c) + 31) for c in center)] = False  # 30 mm around the centre
    assert not change[far].any()


def test_one_case_in_six_is_lesion_free_in_both_modalities():
    free = [i for i in range(24) if is_lesion_free(i)]
    assert len(free) == 4 and {i % 2 for i in free} == {0, 1}  # even cases are MRI, odd ones CT


def test_lesion_free_case_has_an_empty_label():
    index = next(i for i in range(12) if is_lesion_free(i) and i % 2 == 1)  # a CT case (fast)
    case = make_case("eval", index, SEED)
    assert case.record["lesion_free"] and case.record["lesions"] == []
    assert not sitk.GetArrayViewFromImage(case.label).any()
    assert _grid(case.label) == _grid(case.image)


def test_cases_are_deterministic(coronal_ct):
    again = make_case("eval", 1, SEED, orientation="coronal", thickness_mm=3.0)
    assert again.record == coronal_ct.record
    assert np.array_equal(sitk.GetArrayViewFromImage(again.image), sitk.GetArrayViewFromImage(coronal_ct.image))
    assert np.array_equal(sitk.GetArrayViewFromImage(again.label), sitk.GetArrayViewFromImage(coronal_ct.label))
    other = make_case("eval", 1, SEED + 1, orientation="coronal", thickness_mm=3.0)
    assert other.record["lesions"] != coronal_ct.record["lesions"]


def test_train_and_eval_anatomy_are_disjoint():
    evals, trains = sources_for("eval"), sources_for("train")
    assert evals and trains and {s.modality for s in evals} == {s.modality for s in trains} == {"mri", "ct"}
    for ev in evals:
        for tr in trains:
            if ev.subject == tr.subject:  # one subject only: its halves, which share no voxel
                assert ev.region != tr.region
                a, b = load_anatomy(ev.name), load_anatomy(tr.name)
                assert a.cut_x_lps == b.cut_x_lps and a.cut_side == -b.cut_side
                for anatomy in (a, b):
                    xs = [anatomy.image.TransformIndexToPhysicalPoint((i, 0, 0))[0]
                          for i in (0, anatomy.image.GetSize()[0] - 1)]
                    assert all(anatomy.cut_side * (x - anatomy.cut_x_lps) > 0 for x in xs)
    assert {s.name for s in evals}.isdisjoint({s.name for s in trains}) and len(SOURCES) == len(evals) + len(trains)


def test_ct_lesions_stay_in_their_half(coronal_ct):
    anatomy = load_anatomy(coronal_ct.record["source"])
    for lesion in coronal_ct.record["lesions"]:
        margin = anatomy.cut_side * (lesion["center_lps"][0] - anatomy.cut_x_lps)
        assert margin >= lesion["diameter_mm"] / 2.0


def test_script_writes_the_layout_evaluate_reads(tmp_path):
    import importlib.util

    from tumorseg_core.evaluation.evaluate import find_data
    spec = importlib.util.spec_from_file_location("make_real_anatomy_set", REPO / "benchmarks" / "make_real_anatomy_set.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--split", "train", "-n", "1", "--seed", str(SEED), "-o", str(tmp_path / "set")]) == 0
    images, labels = find_data(tmp_path / "set")
    assert sorted(images) == sorted(labels) == ["case_00"]
    records = json.loads((tmp_path / "set" / "cases.json").read_text())["cases"]
    assert [r["case"] for r in records] == ["case_00"]
    assert {r["split"] for r in records} == {"train"}
    assert {r["source"] for r in records} <= {s.name for s in sources_for("train")}
    for record in records:
        image = sitk.ReadImage(str(images[record["case"]][0]))
        label = sitk.ReadImage(str(labels[record["case"]]))
        assert image.GetSize() == label.GetSize() == tuple(record["size_xyz"])
        assert np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-6)
        assert np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-4)
