"""``tumorseg import`` of nnU-Net v2 models, checked against nnU-Net's own predictor.

The fixtures are made by nnunetv2 itself (``nnunet_fixture.py``: raw dataset, fingerprint,
plans, preprocessing, nnU-Net's trainer with seeded perturbed weights saved by its own
``save_checkpoint``), once per session. Test inputs have another spacing than the training
data (so both resamplings run, with nnU-Net's separate-z rule) and an oblique direction.
Skipped only where nnunetv2 (test-only, requirements-dev.txt) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None,
                                reason="nnunetv2 (test-only dependency) is not installed")

sys.path.insert(0, str(Path(__file__).parent))
import nnunet_fixture as fixture  # noqa: E402

from tumorseg_core.errors import ModelPackageError  # noqa: E402

MIN_DICE = 0.99
MAX_PROB_DIFF = 1e-3  # exported backends; the default path (torch) is checked at 1e-5


@pytest.fixture(scope="session")
def nnunet(tmp_path_factory):
    """Two nnU-Net models made by nnU-Net: 901 (1 channel, softmax, folds 0 and 1) and
    902 (2 channels, region-based sigmoid, fold 0)."""
    root = tmp_path_factory.mktemp("nnunet")
    saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                            "nnUNet_n_proc_DA", "nnUNet_def_n_proc")}
    fixture.set_nnunet_env(root)
    try:
        models = {
            "softmax": fixture.build_model(root, 901, "Tiny", folds=(0, 1)),
            "regions": fixture.build_model(root, 902, "TinyRegions", channels=2, regions=True, folds=(0,)),
        }
        yield root, models
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _case(channels=1, seed=7, spacing=(0.7, 0.9, 3.4)):
    images, _ = fixture.make_case(seed, (40, 48, 14), spacing, direction=fixture.OBLIQUE, channels=channels)
    return images


def _dice(a, b, value):
    a, b = a == value, b == value
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


def _compare(package, model_folder, images, folds, tmp, values, backend="auto", max_diff=None):
    """TumorSeg's default path (nnU-Net's own arithmetic, in torch) or an exported backend vs nnUNetPredictor."""
    from tumorseg_core.inference.segmenter import Segmenter

    ref_labels, ref_probs = fixture.reference_prediction(model_folder, images, folds, tmp)
    # Both read the same files: a NIfTI header rounds spacings to float32, which can move nnU-Net's
    # rounded resampled shape (e.g. 38.5 voxels) by one.
    files = [str(tmp / f"input_{c:04d}.nii.gz") for c in range(len(images))]
    segmenter = Segmenter(str(package), "cpu", backend=backend)
    probs, first = segmenter.probabilities(files)
    labels = segmenter.segment(files)
    for key in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(labels, key)() == getattr(first, key)(), key
    ours = sitk.GetArrayFromImage(labels)
    assert probs.shape == ref_probs.shape
    diff = float(np.abs(probs - ref_probs).max())
    dice = {v: _dice(ours, ref_labels, v) for v in values}
    print(f"{backend}: max probability difference {diff:.2e}, Dice {dice}")
    if max_diff is None:
        max_diff = 1e-5 if backend in ("auto", "torch") else MAX_PROB_DIFF
    assert diff <= max_diff
    for value in values:
        assert (ref_labels == value).sum() > 20, f"the fixture predicts too little of label {value}"
        assert dice[value] >= MIN_DICE, (value, dice)
    return diff, dice


def test_single_fold_matches_nnunet_predictor(nnunet, tmp_path):
    from tumorseg_core.modelpkg.convert import import_model, source_kind

    _, models = nnunet
    assert source_kind(models["softmax"]) == "nnunet"
    package = import_model(models["softmax"], tmp_path / "pkg", folds=[0])
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["format_version"] == 5 and manifest["architecture"] == "nnunet_plainconv"  # 5: aliases dropped
    assert [lab["name"] for lab in manifest["output"]["labels"]] == ["tumor", "core"]
    assert manifest["nnunet"]["mirror_axes"] == [0, 1, 2]
    assert manifest["nnunet"]["normalization"][0]["use_mask_for_norm"] is True
    assert sorted(p.name for p in package.iterdir()) == ["README.md", "fold0.safetensors", "manifest.json"]
    # anisotropic input at another spacing (separate-z both ways) and a near-isotropic one
    _compare(package, models["softmax"], _case(), [0], tmp_path / "ref_a", (1, 2))
    _compare(package, models["softmax"], _case(seed=8, spacing=(1.1, 1.0, 1.6)), [0], tmp_path / "ref_b", (1, 2))
    # The opt-in exported backend (OpenVINO) keeps nnU-Net's mirroring and accumulation around its windows.
    _compare(package, models["softmax"], _case(), [0], tmp_path / "ref_c", (1, 2), backend="openvino")


def test_two_fold_ensemble_matches_nnunet_predictor(nnunet, tmp_path):
    from tumorseg_core.modelpkg.convert import import_model

    _, models = nnunet
    package = import_model(models["softmax"], tmp_path / "pkg")  # all folds: 0 and 1
    assert (package / "fold1.safetensors").is_file()
    _compare(package, models["softmax"], _case(seed=9), [0, 1], tmp_path / "ref", (1, 2))


def test_slab_wise_windows_match_nnunet_predictor(nnunet, tmp_path, monkeypatch):
    """The default path's memory saver (``slab_forward.py``) forced onto every layer of the
    fixtures' small windows, in one-row slabs: still nnUNetPredictor's result.

    Its instance norm sums in another order (logits within ~5e-6), which can move a window's
    float16 accumulation by one float16 step, so probabilities agree to the issue's 1e-3,
    not to the 1e-5 of the unchanged arithmetic."""
    from tumorseg_core.inference import slab_forward
    from tumorseg_core.modelpkg.convert import import_model

    monkeypatch.setattr(slab_forward, "LARGE_BYTES", 0)
    monkeypatch.setattr(slab_forward, "SLAB_BYTES", 1)
    monkeypatch.setattr(slab_forward, "MIN_ROWS", 1)
    calls = []
    original = slab_forward.slabs
    monkeypatch.setattr(slab_forward, "slabs", lambda shape, in_shape=None: calls.append(shape) or original(shape, in_shape))
    _, models = nnunet
    package = import_model(models["softmax"], tmp_path / "pkg", folds=[0])
    _compare(package, models["softmax"], _case(), [0], tmp_path / "ref", (1, 2), max_diff=MAX_PROB_DIFF)
    assert calls, "the slab-wise path did not run"


def test_2d_configuration_matches_nnunet_predictor(nnunet, tmp_path):
    """nnU-Net's ``2d`` configuration (planned and trained by nnU-Net in the same root): every
    slice of the first axis through the 2D U-Net, 2D mirroring, against nnUNetPredictor."""
    from tumorseg_core.modelpkg.convert import import_model

    root, _ = nnunet
    folder = fixture.build_model(root, 905, "Tiny2d", configuration="2d")  # 905: its perturbed weights predict both labels
    package = import_model(folder, tmp_path / "pkg")
    manifest = json.loads((package / "manifest.json").read_text())
    assert len(manifest["nnunet"]["patch_size"]) == 2
    assert manifest["kwargs"]["conv_op"].endswith("Conv2d")
    _compare(package, folder, _case(), [0], tmp_path / "ref", (1, 2))


def test_3d_lowres_configuration_matches_nnunet_predictor(nnunet, tmp_path):
    """A ``3d_lowres`` configuration (twice the in-plane spacing, so nnU-Net's resampling takes
    its not-separate-z branch where 3d_fullres takes the separate-z one), preprocessed and
    trained by nnU-Net, against nnUNetPredictor."""
    from tumorseg_core.modelpkg.convert import import_model

    root, _ = nnunet
    folder = fixture.build_model(root, 906, "TinyLow", configuration="3d_lowres")  # 906: predicts both labels
    package = import_model(folder, tmp_path / "pkg")
    manifest = json.loads((package / "manifest.json").read_text())
    fullres = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]["spacing"]
    assert manifest["nnunet"]["spacing"][1] == pytest.approx(2 * fullres[1])
    _compare(package, folder, _case(), [0], tmp_path / "ref", (1, 2))


def test_region_based_two_channel_model_matches(nnunet, tmp_path):
    from tumorseg_core.modelpkg.convert import import_model

    _, models = nnunet
    package = import_model(models["regions"], tmp_path / "pkg", name="regions-model")
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["output"]["type"] == "sigmoid"
    assert [r["name"] for r in manifest["output"]["regions"]] == ["whole tumor", "tumor core"]
    assert manifest["nnunet"]["regions_class_order"] == [1, 2]
    assert [i["modality"] for i in manifest["inputs"]] == ["T1", "FLAIR"]
    _compare(package, models["regions"], _case(channels=2), [0], tmp_path / "ref", (1, 2))


def test_exported_zip_imports_and_traversal_zip_is_refused(nnunet, tmp_path):
    from tumorseg_core.modelpkg.convert import import_model, source_kind

    _, models = nnunet
    folder = models["softmax"]
    good = tmp_path / "export.zip"
    with zipfile.ZipFile(good, "w") as zf:  # the layout nnUNetv2_export_model_to_zip writes
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "fold_1" not in path.parts:
                zf.write(path, f"{folder.parent.name}/{folder.name}/{path.relative_to(folder)}")
    assert source_kind(good) == "nnunet"
    package = import_model(good, tmp_path / "from_zip")
    assert (package / "fold0.safetensors").is_file() and not (package / "fold1.safetensors").exists()

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("../escaped.txt", "x")
    with pytest.raises(ModelPackageError, match="unsafe entry"):
        import_model(evil, tmp_path / "evil_pkg")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "evil_pkg").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy_model(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder.parent, dest)
    return dest / folder.name


def test_postprocessing_pkl_is_never_unpickled(nnunet, tmp_path, caplog):
    import pickle

    from tumorseg_core.modelpkg.convert import import_model

    _, models = nnunet
    model = _copy_model(models["softmax"], tmp_path / "model")
    marker = tmp_path / "pkl_ran"
    (model / "postprocessing.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (model / "crossval_results_folds_0_1").mkdir()
    (model / "crossval_results_folds_0_1" / "postprocessing.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with caplog.at_level("WARNING"):
        import_model(model, tmp_path / "pkg", folds=[0])
    assert not marker.exists()
    assert "postprocessing.pkl" in caplog.text and "never unpickles" in caplog.text


def test_checkpoint_with_pickle_payload_is_refused_by_the_cli(nnunet, tmp_path):
    import torch

    _, models = nnunet
    model = _copy_model(models["softmax"], tmp_path / "model")
    marker = tmp_path / "ckpt_ran"
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own fixture file
    state["trainer_name"] = _Payload(marker)
    torch.save(state, checkpoint)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, "-m", "tumorseg_core", "import", str(model), "-o", str(tmp_path / "pkg"),
                           "--folds", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr and "system" in proc.stderr
    assert not marker.exists() and not (tmp_path / "pkg").exists()


def test_cli_imports_folder_with_folds_and_checkpoint(nnunet, tmp_path):
    _, models = nnunet
    out = tmp_path / "cli_pkg"
    proc = subprocess.run([sys.executable, "-m", "tumorseg_core", "import", str(models["softmax"]), "-o", str(out),
                           "--folds", "0,1", "--checkpoint", "final", "--name", "tiny-nnunet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "tiny-nnunet" and len([f for f in manifest["files"] if f.endswith(".safetensors")]) == 2
    proc = subprocess.run([sys.executable, "-m", "tumorseg_core", "import", str(models["softmax"]), "-o",
                           str(tmp_path / "best"), "--checkpoint", "best"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "checkpoint_best.pth" in proc.stderr


def test_preprocessing_matches_nnunet_preprocessor(nnunet):
    """TumorSeg's preprocessing equals nnU-Net's DefaultPreprocessor on the same case."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from tumorseg_core.imaging import nnunet_preprocess
    from tumorseg_core.modelpkg.manifest import NNUNET_NORMALIZATIONS

    assert NNUNET_NORMALIZATIONS == nnunet_preprocess.NORMALIZATION_SCHEMES
    _, models = nnunet
    folder = models["regions"]
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    images = _case(channels=2)
    data = np.stack([sitk.GetArrayFromImage(i) for i in images]).astype(np.float32)
    props = {"spacing": list(images[0].GetSpacing()[::-1])}
    ref, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(data.copy(), None, dict(props), manager, config, dataset)
    section = {
        "transpose_forward": manager.transpose_forward, "transpose_backward": manager.transpose_backward,
        "spacing": list(config.spacing),
        "normalization": [{"scheme": s, "use_mask_for_norm": m,
                           "intensity_properties": plans["foreground_intensity_properties_per_channel"][str(c)]}
                          for c, (s, m) in enumerate(zip(config.normalization_schemes, config.use_mask_for_norm))],
        "resampling_data": {"order": 3, "order_z": 0, "force_separate_z": None}, "anisotropy_threshold": 3.0,
    }
    ours, _ = nnunet_preprocess.preprocess(data, props["spacing"], section)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("shape,new_shape,spacing,new_spacing", [
    ((2, 9, 20, 17), (2, 13, 31, 12), (1.0, 1.0, 1.0), (0.7, 0.65, 1.4)),  # no separate z
    ((1, 7, 20, 17), (1, 15, 26, 23), (3.5, 0.8, 0.8), (1.6, 0.62, 0.6)),  # separate z (current spacing)
    ((1, 20, 8, 17), (1, 26, 8, 23), (0.8, 3.3, 0.8), (0.62, 3.3, 0.6)),   # anisotropic axis 1, kept
])
def test_resampling_matches_nnunet(shape, new_shape, spacing, new_spacing):
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from tumorseg_core.imaging import nnunet_preprocess

    rng = np.random.default_rng(0)
    data = rng.normal(size=shape).astype(np.float32)
    for order, dtype in ((3, np.float32), (1, np.float16)):
        x = data.astype(dtype)
        ref = resample_data_or_seg_to_shape(x, new_shape[1:], spacing, new_spacing, False, order, 0, None)
        ours = nnunet_preprocess.resample_to_shape(x, new_shape[1:], spacing, new_spacing, order, 0, None)
        assert ours.dtype == ref.dtype and ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)


