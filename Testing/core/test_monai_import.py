"""Imported MONAI bundles against MONAI running the bundle's own config.

Two bundles shaped like the zoo's (configs as in test_monai_bundle.py, networks shrunk so the
test runs in seconds): a spleen-like UNet CT 1 -> 2 softmax (Orientationd RAS, Spacingd,
ScaleIntensityRanged, CropForegroundd; Activationsd -> Invertd -> AsDiscreted argmax) and a
BraTS-like SegResNet 4 -> 3 sigmoid (NormalizeIntensityd nonzero channel_wise; threshold and
the region-to-label Lambdad). Random weights, random BatchNorm statistics. Each runs on small
NIfTI files on two geometries (identity direction; oblique, permuted, anisotropic).

The reference is what ``monai.bundle run`` does with the evaluator: MONAI's ConfigParser on the
bundle's inference.json instantiates ``network_def`` (weights loaded from models/model.pt),
``preprocessing``, ``inferer`` and ``postprocessing``; the case is loaded and preprocessed,
collated, inferred, decollated and post-processed by those objects (SaveImaged, pure output,
is skipped). The test evaluates the config; the code under test never does.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_monai_bundle import BRATS, BRATS_META, SPLEEN, SPLEEN_META, random_state, write_bundle

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.inference import monai_pipeline as mp
from tumorseg_core.modelpkg import monai_import
from tumorseg_core.modelpkg.monai_section import check_monai_section
from tumorseg_core.modelpkg.package import open_package

pytest.importorskip("nibabel")  # MONAI's LoadImaged reads the reference's NIfTI with it

ROI = [32, 32, 16]
SMALL_SPLEEN = copy.deepcopy(SPLEEN)
SMALL_SPLEEN["network_def"].update(channels=[4, 8, 16], strides=[2, 2], num_res_units=1)
SMALL_SPLEEN["inferer"]["roi_size"] = ROI
SMALL_BRATS = copy.deepcopy(BRATS)
SMALL_BRATS["network_def"].update(init_filters=8, blocks_down=[1, 1, 1, 1])
SMALL_BRATS["inferer"]["roi_size"] = ROI

SHAPE_XYZ = (40, 36, 20)


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


GEOMETRIES = {
    "identity": dict(spacing=(1.2, 1.3, 2.6), origin=(-20.0, -25.0, 10.0), direction=np.eye(3)),
    # oblique (20 and 12 degrees), x flipped and y/z swapped: a sagittal-ish acquisition
    "oblique": dict(spacing=(0.9, 1.45, 2.2), origin=(31.0, -12.5, 44.0),
                    direction=_rotation(np.radians(12), np.radians(20)) @ np.array(
                        [[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])),
}


def _image(array_zyx: np.ndarray, geometry: dict) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx.astype(np.float32))
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(tuple(np.asarray(geometry["direction"]).ravel()))
    return image


def _phantom(seed: int, ct: bool) -> np.ndarray:
    """An ellipsoidal 'body' with blobs; CT: HU with air at -1000; MR: 0 outside the body."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE_XYZ[::-1]], indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.75) ** 2 + (z / 0.9) ** 2 < 1
    blob = ((x - 0.2) / 0.3) ** 2 + ((y + 0.1) / 0.25) ** 2 + (z / 0.5) ** 2 < 1
    if ct:
        values = np.where(body, 40 + 30 * rng.standard_normal(body.shape), -1000.0)
        return np.where(blob, 120 + 20 * rng.standard_normal(body.shape), values)
    values = np.where(body, 300 + 80 * rng.standard_normal(body.shape) + 200 * blob, 0.0)
    return np.clip(values, 0, None) * body


def _bundle(tmp_path: Path, config: dict, meta: dict, seed: int, bias: float = 0.0) -> Path:
    from monai.bundle import ConfigParser

    net = ConfigParser(copy.deepcopy(config)).get_parsed_content("network_def")
    state = random_state(net, seed)
    # Sharper outputs than random weights give (probabilities far from ties), so that a label
    # comparison measures the pipelines rather than float noise at 0.5.
    last = [k for k, v in state.items() if v.ndim == 5][-1]
    state[last] = state[last] * 8
    state[last.replace("weight", "bias")] = state[last.replace("weight", "bias")] + bias  # some background
    return write_bundle(tmp_path / "bundle", config, meta, state)


def monai_reference(root: Path, data: dict):
    """(labels (z, y, x), activated channels after Invertd (C, z, y, x)) from MONAI itself."""
    from monai.bundle import ConfigParser
    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import SaveImaged

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))  # what CheckpointLoader does
    net.eval()
    pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
    batch = list_data_collate([pre(copy.deepcopy(data))])
    with torch.no_grad():
        batch["pred"] = inferer(batch["image"], net)
    item = decollate_batch(batch)[0]
    probabilities = None
    for transform in post.transforms:
        if isinstance(transform, SaveImaged):
            continue
        item = transform(item)
        if type(transform).__name__ == "Invertd":
            probabilities = item["pred"].detach().cpu().numpy().transpose(0, 3, 2, 1).copy()
    labels = item["pred"].detach().cpu().numpy()[0].transpose(2, 1, 0)
    return labels, probabilities


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else 2.0 * float((x & y).sum()) / float(total)


