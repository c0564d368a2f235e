"""nnU-Net v2 fixtures made by nnU-Net's own code (test-only; needs ``nnunetv2``).

:func:`build_model` writes a tiny synthetic dataset in nnU-Net's raw format, extracts its
fingerprint and plans it with nnunetv2's own API, then, instead of training, builds
nnU-Net's ``nnUNetTrainer`` from those plans, perturbs its freshly initialised network with
seeded noise (so the outputs are non-trivial and reproducible) and saves it with the
trainer's own ``save_checkpoint`` as ``fold_N/checkpoint_final.pth``: a trained-model
folder exactly as nnU-Net lays it out. :func:`reference_prediction` runs
``nnUNetPredictor`` (CPU, mirroring on) on an image and returns its label map and
probabilities (C x z x y x on the input's grid).

nnunetv2 reads its folders from environment variables when first imported:
:func:`set_nnunet_env` sets them before any nnunetv2 import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from tumorseg_core.synthetic import make_phantom

# Oblique direction (rotation about z by 20 degrees, then about x by 10): nnU-Net ignores it.
_C1, _S1 = np.cos(np.radians(20)), np.sin(np.radians(20))
_C2, _S2 = np.cos(np.radians(10)), np.sin(np.radians(10))
OBLIQUE = tuple((np.array([[_C1, -_S1, 0], [_S1, _C1, 0], [0, 0, 1]])
                 @ np.array([[1, 0, 0], [0, _C2, -_S2], [0, _S2, _C2]])).ravel().tolist())


def set_nnunet_env(root: Path) -> Dict[str, str]:
    """Point nnU-Net's three folders into ``root`` (before nnunetv2 is imported); return them."""
    paths = {name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, value in paths.items():
        Path(value).mkdir(parents=True, exist_ok=True)
        os.environ[name] = value
    os.environ["nnUNet_n_proc_DA"] = "1"
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    return paths


def _skull_stripped(image: sitk.Image, margin: float = 0.3) -> sitk.Image:
    """Zero everything outside a centred ellipsoid (like a brain-extracted MRI): nnU-Net then crops
    to the non-zero region and normalizes inside it (``use_mask_for_norm``)."""
    array = sitk.GetArrayFromImage(image)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in array.shape], indexing="ij")
    inside = (z / 1.05) ** 2 + (y / (1 - margin)) ** 2 + (x / (1 - margin)) ** 2 <= 1.0
    array = np.where(inside, array - array.min() + 1.0, 0.0).astype(np.float32)  # strictly > 0 inside
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def make_case(seed: int, size_xyz: Sequence[int], spacing_xyz: Sequence[float], direction=None,
              channels: int = 1) -> Tuple[List[sitk.Image], sitk.Image]:
    """Image channels (float32) and a 0/1/2 label map (2 = the inner part of each lesion)."""
    ph = make_phantom(seed, size_xyz=tuple(size_xyz), spacing_xyz=tuple(spacing_xyz), direction=direction,
                      modality="mri", n_lesions=2, lesion_radius_mm=(5.0, 9.0))
    truth = sitk.GetArrayFromImage(ph.truth).astype(np.uint8)
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(ph.truth, [2, 2, 1])) > 0
    truth[inner] = 2
    label = sitk.GetImageFromArray(truth)
    label.CopyInformation(ph.truth)
    images = [_skull_stripped(ph.image)]
    for c in range(1, channels):
        other = make_phantom(seed, size_xyz=tuple(size_xyz), spacing_xyz=tuple(spacing_xyz), direction=direction,
                             modality="mri", n_lesions=2, lesion_radius_mm=(5.0, 9.0), noise=1.5 + c)
        images.append(_skull_stripped(other.image))
    return images, label


def write_raw_dataset(raw: Path, dataset_id: int, name: str, *, channels: int = 1, regions: bool = False,
                      n_cases: int = 4) -> Path:
    """A tiny anisotropic training set (about 32 x 40 x 12 voxels of 0.8 x 0.8 x 3 mm) in nnU-Net raw format."""
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    spacings = [(0.8, 0.8, 3.0), (0.75, 0.75, 3.0), (0.85, 0.85, 3.2), (0.8, 0.8, 2.8)]
    for i in range(n_cases):
        images, label = make_case(100 + i, (32, 40, 12), spacings[i % len(spacings)], channels=channels)
        for c, image in enumerate(images):
            sitk.WriteImage(image, str(folder / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"case_{i:03d}.nii.gz"))
    labels: Dict[str, object] = {"background": 0, "tumor": 1, "core": 2}
    meta: Dict[str, object] = {
        "channel_names": {str(c): ["T1", "FLAIR", "T2"][c] for c in range(channels)},
        "numTraining": n_cases, "file_ending": ".nii.gz", "name": name,
        "licence": "CC-BY 4.0 (test fixture)", "reference": "TumorSeg test fixture",
    }
    if regions:
        labels = {"background": 0, "whole tumor": [1, 2], "tumor core": 2}
        meta["regions_class_order"] = [1, 2]
    meta["labels"] = labels
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def plan(dataset_id: int) -> None:
    """nnU-Net's own fingerprint extraction and experiment planning (``nnUNetv2_plan_and_preprocess`` without -c)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=False, clean=True, verbose=False)
    plan_experiments([dataset_id])


def preprocess(dataset_id: int, configuration: str) -> None:
    """nnU-Net's own preprocessing of the training set (the trainer's initialize() looks for it)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess as nnunet_preprocess

    nnunet_preprocess([dataset_id], configurations=(configuration,), num_processes=(1,), verbose=False)


