"""MONAI bundles read as data: BundleSpec, rebuilt networks against MONAI's own, refusals.

The configs copy the MONAI Model Zoo's ``inference.json`` of ``spleen_ct_segmentation``
(0.5.9) and ``brats_mri_segmentation`` (0.5.2) verbatim (Project-MONAI/model-zoo, commit
dfae206d), ``$`` expressions in the parts TumorSeg never reads included; the weights are
random (BatchNorm running statistics too) and saved with ``torch.save(net.state_dict())``.
MONAI's ``ConfigParser`` builds the reference network from the same config: the test is the
reference, so it may evaluate the config; the code under test never does.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tumorseg_core.errors import ModelPackageError
from tumorseg_core.modelpkg import monai_bundle as mb
from tumorseg_core.modelpkg.monai_config import BundleConfig
from tumorseg_core.models import monai_zoo, registry

IMPORTS = {"imports": ["$import glob", "$import numpy", "$import os"], "bundle_root": ".", "image_key": "image"}
RUN = {  # the zoo's evaluator wiring: never read by TumorSeg
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network": "$@network_def.to(@device)",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                   "num_workers": 4},
    "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                  "val_handlers": "@handlers", "amp": True},
    "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                         "load_dict": {"model": "@network"}},
    "initialize": ["$monai.utils.set_determinism(seed=123)",
                   "$@checkpointloader(@evaluator) if @load_pretrain else None"],
    "run": ["$@evaluator.run()"],
}
SAVE = {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": ".nii.gz",
        "output_dtype": "$numpy.float32", "output_postfix": "trans", "separate_folder": True}

SPLEEN = {
    **IMPORTS,
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "load_pretrain": True,
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                    "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"},
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key"},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -57, "a_max": 164, "b_min": 0,
         "b_max": 1, "clip": True},
        {"_target_": "CropForegroundd", "keys": "@image_key", "source_key": "@image_key", "margin": 4},
        {"_target_": "EnsureTyped", "keys": "@image_key"},
    ]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        SAVE,
    ]},
    **RUN,
}
SPLEEN_META = {
    "version": "0.5.9", "monai_version": "1.4.0", "name": "Spleen CT segmentation",
    "description": "A pre-trained model for volumetric (3D) segmentation of the spleen from CT image",
    "authors": "MONAI team", "copyright": "Copyright (c) MONAI Consortium",
    "intended_use": "This is an example, not to be used for diagnostic purposes",
    "references": ["Xia, Yingda, et al. '3D Semi-Supervised Learning with Uncertainty-Aware Multi-View Co-Training."],
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                             "spatial_shape": [96, 96, 96], "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "channel_def": {"0": "background", "1": "spleen"}}},
    },
}
BRATS = {
    **IMPORTS,
    "data_list_file_path": "$@bundle_root + '/configs/datalist.json'",
    "test_datalist": "$monai.data.load_decathlon_datalist(@data_list_file_path, data_list_key='testing')",
    "network_def": {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16,
                    "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2},
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key", "image_only": False},
        {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True, "channel_wise": True},
    ]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [240, 240, 160], "sw_batch_size": 1, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
         "meta_keys": "pred_meta_dict", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        {"_target_": "Lambdad", "keys": "pred",
         "func": "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))"},
        {**SAVE, "meta_keys": "pred_meta_dict", "resample": False, "squeeze_end_dims": True},
    ]},
    **RUN,
}
BRATS_META = {
    "version": "0.5.2", "name": "BraTS MRI segmentation",
    "references": ["Myronenko, Andriy. '3D MRI brain tumor segmentation using autoencoder regularization.'"],
    "network_data_format": {
        "inputs": {"image": {"modality": "MR", "num_channels": 4,
                             "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
        "outputs": {"pred": {"num_channels": 3,
                             "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}},
    },
}
LICENSE = "Apache License\nVersion 2.0, January 2004\n"


def monai_net(config: dict) -> torch.nn.Module:
    """The reference: MONAI's ConfigParser instantiating network_def (it evaluates the config)."""
    from monai.bundle import ConfigParser

    return ConfigParser(copy.deepcopy(config)).get_parsed_content("network_def").eval()