def _check_agreement(ours: sitk.Image, probs: np.ndarray, ref_labels, ref_probs, reference: sitk.Image, values):
    """Grid identical, probabilities within 1e-3, per-label Dice >= 0.99.

    Outside CropForegroundd's box MONAI's Invertd leaves probabilities of ~1e-16 in every
    channel (float64 interpolation noise around the zeros it padded with), so its argmax there
    is decided by noise; ours are exact zeros (label 0). Dice is asserted where the reference
    has probability mass (max > 1e-6), and every other disagreement must lie in such voxels.
    """
    assert ours.GetSize() == reference.GetSize()
    assert ours.GetSpacing() == reference.GetSpacing() and ours.GetOrigin() == reference.GetOrigin()
    assert ours.GetDirection() == reference.GetDirection()
    labels = sitk.GetArrayFromImage(ours)
    assert labels.shape == ref_labels.shape and probs.shape == ref_probs.shape
    defined = ref_probs.max(axis=0) > 1e-6
    raw = {v: round(dice(labels, ref_labels, v), 5) for v in values}
    dices = {v: round(dice(labels[defined], ref_labels[defined], v), 5) for v in values}
    diff = float(np.abs(probs - ref_probs).max())
    print(f"dice {dices} (all voxels {raw}; {int((~defined).sum())} voxels with MONAI probabilities <= 1e-6) "
          f"max prob diff {diff:.2e}; voxels per label { {v: int((ref_labels == v).sum()) for v in values} }")
    assert all(d >= 0.99 for d in dices.values()), dices
    assert not ((labels != ref_labels) & defined & (np.abs(probs - ref_probs).max(axis=0) > 1e-3)).any()
    assert diff <= 1e-3, diff
    return dices, diff


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_spleen_like_bundle_matches_monai(tmp_path, monkeypatch, geometry):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    root = _bundle(tmp_path, SMALL_SPLEEN, SPLEEN_META, seed=11)
    image = _image(_phantom(1, ct=True), GEOMETRIES[geometry])
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    out = monai_import.import_bundle(root, tmp_path / "pkg", name="spleen_like")
    package = open_package(out)
    manifest = package.manifest.to_dict()
    assert manifest["format_version"] == 4 and manifest["orientation"] == "RAS"
    assert manifest["spacing"] == [1.5, 1.5, 2.0] and manifest["patch_size"] == ROI
    assert manifest["output"]["labels"][0]["name"] == "spleen"
    assert manifest["output"]["labels"][0]["terminology"]["type"] == ["SCT", "78961009", "Spleen"]
    assert [s["transform"] for s in manifest["monai"]["preprocessing"]] == [
        "Orientationd", "Spacingd", "ScaleIntensityRanged", "CropForegroundd"]
    assert "Apache License" in (out / "README.md").read_text()

    started = time.perf_counter()
    ours, probs = mp.segment_bundle_package(package, [str(path)], return_probabilities=True)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    ref_labels, ref_probs = monai_reference(root, {"image": str(path)})
    print(f"{geometry}: TumorSeg {ours_s:.2f} s, MONAI {time.perf_counter() - started:.2f} s")
    _check_agreement(ours, probs, ref_labels, ref_probs, sitk.ReadImage(str(path)), (0, 1))
    assert 0.001 < (ref_labels == 1).mean() < 0.999  # both labels present: the comparison means something

    # Every door runs the same pipeline: `tumorseg import` + `tumorseg segment` write the same labels.
    from tumorseg_core.cli import main

    assert main(["import", str(root), "-o", str(tmp_path / "cli_pkg")]) == 0
    assert main(["segment", str(path), "--model", str(tmp_path / "cli_pkg"), "-o", str(tmp_path / "cli.nii.gz")]) == 0
    written = sitk.ReadImage(str(tmp_path / "cli.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(ours))
    # the same grid, up to NIfTI's float32 storage of the written file's header
    assert written.GetSize() == ours.GetSize()
    assert np.allclose(written.GetDirection(), ours.GetDirection(), atol=1e-6)
    assert np.allclose(written.GetOrigin(), ours.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetSpacing(), ours.GetSpacing(), atol=1e-6)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_brats_like_sigmoid_bundle_matches_monai(tmp_path, monkeypatch, geometry):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    root = _bundle(tmp_path, SMALL_BRATS, BRATS_META, seed=12, bias=-0.7)
    paths = []
    for c in range(4):
        path = tmp_path / f"mr{c}.nii.gz"
        sitk.WriteImage(_image(_phantom(10 + c, ct=False), GEOMETRIES[geometry]), str(path))
        paths.append(str(path))
    package = open_package(monai_import.import_bundle(root, tmp_path / "pkg"))
    regions = package.manifest.to_dict()["output"]["regions"]
    assert [(r["value"], r["name"]) for r in regions] == [(1, "Tumor core"), (2, "Whole tumor"), (4, "Enhancing tumor")]
    assert package.manifest.to_dict()["orientation"] is None
    ours, probs = mp.segment_bundle_package(package, paths, return_probabilities=True)
    ref_labels, ref_probs = monai_reference(root, {"image": paths})
    _check_agreement(ours, probs, ref_labels, ref_probs, sitk.ReadImage(paths[0]), (0, 1, 2, 4))
    assert len(set(np.unique(ref_labels)) & {0, 1, 2, 4}) >= 3  # background and two regions at least


# ---------------------------------------------------------------- pieces and the section


def test_monai_grid_pieces_match_monai():
    from monai.data.utils import compute_shape_offset, dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    grid = mp.Grid((40, 36, 20), (1.2, 1.3, 2.6), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    new = mp.spacing_grid(grid, (1.5, 1.5, 2.0))
    affine, new_affine = np.diag([1.2, 1.3, 2.6, 1.0]), np.diag([1.5, 1.5, 2.0, 1.0])
    shape, offset = compute_shape_offset((40, 36, 20), affine, new_affine)
    assert new.size == tuple(int(s) for s in shape) and np.allclose(offset, 0)
    for dim, roi, overlap in [(31, 32, 0.5), (57, 32, 0.5), (100, 96, 0.25), (33, 10, 0.7), (26, 16, 0.5)]:
        size = (max(dim, roi),)
        interval = _get_scan_interval(size, (roi,), 1, (overlap,))
        expected = [s[0].start for s in dense_patch_slices(size, (roi,), interval)]
        assert mp.scan_starts(size[0], roi, overlap) == expected


def test_gaussian_importance_map_matches_monai():
    from monai.data.utils import compute_importance_map

    ours = mp.importance_map((16, 32, 24), "gaussian", (0.125, 0.2, 0.125))
    theirs = compute_importance_map((16, 32, 24), mode="gaussian", sigma_scale=(0.125, 0.2, 0.125))
    torch.testing.assert_close(ours, theirs.float())


def test_section_round_trip_and_refusals(tmp_path):
    root = write_bundle(tmp_path / "b", SMALL_SPLEEN, SPLEEN_META, {"w": torch.zeros(1)})
    from tumorseg_core.modelpkg.monai_bundle import read_bundle

    section = monai_import.bundle_section(read_bundle(root))
    checked = check_monai_section(section, 1, 2)
    assert checked.activation == "softmax" and checked.inferer.roi_size == tuple(ROI)
    assert checked.step("Spacingd")["pixdim"] == (1.5, 1.5, 2.0)
    json.dumps(section)

    def bad(mutate, match):
        broken = copy.deepcopy(section)
        mutate(broken)
        with pytest.raises(ModelPackageError, match=match):
            check_monai_section(broken, 1, 2)

    bad(lambda s: s["preprocessing"].append({"transform": "RandFlipd"}), r"monai\.preprocessing\[4\]\.transform")
    bad(lambda s: s["preprocessing"][1].update(pixdim=[1, -1, 1]), r"monai\.preprocessing\[1\]\.pixdim")
    bad(lambda s: s["preprocessing"][2].update(groups=[[3]]), r"monai\.preprocessing\[2\]\.groups\[0\]")
    bad(lambda s: s["preprocessing"][0].update(axcodes="RRS"), r"monai\.preprocessing\[0\]\.axcodes")
    bad(lambda s: s["preprocessing"][3].pop("margin"), r"monai\.preprocessing\[3\]\.margin' is missing")
    bad(lambda s: s["inferer"].update(overlap=1.0), r"monai\.inferer\.overlap")
    bad(lambda s: s["inferer"].update(extra=1), r"monai\.inferer\.extra")
    bad(lambda s: s["postprocessing"].insert(0, s["postprocessing"].pop(2)), r"Activationsd before AsDiscreted")
    bad(lambda s: s["postprocessing"][2].update(threshold=0.5), r"monai\.postprocessing\[2\]\.threshold")
    bad(lambda s: s.update(evil="$x"), r"monai\.evil")


def test_bundle_without_invertd_is_refused(tmp_path):
    config = copy.deepcopy(SMALL_SPLEEN)
    config["postprocessing"]["transforms"] = [t for t in config["postprocessing"]["transforms"]
                                              if t["_target_"] != "Invertd"]
    root = write_bundle(tmp_path / "b", config, SPLEEN_META, {"w": torch.zeros(1)})
    from tumorseg_core.modelpkg.monai_bundle import read_bundle

    with pytest.raises(ModelPackageError, match="no Invertd"):
        monai_import.bundle_section(read_bundle(root))
