"""Window skipping (issue #23 part 3): windows wholly outside the body are not run, labels unchanged.

The phantoms come from ``tumorseg_core.synthetic`` (air around an ellipsoidal body), padded
with more air on one side so that whole windows lie in air, as a patient off-centre in a
large field of view. Network calls are counted with a fixed stand-in network (bright
tissue is "tumor", air is background with high confidence); the shipped default model
checks that the label map stays the exhaustive pass's through the Segmenter.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk
from directions import rotation_direction
from stand_in_networks import MeanThresholdNet
from torch import nn

from tumorseg_core.errors import TumorSegError
from tumorseg_core.imaging.body_mask import body_mask
from tumorseg_core.imaging.preprocess import normalize
from tumorseg_core.inference import cascade
from tumorseg_core.inference.predictor import Predictor
from tumorseg_core.inference.segmenter import Segmenter
from tumorseg_core.inference.sliding_window import pad_to_window, window_starts
from tumorseg_core.inference.window_skipping import windows_touching
from tumorseg_core.modelpkg.package import default_models_dir
from tumorseg_core.options import SegmentOptions
from tumorseg_core.synthetic import make_phantom

PATCH = (16, 16, 16)
NORMALIZATION = json.loads((default_models_dir() / "manifest.json").read_text())["inputs"][0]["normalization"]


def BrightNet(threshold: float = 1.0, gain: float = 6.0) -> MeanThresholdNet:
    """The stand-in network with this file's threshold and gain (bright voxels are tumour)."""
    return MeanThresholdNet(threshold, gain)


def pad_with_air(image: sitk.Image, before_xyz, after_xyz, seed: int = 0) -> sitk.Image:
    """``image`` grown by air voxels (noise with its corner's mean and spread) on its own grid."""
    array = sitk.GetArrayFromImage(image)
    corner = array[:4, :4, :4]
    pads = [(int(b), int(a)) for b, a in zip(before_xyz[::-1], after_xyz[::-1])]
    out = np.pad(array, pads, mode="constant")
    new = np.pad(np.zeros(array.shape, dtype=bool), pads, constant_values=True)
    rng = np.random.default_rng(seed)
    out[new] = rng.normal(float(corner.mean()), float(corner.std()) + 1e-3, int(new.sum()))
    result = sitk.GetImageFromArray(out.astype(np.float32))
    result.SetSpacing(image.GetSpacing())
    result.SetDirection(image.GetDirection())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    shift = direction @ (np.asarray(before_xyz, dtype=float) * np.asarray(image.GetSpacing()))
    result.SetOrigin(tuple(float(v) for v in np.asarray(image.GetOrigin()) - shift))
    return result


