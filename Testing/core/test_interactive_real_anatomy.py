"""The interactive tools on real anatomy (issue #20): small lesions the grower's edge test misses.

Cases come from the real-anatomy generator (``benchmarks/real_anatomy``, evaluation split,
seed 0: the same cases as ``make_real_anatomy_set.py --split eval --seed 0``); the simulated
user is the benchmark's (``benchmarks/interactive_vs_growcut.py``: first click at the lesion's
deepest point, then a click at the deepest point of the largest error). If the real sources
cannot be fetched the tests FAIL with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.interactive_vs_growcut import (  # noqa: E402,E501
    TumorSegUser,
    deepest_point,
    dice,
    index_to_lps,
    lesions,
    simulate,
)
from benchmarks.real_anatomy.cases import make_case  # noqa: E402
from tumorseg_core.interactive.seeds import segment_from_seeds  # noqa: E402

pytestmark = pytest.mark.usefixtures("real_anatomy_sources")  # conftest: fetched once, FAILS without them


def _lesion(index: int, component: int) -> tuple[sitk.Image, np.ndarray]:
    case = make_case("eval", index, 0)
    image = sitk.Cast(case.image, sitk.sitkFloat32)
    return image, lesions(sitk.GetArrayFromImage(case.label) > 0)[component]


@pytest.mark.parametrize("index, component", [
    (12, 0),  # MRI, 7 mm low-contrast lesion against the ventricles (0.19 mL)
    (0, 2),  # MRI on 7 mm sagittal slices, 9.5 mm solid lesion by the ventricles (0.5 mL)
])
def test_click_on_a_small_lesion_without_a_clear_edge_stays_near_its_size(index, component):
    image, truth = _lesion(index, component)
    spacing = np.asarray(image.GetSpacing())[::-1]
    grown = segment_from_seeds(image, [index_to_lps(image, deepest_point(truth, spacing))], extend_fallback=True)
    got = sitk.GetArrayFromImage(grown.labels) > 0
    assert got.sum() <= 3.0 * truth.sum(), (int(truth.sum()), int(got.sum()))  # not a 15 mm guess
    assert dice(got, truth) >= 0.5


def test_background_clicks_shrink_a_guess_around_a_tiny_lesion():
    image, truth = _lesion(13, 1)  # CT, 5 mm rim lesion, deep (0.05 mL): the first click can only guess
    dices, _ = simulate(TumorSegUser, image, truth, clicks=3)
    assert dices[0] < 0.2  # the guess (a 15 mm region) ...
    assert dices[2] >= 0.5, dices  # ... two background clicks later is near the lesion


def test_background_clicks_cut_an_over_grown_lesion_on_every_side():
    image, truth = _lesion(9, 1)  # CT on 4 mm slices, 9 mm infiltrative lesion against bone (0.33 mL)
    dices, _ = simulate(TumorSegUser, image, truth, clicks=5)
    assert dices[0] < 0.3  # the grower found an edge, but far out (about 2.8 mL) ...
    assert dices[4] >= 0.6, dices  # ... the background clicks cut it back towards the lesion