def test_windows_match_nnunet():
    import torch
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )

    from tumorseg_core.inference import nnunet_windows

    for size, tile in (((40, 110, 64), (12, 64, 64)), ((12, 28, 24), (12, 28, 24)), ((5, 99), (4, 32))):
        assert nnunet_windows.compute_steps(size, tile, 0.5) == compute_steps_for_sliding_window(size, tile, 0.5)
    ours = nnunet_windows.gaussian((12, 28, 24))
    ref = compute_gaussian((12, 28, 24), 1.0 / 8, 10, device=torch.device("cpu"))
    assert torch.equal(ours, ref)


def test_windows_on_a_named_device_give_the_same_logits(nnunet, tmp_path):
    """The GPU path's plumbing (each window sent to ``device``, predictions brought back, sums on
    the CPU), run with the CPU as that device: identical logits. CI has no GPU; on CUDA the
    network also runs under autocast, as nnUNetPredictor runs it."""
    import torch

    from tumorseg_core.inference import nnunet_windows
    from tumorseg_core.modelpkg.convert import import_model
    from tumorseg_core.modelpkg.package import open_package

    _, models = nnunet
    package = open_package(import_model(models["softmax"], tmp_path / "pkg", folds=[0]))
    section = package.manifest.nnunet
    networks = package.load_networks()
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, *[p + 5 for p in section["patch_size"]])).astype(np.float32)
    args = (networks, data, section["patch_size"], 3, section["mirror_axes"])
    plain = nnunet_windows.ensemble_logits(*args)
    on_device = nnunet_windows.ensemble_logits(*args, device=torch.device("cpu"))
    assert on_device.dtype == np.float16
    np.testing.assert_array_equal(plain, on_device)


