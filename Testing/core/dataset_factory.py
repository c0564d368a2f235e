"""Paired image/label folders (``images/NAME.nii.gz`` + ``labels/NAME.nii.gz``) for training tests."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk


def write_labelled_case(root: Path, name: str, image: sitk.Image, label: sitk.Image) -> tuple[Path, Path]:
    """Write one case (the label takes the image's grid); returns (image path, label path)."""
    label.CopyInformation(image)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    paths = root / "images" / f"{name}.nii.gz", root / "labels" / f"{name}.nii.gz"
    sitk.WriteImage(image, str(paths[0]))
    sitk.WriteImage(label, str(paths[1]))
    return paths