def volume_with_air(seed: int, modality: str, before_x: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """((1, z, y, x) normalized volume, (z, y, x) truth) of a small phantom with air on the low-x side."""
    phantom = make_phantom(seed, modality=modality, size_xyz=(40, 36, 32), spacing_xyz=(1.5, 1.5, 1.5),
                           lesion_radius_mm=(4.0, 8.0))
    image = pad_with_air(phantom.image, (before_x, 0, 0), (0, 0, 0), seed)
    truth = np.pad(sitk.GetArrayFromImage(phantom.truth), ((0, 0), (0, 0), (before_x, 0)))
    return normalize(sitk.GetArrayFromImage(image), NORMALIZATION)[None], truth > 0


def predictor(net: nn.Module, skip: bool, tta: bool = False, window_batch: int = 1) -> Predictor:
    p = Predictor([net], PATCH, num_outputs=2, device="cpu", overlap=0.5, window_batch=window_batch, tta=tta)
    p.skip_background = skip
    return p


@pytest.mark.parametrize("modality", ["mri", "ct"])
def test_body_mask_holds_the_body_and_nothing_is_air_without_air(modality):
    volume, truth = volume_with_air(3, modality)
    mask = body_mask(volume)
    assert mask.shape == volume.shape[1:]
    assert mask[truth].all()  # every tumor voxel is body
    assert 0.1 < mask.mean() < 0.7  # the padded side and the corners are air
    assert not mask[:, :, :20].any()  # 40 voxels of air minus the margin
    inside = volume[:, 10:22, 12:24, 50:66]  # a crop inside the body: no air at all
    assert body_mask(inside).all()
    rng = np.random.default_rng(1)
    assert body_mask(rng.normal(size=(1, 20, 20, 20)).astype(np.float32)).all()
    assert body_mask(rng.uniform(-1, 1, size=(2, 20, 20, 20)).astype(np.float32)).all()
    assert body_mask(np.zeros((1, 8, 8, 8), dtype=np.float32)).all()


@pytest.mark.parametrize(("modality", "window_batch"), [("mri", 1), ("ct", 3)])
def test_windows_wholly_in_air_are_not_run_and_labels_do_not_change(modality, window_batch):
    volume, truth = volume_with_air(5, modality)
    full_net, skip_net = BrightNet(), BrightNet()
    exhaustive = predictor(full_net, skip=False, window_batch=window_batch).predict(volume)
    skipping = predictor(skip_net, skip=True, window_batch=window_batch)
    labels = skipping.predict(volume)
    np.testing.assert_array_equal(labels, exhaustive)
    assert exhaustive.any()  # the stand-in network found bright tissue

    padded, _ = pad_to_window(volume, PATCH)
    starts = window_starts(padded.shape[1:], PATCH, 0.5)
    body = pad_to_window(body_mask(volume)[None], PATCH)[0][0]
    touching = windows_touching(body, starts, PATCH)
    assert full_net.windows == len(starts)
    assert skip_net.windows == len(touching) == len(starts) - skipping.windows_skipped
    assert skipping.windows_skipped >= len(starts) // 4  # a quarter of the field of view is air
    pz, py, px = PATCH
    truth_padded = pad_to_window(truth[None], PATCH)[0][0]
    for z, y, x in set(starts) - set(touching):  # what was skipped holds no tumor and no bright voxel
        assert not truth_padded[z : z + pz, y : y + py, x : x + px].any()
        assert padded[0, z : z + pz, y : y + py, x : x + px].max() < volume[0].min() + 1.0


def test_a_volume_without_air_runs_every_window():
    volume, _ = volume_with_air(3, "mri")
    inside = np.ascontiguousarray(volume[:, 4:28, 6:30, 46:78])  # body only
    net = BrightNet()
    p = predictor(net, skip=True)
    p.predict(inside)
    padded, _ = pad_to_window(inside, PATCH)
    assert p.windows_skipped == 0 and net.windows == len(window_starts(padded.shape[1:], PATCH, 0.5))


def test_tta_and_uncertainty_with_skipping():
    volume, _ = volume_with_air(7, "ct")
    full, skip = BrightNet(), BrightNet()
    labels_full, entropy_full = predictor(full, skip=False, tta=True).predict_with_uncertainty(volume)
    p = predictor(skip, skip=True, tta=True)
    labels, entropy = p.predict_with_uncertainty(volume)
    np.testing.assert_array_equal(labels, labels_full)
    assert p.windows_skipped > 0 and skip.windows == 8 * (full.windows // 8 - p.windows_skipped)  # 8 flips
    assert np.isfinite(entropy).all() and entropy.min() >= 0.0 and entropy.max() <= 1.0
    body = body_mask(volume)
    np.testing.assert_allclose(entropy[body], entropy_full[body], atol=1e-5)  # inside the body: same windows


def test_cascade_with_skipping():
    volume, _ = volume_with_air(9, "mri", before_x=56)
    spacing = (1.5, 1.5, 1.5)
    full, skip = BrightNet(), BrightNet()
    exhaustive = cascade.predict_labels(predictor(full, skip=False), volume, spacing, cascade=True)
    labels = cascade.predict_labels(predictor(skip, skip=True), volume, spacing, cascade=True)
    np.testing.assert_array_equal(labels, exhaustive)
    assert labels.any() and skip.windows < full.windows


def test_option_and_flag():
    assert SegmentOptions().skip_background is True
    assert SegmentOptions.from_mapping({"skip_background": False}).skip_background is False
    with pytest.raises(TumorSegError, match="skip_background must be true or false") as info:
        SegmentOptions(skip_background="no")
    assert "\n" not in str(info.value)
    from tumorseg_core.commands.segment_options import add_segment_options, segment_options

    parser = argparse.ArgumentParser()
    add_segment_options(parser)
    assert segment_options(parser.parse_args([])).skip_background is True
    assert segment_options(parser.parse_args(["--no-skip-background"])).skip_background is False


def test_the_default_model_gives_the_exhaustive_label_map_on_phantoms():
    """The shipped model on small phantoms with air on one side (an oblique anisotropic one too)."""
    segmenter = Segmenter("default", device="cpu")
    cases = [
        (24, "mri", (1.5, 1.5, 1.5), None, 72),
        (22, "ct", (1.2, 1.2, 2.0), rotation_direction("z", 20.0), 110),
    ]
    for seed, modality, spacing, direction, air in cases:
        phantom = make_phantom(seed, modality=modality, size_xyz=(48, 44, 32), spacing_xyz=spacing,
                               direction=direction, lesion_radius_mm=(5.0, 9.0))
        image = pad_with_air(phantom.image, (air, 0, 0), (0, 0, 0), seed)
        skipped = segmenter.segment(image, skip_background=True)
        assert segmenter.predictor(SegmentOptions()).windows_skipped > 0
        exhaustive = segmenter.segment(image, skip_background=False)
        for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(skipped, get)() == getattr(image, get)()
        a, b = sitk.GetArrayFromImage(skipped), sitk.GetArrayFromImage(exhaustive)
        np.testing.assert_array_equal(a, b)
        assert a.any(), (seed, modality)  # the lesions are found, so equality means something