def random_state(net: torch.nn.Module, seed: int) -> dict:
    """Random weights, and random BatchNorm statistics so that ignoring them shows."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif value.is_floating_point():
            state[key] = 0.2 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = value.clone()
    return state


def write_bundle(root: Path, config: dict, meta: dict, state=None, *, yaml_config=False) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    if yaml_config:
        import yaml

        (root / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    else:
        (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    (root / "LICENSE").write_text(LICENSE)
    if state is not None:
        torch.save(state, root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def spleen_state():
    return random_state(monai_net(SPLEEN), seed=1)


@pytest.fixture(scope="module")
def brats_state():
    return random_state(monai_net(BRATS), seed=2)


def same_output(ours: torch.nn.Module, theirs: torch.nn.Module, x_monai: torch.Tensor) -> None:
    """Ours takes (B, C, z, y, x) = MONAI's tensor with its spatial axes reversed."""
    with torch.no_grad():
        expected = theirs(x_monai)
        got = ours(x_monai.permute(0, 1, 4, 3, 2)).permute(0, 1, 4, 3, 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- zoo configs into BundleSpec


def test_spleen_bundle_spec(tmp_path, spleen_state):
    spec = mb.read_bundle(write_bundle(tmp_path / "spleen", SPLEEN, SPLEEN_META, spleen_state))
    assert (spec.network, spec.network_target) == ("monai_unet", "UNet")
    assert spec.network_kwargs == {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                   "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
                                   "num_res_units": 2, "norm": "batch"}
    assert spec.input_channels == (mb.InputChannel(0, "image", "image"),) and spec.modality == "CT"
    assert spec.ensure_channel_first and spec.orientation == "RAS"
    assert spec.spacing == mb.Spacing(("image",), (1.5, 1.5, 2.0), "bilinear", "border", False, "float64")
    assert spec.intensity == (mb.ScaleIntensityRange(("image",), -57.0, 164.0, 0.0, 1.0, True),)
    assert spec.crop_foreground == mb.CropForeground(("image",), "image", (4, 4, 4), False, (1, 1, 1))
    assert [s.transform for s in spec.preprocessing] == [
        "LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd", "ScaleIntensityRanged", "CropForegroundd"]
    assert spec.inferer == mb.InfererSpec("sliding_window", (96, 96, 96), 4, 0.5, "constant", 0.125, "constant", 0.0)
    assert spec.postprocessing == (
        mb.Activations(("pred",), softmax=True), mb.Invert(("pred",), "image", nearest_interp=False),
        mb.AsDiscrete(("pred",), argmax=True))
    assert (spec.activation, spec.output_type) == ("softmax", "labels")
    assert [c.name for c in spec.output_channels] == ["background", "spleen"]
    assert spec.license_text == LICENSE and spec.references[0].startswith("Xia") and spec.version == "0.5.9"
    assert spec.name == "Spleen CT segmentation" and spec.weights_file == "models/model.pt"
    assert any("SaveImaged" in i for i in spec.ignored)
    assert json.loads(json.dumps(spec.to_dict()))["preprocessing"][3]["pixdim"] == [1.5, 1.5, 2.0]
    assert monai_zoo.size_divisor(spec.network, spec.network_kwargs) == (16, 16, 16)


def test_brats_bundle_spec(tmp_path, brats_state):
    spec = mb.read_bundle(write_bundle(tmp_path / "brats", BRATS, BRATS_META, brats_state))
    assert spec.network == "monai_segresnet" and spec.network_kwargs["init_filters"] == 16
    assert [(c.name, c.key) for c in spec.input_channels] == [
        ("T1c", "image"), ("T1", "image"), ("T2", "image"), ("FLAIR", "image")]
    assert spec.orientation is None and spec.spacing is None and spec.crop_foreground is None
    assert not spec.ensure_channel_first  # a list of files under one key is already channel-first
    assert spec.intensity == (mb.NormalizeIntensity(("image",), nonzero=True, channel_wise=True),)
    assert spec.inferer.roi_size == (240, 240, 160) and spec.inferer.sw_batch_size == 1
    assert (spec.activation, spec.output_type) == ("sigmoid", "regions")
    assert spec.postprocessing[2] == mb.AsDiscrete(("pred",), threshold=0.5)
    assert spec.postprocessing[3] == mb.RegionsToLabels(("pred",), ((2, 4), (0, 1), (1, 2)))
    assert [c.name for c in spec.output_channels] == ["Tumor core", "Whole tumor", "Enhancing tumor"]


# ---------------------------------------------------------------- networks against MONAI's own


def test_spleen_network_loads_strictly_and_matches_monai(tmp_path, spleen_state):
    spec = mb.read_bundle(write_bundle(tmp_path / "spleen", SPLEEN, SPLEEN_META, spleen_state))
    ours, state = mb.load_bundle_weights(spec)
    assert not ours.training and state.keys() == spleen_state.keys()
    assert ours.state_dict().keys() == monai_net(SPLEEN).state_dict().keys()  # MONAI's keys exactly
    bn = next(k for k in state if k.endswith("running_mean"))
    torch.testing.assert_close(ours.state_dict()[bn], spleen_state[bn], rtol=0, atol=0)
    theirs = monai_net(SPLEEN)
    theirs.load_state_dict(spleen_state, strict=True)
    x = torch.randn(1, 1, 32, 48, 64, generator=torch.Generator().manual_seed(0))  # MONAI's (i, j, k)
    same_output(ours, theirs, x)
    # The statistics matter: a fresh BatchNorm gives another output.
    fresh = monai_net(SPLEEN)
    fresh.load_state_dict({k: v for k, v in spleen_state.items() if "running" not in k}, strict=False)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), theirs(x), atol=1e-3)
    # ... so weights without them are refused.
    torch.save({k: v for k, v in spleen_state.items() if "running" not in k}, tmp_path / "spleen/models/model.pt")
    with pytest.raises(ModelPackageError, match="missing key"):
        mb.load_bundle_weights(spec)


