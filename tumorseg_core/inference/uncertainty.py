"""Voxel-wise predictive uncertainty: the normalised entropy of the mean class probabilities.

What is measured (issue #22): the probabilities the label map is made from are already a
mean, over the flip passes (TTA, :mod:`~tumorseg_core.inference.tta`), the networks of an
ensemble (folds) and the overlapping windows (Gaussian-weighted). Their entropy, divided
by its maximum, is in [0, 1]: 0 where every pass gives one class probability 1, 1 where
the mean is uniform. Because the mean is what the stitcher already accumulates, the
entropy is computed from the same band of sums as the labels
(:class:`~tumorseg_core.inference.stitching.BandStitcher`): no full volume is kept per
pass, and the labels are bit-identical with or without it. Without TTA and with one
network it is the entropy of the single pass (the model's own confidence).

- Softmax (K classes, background included): ``-sum_k p_k log p_k / log K``.
- Sigmoid (K possibly overlapping regions): the entropy of K independent Bernoulli
  variables divided by its maximum ``K log 2``, i.e. the mean binary entropy of the regions.

No variance across passes: it would need every pass's probabilities per window through
``window_batch.py`` (a second accumulator per class and a different arithmetic path on
both the numpy and the torch runners), and is 0 for a single network without TTA. The
entropy already rises where passes disagree (their mean moves towards 0.5).

Imported nnU-Net / MONAI models give probabilities on the input grid
(``Segmenter.probabilities``); :func:`entropy_of_probabilities` turns those into the same
measure (nnU-Net averages *logits* over mirrors and folds, so there it is the entropy of
the softmax of the mean logits).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.imaging.geometry import GridGeometry
from tumorseg_core.imaging.io import check_writable_file

#: Formats the uncertainty map can be written in (atomically; ``.mhd`` is not: its voxels
#: live in a second file).
UNCERTAINTY_EXTENSIONS = (".nrrd", ".nii.gz", ".nii", ".mha")
#: The worker's file name for it, next to its ``labels.nrrd``.
WORKER_FILE_NAME = "uncertainty.nrrd"


class SegmentResult(NamedTuple):
    """What ``segment(..., uncertainty=True)`` returns; unpacks as ``labels, uncertainty = ...``.

    Attributes:
        labels: uint8 label map on the first input's exact grid (as ``segment`` returns it).
        uncertainty: float32 normalised predictive entropy in [0, 1] on that same grid.
    """

    labels: sitk.Image
    uncertainty: sitk.Image


def _xlogx(p: np.ndarray) -> np.ndarray:
    """``p * log(p)`` with 0 log 0 = 0, float32, any shape."""
    out = np.zeros(p.shape, dtype=np.float32)
    positive = p > 0
    out[positive] = p[positive] * np.log(p[positive])
    return out


def entropy_from_sums(sums: np.ndarray, weight: Union[np.ndarray, float], output_type: str,
                      num_outputs: int) -> np.ndarray:
    """Normalised entropy (z, y, x) float32 in [0, 1] from stitched foreground sums.

    ``sums`` (K', z, y, x): sum over windows of Gaussian x mean probabilities (softmax:
    background dropped, K' = num_outputs - 1; sigmoid: K' = num_outputs regions);
    ``weight`` (z, y, x) (or a scalar) the summed Gaussians, so ``sums / weight`` are the
    mean probabilities. Voxels with weight 0 (no window reached them) get 0.
    """
    weight = np.broadcast_to(np.asarray(weight, dtype=np.float32), sums.shape[1:])
    covered = weight > 0
    probs = np.zeros(sums.shape, dtype=np.float32)
    np.divide(sums, weight[None], out=probs, where=covered[None])
    np.clip(probs, 0.0, 1.0, out=probs)
    if output_type == "softmax":
        background = np.clip(1.0 - probs.sum(axis=0), 0.0, 1.0)
        entropy = -_xlogx(background)
        for channel in probs:
            entropy -= _xlogx(channel)
        scale = math.log(num_outputs)
    else:
        entropy = np.zeros(sums.shape[1:], dtype=np.float32)
        for channel in probs:
            entropy -= _xlogx(channel) + _xlogx(1.0 - channel)
        scale = len(probs) * math.log(2.0)
    entropy /= np.float32(scale)
    entropy[~covered] = 0.0
    entropy += np.float32(0.0)  # -0.0 (certain voxels) becomes 0.0
    return np.clip(entropy, 0.0, 1.0, out=entropy)


def entropy_of_probabilities(probabilities: np.ndarray, output_type: str) -> np.ndarray:
    """Normalised entropy (z, y, x) float32 of full probabilities (C, z, y, x).

    Softmax: C channels are every class, background included (they sum to 1).
    Sigmoid: C region channels, each a separate probability. Used for imported models.
    """
    probs = np.asarray(probabilities, dtype=np.float32)
    if output_type == "softmax":
        if len(probs) < 2:
            raise InputError("uncertainty needs at least 2 class probabilities; this model gives one")
        # The background is implied by the others, exactly as in the stitched sums.
        return entropy_from_sums(probs[1:], 1.0, "softmax", len(probs))
    return entropy_from_sums(probs, 1.0, "sigmoid", len(probs))


def to_reference(uncertainty_zyx: np.ndarray, model_grid: GridGeometry,
                 reference: Union[sitk.Image, GridGeometry]) -> sitk.Image:
    """Model-grid uncertainty (z, y, x) onto ``reference``'s exact grid, linear, float32.

    The result has the reference's size, spacing, origin and direction copied bit-exactly;
    points outside the model grid get 0 (there the labels are background too).
    """
    source = model_grid.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(uncertainty_zyx, dtype=np.float32)))
    return on_grid(source, reference)


def on_grid(image: sitk.Image, reference: Union[sitk.Image, GridGeometry]) -> sitk.Image:
    """``image`` resampled (linear) onto ``reference``'s exact grid as float32, clipped to [0, 1]."""
    grid = reference if isinstance(reference, GridGeometry) else GridGeometry.of(reference)
    out = sitk.Resample(image, grid.size, sitk.Transform(), sitk.sitkLinear, grid.origin, grid.spacing,
                        grid.direction, 0.0, sitk.sitkFloat32)
    out = sitk.Clamp(out, sitk.sitkFloat32, 0.0, 1.0)
    return grid.apply_to(out)


def check_uncertainty_path(path: Union[str, "os.PathLike[str]"], output: Union[str, "os.PathLike[str]", None] = None,
                           ) -> Path:
    """Refuse an uncertainty path that could not be written, before any work is done.

    It must not be the label map's ``output``, and :func:`~tumorseg_core.imaging.io.check_writable_file`
    with :data:`UNCERTAINTY_EXTENSIONS` must accept it. Returns the path.
    """
    target = Path(path)
    if output is not None and os.path.abspath(target) == os.path.abspath(output):
        raise InputError(f"the uncertainty map and the label map are both {target}; give them different names")
    return check_writable_file(target, UNCERTAINTY_EXTENSIONS, "uncertainty")[0]


def seeded_uncertainty_error() -> InputError:
    """The error for asking uncertainty of the seeded segmentation, which has no model."""
    return InputError("uncertainty needs a model: the seeded segmentation (no model) has none; "
                      "give a model or do not ask for uncertainty")