def test_cancel_and_progress_between_mirror_passes(nnunet, tmp_path):
    """A cancel is noticed after the forward pass that is running, not after the window's eight
    mirrored passes (a 128³ window of nnU-Net's default plan is ~11 s per pass on 2 cores);
    progress moves per pass and ends at 1."""
    from tumorseg_core.errors import CancelledError
    from tumorseg_core.inference import nnunet_windows
    from tumorseg_core.modelpkg.convert import import_model
    from tumorseg_core.modelpkg.package import open_package

    _, models = nnunet
    package = open_package(import_model(models["softmax"], tmp_path / "pkg", folds=[0]))
    section = package.manifest.nnunet
    network = package.load_networks()[0]
    calls = []

    def counted(x):
        calls.append(tuple(x.shape))
        return network(x)

    counted.eval = lambda: counted
    data = np.zeros((1, *section["patch_size"]), dtype=np.float32)
    args = ([counted], data, section["patch_size"], 3, section["mirror_axes"])
    with pytest.raises(CancelledError):
        nnunet_windows.ensemble_logits(*args, cancel=lambda: len(calls) >= 2)
    assert len(calls) == 2  # of 8
    calls.clear()
    seen = []
    nnunet_windows.ensemble_logits(*args, progress=lambda f, text: seen.append((f, text)))
    assert len(calls) == len(seen) == 8
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1] == (1.0, "window 1/1")


