"""The named adversarial corpus (``make_corpus.py``): each case is its own test.

An image case is read by ``io.read_image`` and ``stream_resample.read_to_model_grid``
(model spacing 1.5 mm); a package case is opened with ``open_package`` and its networks
loaded. ``OK`` cases must give a result on the input's grid (the same grid on both read
paths); the others the expected one-line error. The input is never changed.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from fuzz_files import expect_one_line, sha256
from make_corpus import CASES, OK, build

from tumorseg_core.errors import TumorSegError
from tumorseg_core.imaging import io, stream_resample
from tumorseg_core.imaging.geometry import GridGeometry
from tumorseg_core.modelpkg.package import open_package

assert len(CASES) >= 50


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tmp_path_factory.mktemp("adversarial")


def _image_outcome(path):
    image = io.read_image(path)
    volume, model, source = stream_resample.read_to_model_grid(path, (1.5, 1.5, 1.5), "LPS")
    assert source == GridGeometry.of(image), "the two read paths disagree on the input grid"
    assert volume.shape == model.size[::-1] and np.isfinite(volume).all()
    assert np.isfinite(sitk.GetArrayViewFromImage(image).astype(np.float64)).all()
    return image


def _package_outcome(path):
    package = open_package(path)
    networks = package.load_networks("cpu")
    assert len(networks) == len(package.weight_files) >= 1
    return package


@pytest.mark.parametrize("name", sorted(CASES))
def test_adversarial_case(corpus, fuzz_cases, name):
    case = CASES[name]
    path = build(name, corpus)
    before = sha256(path) if path.exists() else None
    outcome = _image_outcome if case.kind == "image" else _package_outcome
    if case.expect == OK:
        assert outcome(path) is not None
    else:
        with pytest.raises(TumorSegError) as error:
            outcome(path)
        assert case.expect in str(error.value), str(error.value)
        expect_one_line(lambda: outcome(path))  # one line
    assert (sha256(path) if path.exists() else None) == before, "the input changed"
    fuzz_cases.add("corpus")
