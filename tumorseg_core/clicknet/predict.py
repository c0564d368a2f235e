"""The trained click network, loaded safely, and its answer for one set of clicks.

The weights ship as a folder (``tumorseg_core/data/clicknet``): ``manifest.json`` (grid, channels,
architecture, training record and the sha256 of every file) and ``weights.safetensors``. Every file
is checked against its sha256 before anything is read (:func:`tumorseg_core.modelpkg.package.verify_folder`),
the weights are tensors only (safetensors) and must fit the architecture exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from tumorseg_core.clicknet.cube import cube_inputs
from tumorseg_core.clicknet.grid import SIZE, VOXEL_MM
from tumorseg_core.clicknet.inputs import CHANNELS
from tumorseg_core.clicknet.network import FEATURES, build_network
from tumorseg_core.errors import ModelPackageError
from tumorseg_core.interactive.crop import Crop
from tumorseg_core.modelpkg.package import load_state_dict_strict, verify_folder

WEIGHTS = "weights.safetensors"


def shipped_folder() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "clicknet"


class ClickNet:
    """``probability(image, fg, bg, previous)``: P(lesion) on the cube around the first foreground click."""


    def __init__(self, folder: Optional[Path] = None) -> None:
        self.folder = Path(folder) if folder is not None else shipped_folder()
        manifest = verify_folder(self.folder)
        grid = manifest.get("grid", {})
        if (manifest.get("channels") != CHANNELS or grid.get("size") != SIZE or grid.get("voxel_mm") != VOXEL_MM
                or tuple(manifest.get("features", ())) != FEATURES):
            raise ModelPackageError(f"click network in {self.folder} was made for another input layout; "
                                    "update TumorSeg or reinstall the click network")
        self.manifest = manifest
        self.net = build_network()
        load_state_dict_strict(self.net, load_file(str(self.folder / WEIGHTS)), f"click network {self.folder}")
        self.net.eval()

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """P(lesion) (z, y, x) float32 of one cube's inputs (:data:`CHANNELS`, z, y, x)."""
        if inputs.shape != (CHANNELS, SIZE, SIZE, SIZE):
            raise ValueError(f"click network inputs must be {(CHANNELS, SIZE, SIZE, SIZE)}, got {inputs.shape}")
        with torch.inference_mode():
            prob = torch.sigmoid(self.net(torch.from_numpy(np.ascontiguousarray(inputs, np.float32))[None]))
        return prob[0, 0].numpy().astype(np.float32)

    def probability(self, image: sitk.Image, fg_lps: Sequence[Sequence[float]], bg_lps: Sequence[Sequence[float]] = (),
                    previous: Optional[sitk.Image] = None) -> tuple[Crop, np.ndarray]:
        """(the cube, P(lesion) (z, y, x) float32 on it); the cube is centred on ``fg_lps[0]``."""
        crop, inputs = cube_inputs(image, fg_lps, bg_lps, previous)
        return crop, self.forward(inputs)