def test_brats_network_matches_monai_and_bundle_zip(tmp_path, brats_state, monkeypatch):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    folder = write_bundle(tmp_path / "brats_mri_segmentation", BRATS, BRATS_META, brats_state)
    archive = tmp_path / "brats.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tmp_path).as_posix())  # one top folder, as the zoo ships it
    spec, ours = mb.open_bundle(archive)
    assert Path(spec.root).is_relative_to(tmp_path / "cache") and spec.in_channels == 4
    theirs = monai_net(BRATS)
    theirs.load_state_dict(brats_state, strict=True)
    same_output(ours, theirs, torch.randn(1, 4, 16, 24, 32, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("target,kwargs,shape", [
    ("SwinUNETR", {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "feature_size": 12}, (1, 1, 32, 32, 64)),
    ("BasicUNet", {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "features": [4, 4, 8, 8, 16, 4]},
     (1, 2, 16, 32, 48)),
    ("monai.networks.nets.UNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 8],
                                  "strides": [2, [2, 2, 1]], "num_res_units": 1}, (1, 1, 16, 12, 8)),
])
def test_other_zoo_networks_match_monai(tmp_path, target, kwargs, shape):
    config = {**copy.deepcopy(SPLEEN), "network_def": {"_target_": target, **kwargs}}
    meta = copy.deepcopy(SPLEEN_META)
    meta["network_data_format"]["inputs"]["image"].update(num_channels=kwargs["in_channels"], channel_def={})
    meta["network_data_format"]["outputs"]["pred"].update(num_channels=kwargs["out_channels"], channel_def={})
    theirs = monai_net(config)
    state = random_state(theirs, seed=3)
    theirs.load_state_dict(state)
    spec, ours = mb.open_bundle(write_bundle(tmp_path / "b", config, meta, state))
    same_output(ours, theirs, torch.randn(*shape, generator=torch.Generator().manual_seed(2)))
    divisor = monai_zoo.size_divisor(spec.network, spec.network_kwargs)
    if target.endswith("UNet") and "strides" in kwargs:
        assert divisor == (2, 4, 4)  # (z, y, x) = MONAI's (k, j, i)


def test_swinunetr_img_size_of_older_bundles_is_accepted(tmp_path):
    """swin_unetr_btcv_segmentation passes img_size=96, which MONAI >= 1.5 no longer takes."""
    kwargs = {"spatial_dims": 3, "img_size": 96, "in_channels": 1, "out_channels": 14, "feature_size": 48,
              "use_checkpoint": False}
    net = monai_zoo.build_network("monai_swinunetr", kwargs)
    assert net.state_dict().keys() == monai_net({"network_def": {
        "_target_": "SwinUNETR", **{k: v for k, v in kwargs.items() if k != "img_size"}}}).state_dict().keys()
    with pytest.raises(ModelPackageError, match="img_size"):
        monai_zoo.build_network("monai_swinunetr", {**kwargs, "img_size": 100})


def test_monai_zoo_entries_fit_the_registry():
    """Registering them is ``ARCHITECTURES.update({n: ArchitectureSpec(*e) ...})``."""
    for entry in monai_zoo.MONAI_ZOO_ARCHITECTURES.values():
        spec = registry.ArchitectureSpec(*entry)
        assert spec.spatial_dims == 3 and spec.description and len(spec.size_divisor({})) == 3
    with pytest.raises(ModelPackageError, match="takes no kwarg 'norm_layer'"):
        monai_zoo.validate_kwargs("monai_swinunetr", {"in_channels": 1, "out_channels": 2, "norm_layer": "x"})
    with pytest.raises(ModelPackageError, match="spatial_dims"):
        monai_zoo.build_network("monai_unet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                                               "channels": [4, 8], "strides": [2]})
    with pytest.raises(ModelPackageError, match="layer name"):
        monai_zoo.build_network("monai_segresnet", {"act": "os.system(1)"})


# ---------------------------------------------------------------- references, macros, YAML, overrides


def test_references_macros_overrides_and_yaml(tmp_path, spleen_state):
    config = copy.deepcopy(SPLEEN)
    (tmp_path / "b").mkdir()
    config["spacing"] = {"pixdim": [1.0, 1.0, 1.0], "mode": "nearest"}
    config["preprocessing"]["transforms"][3] = {
        "_target_": "monai.transforms.Spacingd", "keys": "@image_key", "pixdim": "%configs/common.json#pixdim",
        "mode": "@spacing#mode"}
    config["inferer"]["roi_size"] = "@inferer_roi"
    config["inferer_roi"] = [64, 64, 32]
    # relative: four levels up from postprocessing#transforms#2#argmax is the top level
    config["postprocessing"]["transforms"][2] = {"_target_": "AsDiscreted", "keys": "pred", "argmax": "@####argmax"}
    config["argmax"] = True
    root = write_bundle(tmp_path / "b" / "bundle", config, SPLEEN_META, spleen_state)
    (root / "configs" / "common.json").write_text(json.dumps({"pixdim": [0.8, 0.8, 2.5]}))
    spec = mb.read_bundle(root)
    assert spec.spacing.pixdim == (0.8, 0.8, 2.5) and spec.spacing.mode == "nearest"
    assert spec.inferer.roi_size == (64, 64, 32) and spec.postprocessing[2].argmax
    from monai.bundle import ConfigParser

    for id_, ref in [("a::b::c", "@#x"), ("a::b::c", "@##x"), ("a::b::c", "@###x"), ("a::b", "%#x::y"), ("a", "@x")]:
        assert BundleConfig.absolute(ref, id_) == ConfigParser.resolve_relative_ids(id_, ref)
    assert mb.read_bundle(root, overrides={"inferer_roi": [32, 32, 32]}).inferer.roi_size == (32, 32, 32)

    yroot = write_bundle(tmp_path / "y", SPLEEN, SPLEEN_META, spleen_state, yaml_config=True)
    assert mb.read_bundle(yroot).to_dict() | {"root": "", "config_file": ""} == \
        mb.read_bundle(write_bundle(tmp_path / "j", SPLEEN, SPLEEN_META, spleen_state)).to_dict() | {
            "root": "", "config_file": ""}


def test_yaml_without_pyyaml_is_a_clear_error(tmp_path, spleen_state, monkeypatch):
    root = write_bundle(tmp_path / "y", SPLEEN, SPLEEN_META, spleen_state, yaml_config=True)
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ModelPackageError, match="PyYAML is not installed"):
        mb.read_bundle(root)


# ---------------------------------------------------------------- refusals


def refused(tmp_path, config, meta=SPLEEN_META, state=None, name="b") -> str:
    root = write_bundle(tmp_path / name, config, meta, state if state is not None else {"w": torch.zeros(1)})
    with pytest.raises(ModelPackageError) as info:
        mb.read_bundle(root)
    message = str(info.value)
    assert "\n" not in message and message.startswith("refusing bundle: ")
    return message


def with_step(section: str, index: int, step) -> dict:
    config = copy.deepcopy(SPLEEN)
    config[section]["transforms"].insert(index, step)
    return config


def test_unknown_network_target_is_refused(tmp_path):
    for target in ("DynUNet", "my_package.EvilNet", "$monai.networks.nets.UNet"):
        config = {**copy.deepcopy(SPLEEN), "network_def": {**SPLEEN["network_def"], "_target_": target}}
        message = refused(tmp_path, config, name=target.replace("$", "x"))
        assert target in message and ("SwinUNETR" in message or "expression" in message)
    config = copy.deepcopy(SPLEEN)
    config["network_def"]["norm_layer"] = "torch.nn.LayerNorm"
    assert "norm_layer" in refused(tmp_path, config, name="kw")


def test_unknown_transform_and_argument_are_refused(tmp_path):
    message = refused(tmp_path, with_step("preprocessing", 4, {"_target_": "RandFlipd", "keys": "image"}), name="a")
    assert "transform RandFlipd in preprocessing is not supported; supported: LoadImaged" in message
    message = refused(tmp_path, with_step("postprocessing", 3, {
        "_target_": "KeepLargestConnectedComponentd", "keys": "pred"}), name="b")
    assert "KeepLargestConnectedComponentd in postprocessing" in message
    config = copy.deepcopy(SPLEEN)
    config["preprocessing"]["transforms"][3]["diagonal"] = True
    assert "Spacingd 'diagonal'" in refused(tmp_path, config, name="c")
    config = copy.deepcopy(SPLEEN)
    config["preprocessing"]["transforms"][3]["new_option"] = 1
    assert "Spacingd in preprocessing has argument 'new_option'" in refused(tmp_path, config, name="d")
    config = copy.deepcopy(SPLEEN)
    config["inferer"]["_target_"] = "SliceInferer"
    assert "inferer SliceInferer in inferer is not supported" in refused(tmp_path, config, name="e")
    config = copy.deepcopy(BRATS)
    config["postprocessing"]["transforms"][3]["func"] = "$lambda x: __import__('os').system('touch /tmp/x') or x"
    assert "Lambdad in postprocessing runs the code" in refused(tmp_path, config, BRATS_META, name="f")


def test_expressions_in_read_values_are_refused_naming_them(tmp_path):
    config = copy.deepcopy(SPLEEN)
    config["preprocessing"]["transforms"][4]["a_min"] = "$-57 + 0"
    message = refused(tmp_path, config, name="a")
    assert "preprocessing#transforms#4#a_min" in message and "'$-57 + 0'" in message and "does not evaluate" in message
    config = copy.deepcopy(SPLEEN)
    config["roi"] = "$[96] * 3"
    config["inferer"]["roi_size"] = "@roi"
    assert "roi in configs/inference.json is the expression '$[96] * 3'" in refused(tmp_path, config, name="b")
    config = copy.deepcopy(SPLEEN)
    config["preprocessing"]["transforms"][2]["_disabled_"] = "$not os.path.exists('x')"
    assert "_disabled_" in refused(tmp_path, config, name="c")
    config = copy.deepcopy(SPLEEN)
    config["preprocessing"]["transforms"][3]["pixdim"] = "%/etc/passwd.json#x"
    assert "outside the bundle" in refused(tmp_path, config, name="d")


def test_torchscript_only_bundle_is_refused(tmp_path):
    root = write_bundle(tmp_path / "ts", SPLEEN, SPLEEN_META)
    (root / "models" / "model.ts").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ModelPackageError, match=r"only models/model.ts \(TorchScript\).*use the bundle's models/model.pt"):
        mb.read_bundle(root)


def test_zip_with_dotdot_entries_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bundle/configs/inference.json", json.dumps(SPLEEN))
        zf.writestr("bundle/configs/metadata.json", json.dumps(SPLEEN_META))
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(ModelPackageError, match=r"unsafe entry '\.\./escaped\.txt'"):
        mb.read_bundle(archive)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "cache" / "escaped.txt").exists()


class Payload:
    """Pickles as a call that creates ``marker``: a loader that ran it would leave the file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_payload_in_model_pt_is_refused_and_never_runs(tmp_path, spleen_state):
    marker = tmp_path / "marker"
    root = write_bundle(tmp_path / "evil", SPLEEN, SPLEEN_META, {**spleen_state, "hook": Payload(marker)})
    spec = mb.read_bundle(root)  # the config is fine
    with pytest.raises(ModelPackageError, match=r"refusing model.pt: it references .*system"):
        mb.load_bundle_weights(spec)
    with pytest.raises(ModelPackageError, match=r"refusing model.pt"):
        mb.open_bundle(root)
    assert not marker.exists()