def test_bad_plans_are_refused(nnunet, tmp_path):
    from tumorseg_core.modelpkg.convert import import_model

    _, models = nnunet
    model = _copy_model(models["softmax"], tmp_path / "model")
    plans = json.loads((model / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["arch_kwargs"]["nonlin"] = "os.system"
    (model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelPackageError, match="os.system"):
        import_model(model, tmp_path / "pkg1", folds=[0])
    arch["arch_kwargs"]["nonlin"] = "torch.nn.LeakyReLU"
    arch["network_class_name"] = "evil.module.Net"
    (model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelPackageError, match="evil.module.Net"):
        import_model(model, tmp_path / "pkg2", folds=[0])


def test_compute_bound_benchmark_counts_the_windows_flops(nnunet, tmp_path):
    """benchmarks/compute_bound.py on an nnU-Net model (smoke, no timing): its FLOP count is the convolutions' own
    multiply-adds (counted here from the layers' shapes) and its window count nnU-Net's for the case."""
    import torch

    from tumorseg_core.imaging import nnunet_preprocess
    from tumorseg_core.inference.nnunet_pipeline import case_arrays
    from tumorseg_core.modelpkg.convert import import_model
    from tumorseg_core.modelpkg.package import open_package

    _, models = nnunet
    package = import_model(models["softmax"], tmp_path / "pkg", folds=[0])
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "compute_bound.py"
    spec = importlib.util.spec_from_file_location("bench_compute_bound", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    images = _case()
    case = tmp_path / "case.nii.gz"
    sitk.WriteImage(images[0], str(case))
    result = bench.measure(str(package), case, mirror=True, baseline_seconds=10.0, repeats=1)

    network = open_package(package).load_networks(torch.device("cpu"))[0].eval()
    patch = result["patch_zyx"]
    macs, hooks = [], []
    for module in network.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            def hook(mod, inp, out):
                spatial = out.shape[2:].numel() if isinstance(mod, torch.nn.Conv3d) else inp[0].shape[2:].numel()
                macs.append(mod.in_channels * mod.out_channels * np.prod(mod.kernel_size) * spatial)
            hooks.append(module.register_forward_hook(hook))
    with torch.inference_mode():
        network(torch.zeros(1, 1, *patch))
    assert result["flops_per_window"] == 2 * sum(macs) > 0
    data, _ = nnunet_preprocess.preprocess(*case_arrays(images), open_package(package).manifest.nnunet)
    assert result["grid_zyx"] == list(data.shape[1:]) and result["as_run"] == "torch, slab-wise"
    assert result["forward_passes"] == result["windows"] * 8 >= 8  # mirroring on three axes
    assert result["forward_floor_s"] > 0 and 0 < result["efficiency_vs_peak"] <= 1.5
    peak = max(result["gflops_matmul_4096"], result["gflops_best_conv_layer"]) * 1e9
    floor = result["forward_passes"] * result["flops_per_window"] / peak
    assert result["max_speedup_vs_baseline"] == pytest.approx(10.0 / floor, rel=0.01)