def shrink_plans(preprocessed: Path, dataset_id: int, features: Sequence[int] = (8, 16, 32, 32, 32)) -> None:
    """Fewer features per stage in every configuration (a custom plan, as users write them): faster tests."""
    folder = next(preprocessed.glob(f"Dataset{dataset_id:03d}_*"))
    path = folder / "nnUNetPlans.json"
    plans = json.loads(path.read_text())
    for config in plans["configurations"].values():
        arch = config.get("architecture")
        if arch:
            n = arch["arch_kwargs"]["n_stages"]
            arch["arch_kwargs"]["features_per_stage"] = [features[min(i, len(features) - 1)] for i in range(n)]
    path.write_text(json.dumps(plans, indent=2))


def add_lowres(preprocessed: Path, dataset_id: int, factor: float = 2.0) -> None:
    """A ``3d_lowres`` configuration (a custom plan, as users write them): ``3d_fullres`` at
    ``factor`` times its in-plane spacing. nnU-Net's planner adds one only for images far
    larger than the patch, which these fixtures are not."""
    folder = next(preprocessed.glob(f"Dataset{dataset_id:03d}_*"))
    path = folder / "nnUNetPlans.json"
    plans = json.loads(path.read_text())
    spacing = list(plans["configurations"]["3d_fullres"]["spacing"])
    plans["configurations"]["3d_lowres"] = {
        "inherits_from": "3d_fullres",
        "data_identifier": "nnUNetPlans_3d_lowres",
        "spacing": [spacing[0]] + [s * factor for s in spacing[1:]],
    }
    path.write_text(json.dumps(plans, indent=2))


def save_fold(dataset_id: int, configuration: str, fold: int, seed: int) -> Path:
    """nnU-Net's trainer, from the plans, with seeded perturbed weights, saved by its own save_checkpoint."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(dataset_id)
    plans = json.loads((Path(nnUNet_preprocessed) / name / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((Path(nnUNet_preprocessed) / name / "dataset.json").read_text())
    torch.manual_seed(seed)
    plans["continue_training"] = False  # nnunetv2 2.8's run_training adds this key; the trainer pops it
    trainer = nnUNetTrainer(plans, configuration, fold, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    # What training sets up first (get_dataloaders): the mirror axes the checkpoint records for inference.
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in trainer.network.named_parameters():
            scale = 0.3 if "norm" in pname else 0.05
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    path = Path(trainer.output_folder) / "checkpoint_final.pth"
    trainer.save_checkpoint(str(path))
    # What nnUNetv2_train writes next to the fold folders (its on_train_start, skipped here).
    base = Path(trainer.output_folder_base)
    (base / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (base / "plans.json").write_text(json.dumps(plans, indent=2))
    return base


def reference_prediction(model_folder: Path, images: Sequence[sitk.Image], folds: Sequence[int],
                         tmp: Path, checkpoint: str = "checkpoint_final.pth") -> Tuple[np.ndarray, np.ndarray]:
    """``nnUNetPredictor`` on CPU (mirroring on, Gaussian, step 0.5): (labels z,y,x; probabilities C,z,y,x)."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    tmp.mkdir(parents=True, exist_ok=True)
    files = []
    for c, image in enumerate(images):
        files.append(str(tmp / f"input_{c:04d}.nii.gz"))
        sitk.WriteImage(image, files[-1])
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                   checkpoint_name=checkpoint)
    data, props = SimpleITKIO().read_images(files)
    seg, probs = predictor.predict_single_npy_array(data, props, None, None, True)
    return np.asarray(seg), np.asarray(probs)


def build_model(root: Path, dataset_id: int, name: str, *, channels: int = 1, regions: bool = False,
                folds: Sequence[int] = (0,), configuration: str = "3d_fullres") -> Path:
    """The whole fixture: raw data, plans, one perturbed checkpoint per fold. Returns the trained-model folder."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    write_raw_dataset(Path(nnUNet_raw), dataset_id, name, channels=channels, regions=regions)
    plan(dataset_id)
    shrink_plans(Path(nnUNet_preprocessed), dataset_id)
    if configuration == "3d_lowres":
        add_lowres(Path(nnUNet_preprocessed), dataset_id)
    preprocess(dataset_id, configuration)
    folder: Optional[Path] = None
    for fold in folds:
        folder = save_fold(dataset_id, configuration, fold, seed=1000 * dataset_id + fold)
    assert folder is not None
    return folder
