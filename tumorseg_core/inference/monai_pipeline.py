"""One case through an imported MONAI bundle, the way ``monai.bundle run`` runs it.

Packages with a ``monai`` manifest section (:mod:`tumorseg_core.modelpkg.monai_section`)
go through :func:`segment_bundle_package` instead of TumorSeg's own resampling,
normalization and windows. Each step reproduces its MONAI transform:

- ``Orientationd``: axes permuted/flipped to the bundle's ``axcodes`` (SimpleITK's
  DICOMOrient letters mean the same as MONAI's: the direction each index increases to).
- ``Spacingd``: MONAI's grid, not TumorSeg's centred one: the oriented input's first voxel
  centre stays the origin, the direction is kept and the size is
  ``round((n - 1) * old / new) + 1`` (numpy's round). Linear (or nearest) interpolation in
  float64 with MONAI's ``padding_mode`` (``border``: the input padded with replicated
  voxels first, so SimpleITK clamps as ``grid_sample`` does), stored as float32.
- ``ScaleIntensityRanged``, ``ScaleIntensityd``, ``NormalizeIntensityd`` (``nonzero``:
  population mean/std of the non-zero voxels, which alone change; std 0 -> 1), in the
  bundle's order, in torch float32 as MONAI computes them.
- ``CropForegroundd``: the box of voxels > 0 in the source channels plus ``margin``, grown
  to ``k_divisible``; a box past the image is zero padded (``allow_smaller=False``).
- ``SlidingWindowInferer``: MONAI's window grid (step ``int(roi * (1 - overlap))``, last
  window flush), images smaller than the window padded symmetrically, the network's
  *logits* blended with MONAI's importance map (constant or Gaussian) and divided by the
  summed weights; ``SimpleInferer``: one pass.
- Postprocessing in the bundle's order: ``Activationsd`` (softmax/sigmoid over channels),
  ``Invertd`` (uncrop with zeros, resample every channel back to the oriented input grid with
  the Spacingd mode, or nearest when ``nearest_interp``, then undo the orientation),
  ``AsDiscreted`` (argmax, or ``>= threshold``), ``Lambdad`` (BraTS: region channels to label
  values, first rule wins).

The result is a uint8 label map on the first input's exact grid. Sigmoid (region) models
are painted into one label map: with the bundle's ``Lambdad`` rules when it has them (as the
bundle writes its output), else each region with its manifest value, later channels over
earlier ones; ``return_probabilities=True`` also returns the activated channels on the
input grid, from which overlapping region masks are ``probabilities >= 0.5``.
All arrays here are in array order (C, z, y, x); per-axis MONAI values (i, j, k) are x, y, z.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError, ModelPackageError
from tumorseg_core.imaging import geometry, io
from tumorseg_core.modelpkg.monai_section import MonaiSection, MonaiStep, check_monai_section

_DIRECTION_TOL = 1e-5


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size (x, y, z), spacing, origin, direction (row-major 3x3), as SimpleITK has them."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Grid":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),  # type: ignore[arg-type]
                   tuple(image.GetDirection()))

    def image(self, array_zyx: np.ndarray) -> sitk.Image:
        """``array_zyx`` (z, y, x) as an image on this grid."""
        image = sitk.GetImageFromArray(array_zyx)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def shape_zyx(self) -> Tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])


# ------------------------------------------------------------------ spatial steps


def orient(images: Sequence[sitk.Image], axcodes: str) -> List[sitk.Image]:
    """``Orientationd``: every channel permuted/flipped to ``axcodes`` (no interpolation)."""
    return [sitk.DICOMOrient(image, axcodes.upper()) for image in images]


_LPS_RAS = np.diag([-1.0, -1.0, 1.0])
_AFFINE_TOL = 1e-3  # monai.data.utils.AFFINE_TOL


def ras_affine(grid: Grid, float32: bool = False) -> np.ndarray:
    """The 4x4 RAS voxel-to-world affine MONAI holds for ``grid``.

    ``float32``: rounded as a NIfTI ``sform`` stores it, which is what MONAI's default reader
    (nibabel) gives for ``.nii``/``.nii.gz`` files; other readers give float64.
    """
    affine = np.eye(4)
    affine[:3, :3] = _LPS_RAS @ np.asarray(grid.direction, dtype=np.float64).reshape(3, 3) @ np.diag(grid.spacing)
    affine[:3, 3] = _LPS_RAS @ np.asarray(grid.origin, dtype=np.float64)
    return affine.astype(np.float32).astype(np.float64) if float32 else affine


def orient_affine(affine: np.ndarray, before: Grid, after: Grid) -> np.ndarray:
    """``affine`` permuted/flipped the way DICOMOrient turned grid ``before`` into ``after``
    (MONAI's ``affine @ inv(ornt_transform)``)."""
    old = np.asarray(before.direction).reshape(3, 3)
    new = np.asarray(after.direction).reshape(3, 3)
    out = np.eye(4)
    out[:3, 3] = affine[:3, 3]
    for j in range(3):
        dots = old.T @ new[:, j]
        k = int(np.argmax(np.abs(dots)))
        sign = 1.0 if dots[k] > 0 else -1.0
        out[:3, j] = sign * affine[:3, k]
        if sign < 0:
            out[:3, 3] += affine[:3, k] * (before.size[k] - 1)
    return out


def spacing_grid(grid: Grid, pixdim: Sequence[float], affine: Optional[np.ndarray] = None) -> Grid:
    """``Spacingd``'s output grid for ``grid`` (MONAI's ``zoom_affine`` + ``compute_shape_offset``).

    ``affine``: MONAI's RAS affine of ``grid`` (default: :func:`ras_affine` in float64). The
    direction is kept; the size per axis is ``round((n - 1) * old / new) + 1`` (numpy's round)
    and the first voxel centre stays the origin, except where MONAI's own check of that
    (``allclose`` at 1e-8) fails on rounding noise of the affine (oblique NIfTI files):
    then it centres the new grid on the old one, and so does this. A ``pixdim`` of 0 or
    less, or within 1e-3 of the input spacing, keeps that axis' spacing.
    """
    affine = ras_affine(grid) if affine is None else affine
    rzs = affine[:3, :3]
    orig = np.sqrt(np.sum(rzs * rzs, axis=0))
    out_d = np.array([o if p <= 0 or abs(o - p) <= _AFFINE_TOL else p for o, p in zip(orig, pixdim)], dtype=float)
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    rotation = rzs @ np.linalg.inv(zs)
    new = np.eye(4)
    new[:3, :3] = rotation @ np.diag(np.sign(np.diag(zs)) * np.abs(out_d))
    shape = np.asarray(grid.size, dtype=float)
    corners = np.asarray(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape((3, -1))
    corners = np.concatenate((corners, np.ones_like(corners[:1])))
    corners_out = np.linalg.solve(new, affine) @ corners
    world = affine @ corners
    dist = corners_out[:-1].copy()
    size = np.round(np.ptp(corners_out[:-1] / corners_out[-1], axis=1) + 1.0).astype(int)
    offset = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(dist - dist[:, i:i + 1], 1), 0.0, rtol=_AFFINE_TOL):
            offset = world[:-1, i]
            break
    if offset is None:
        offset = affine[:3, :3] @ (shape / 2.0) + affine[:3, 3] - new[:3, :3] @ (size / 2.0)
    columns = new[:3, :3]
    spacing = np.sqrt(np.sum(columns * columns, axis=0))
    direction = _LPS_RAS @ (columns / spacing)
    return Grid(tuple(int(n) for n in size), tuple(float(v) for v in spacing),  # type: ignore[arg-type]
                tuple(float(v) for v in _LPS_RAS @ offset), tuple(float(v) for v in direction.ravel()))


def resample(image: sitk.Image, target: Grid, mode: str = "bilinear", padding_mode: str = "border",
             dtype: str = "float64") -> sitk.Image:
    """``image`` on ``target`` as MONAI's ``SpatialResample`` gives it (float32 out).

    ``mode`` "bilinear" (trilinear) or "nearest"; ``padding_mode`` "border" (outside values
    clamp to the edge) or "zeros". Computed in ``dtype``.
    """
    if padding_mode not in ("border", "zeros"):
        raise ModelPackageError(f"Spacingd padding_mode {padding_mode!r} is not supported (border, zeros)")
    pixel = sitk.sitkFloat64 if dtype == "float64" else sitk.sitkFloat32
    source = sitk.Cast(image, pixel)
    # How far (in source voxels) the target grid may reach past the source: pad that much.
    reach = max(t / s for t, s in zip(target.spacing, image.GetSpacing()))
    pad = int(math.ceil(reach)) + 2
    if padding_mode == "border":
        source = sitk.ZeroFluxNeumannPad(source, [pad] * 3, [pad] * 3)
    elif mode != "nearest":
        source = sitk.ConstantPad(source, [1] * 3, [1] * 3, 0.0)
    interpolator = sitk.sitkNearestNeighbor if mode == "nearest" else sitk.sitkLinear
    out = sitk.Resample(source, list(target.size), sitk.Transform(), interpolator, list(target.origin),
                        list(target.spacing), list(target.direction), 0.0, pixel)
    return sitk.Cast(out, sitk.sitkFloat32)


def foreground_box(array: np.ndarray, source_channels: Sequence[int], margin_xyz: Sequence[int],
                   allow_smaller: bool, k_divisible_xyz: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """``CropForegroundd``'s box ``(start, end)`` (z, y, x; end exclusive; may reach past the array)."""
    mask = (array[list(source_channels)] > 0).any(axis=0)
    if not mask.any():
        raise InputError("the image has no foreground (no voxel > 0 after the intensity steps), so the bundle's "
                         "CropForegroundd has nothing to crop to")
    shape = np.asarray(mask.shape)
    margin = np.asarray(margin_xyz[::-1])
    start, end = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        start[axis], end[axis] = hits[0] - margin[axis], hits[-1] + margin[axis] + 1
    if allow_smaller:
        start, end = np.maximum(start, 0), np.minimum(end, shape)
    size = end - start
    k = np.asarray(k_divisible_xyz[::-1])
    divisible = np.ceil(size / k).astype(np.int64) * k
    start = start - (divisible - size) // 2
    return start, start + divisible


def crop_pad(array: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``array[..., start:end]`` (C, z, y, x), zero padded where the box reaches past it."""
    shape = np.asarray(array.shape[1:])
    lo, hi = np.maximum(start, 0), np.minimum(end, shape)
    out = array[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]
    pads = [(0, 0)] + [(int(a), int(b)) for a, b in zip(lo - start, end - hi)]
    return np.pad(out, pads) if any(p != (0, 0) for p in pads) else out


def uncrop(array: np.ndarray, start: np.ndarray, end: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    """Undo :func:`crop_pad`: ``array`` back into zeros of ``shape_zyx``."""
    shape = np.asarray(shape_zyx)
    out = np.zeros((array.shape[0], *shape_zyx), dtype=array.dtype)
    lo, hi = np.maximum(start, 0), np.minimum(end, shape)
    src = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    out[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))] = array[(slice(None),) + src]
    return out


# ------------------------------------------------------------------ intensity steps


def intensity(array: np.ndarray, step: MonaiStep) -> np.ndarray:
    """Apply one intensity step to ``array`` (C, z, y, x) float32 (new array), group by group."""
    import torch

    out = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    for group in step["groups"]:
        idx = list(group)
        out[idx] = _intensity_group(out[idx], step)
    return out.numpy()


def _intensity_group(img: "Any", step: MonaiStep) -> "Any":
    import torch

    if step.transform == "ScaleIntensityRanged":
        img = (img - step["a_min"]) / (step["a_max"] - step["a_min"])
        if step["b_min"] is not None and step["b_max"] is not None:
            img = img * (step["b_max"] - step["b_min"]) + step["b_min"]
        if step["clip"]:
            img = torch.clamp(img, step["b_min"], step["b_max"])
        return img
    if step.transform == "ScaleIntensityd":
        parts = [img[c:c + 1] for c in range(len(img))] if step["channel_wise"] else [img]
        done = []
        for part in parts:
            lo, hi = part.min(), part.max()
            if lo == hi:
                done.append(part * step["minv"])
            else:
                done.append((part - lo) / (hi - lo) * (step["maxv"] - step["minv"]) + step["minv"])
        return torch.cat(done) if step["channel_wise"] else done[0]
    if step.transform == "NormalizeIntensityd":
        sub, div = step["subtrahend"], step["divisor"]
        if step["channel_wise"]:
            for c in range(len(img)):
                img[c] = _normalize(img[c], step["nonzero"], _pick(sub, c), _pick(div, c))
            return img
        return _normalize(img, step["nonzero"], sub, div)
    raise ModelPackageError(f"intensity step {step.transform} is not supported")  # pragma: no cover


def _pick(value: Any, index: int) -> Any:
    return value[index] if isinstance(value, tuple) else value


def _normalize(img: "Any", nonzero: bool, subtrahend: Any, divisor: Any) -> "Any":
    """MONAI's ``NormalizeIntensity._normalize`` (torch, population std, std 0 -> 1)."""
    import torch

    mask = img != 0 if nonzero else torch.ones_like(img, dtype=torch.bool)
    if not mask.any():
        return img
    masked = img[mask]
    sub = torch.mean(masked) if subtrahend is None else torch.as_tensor(subtrahend, dtype=img.dtype)
    div = torch.std(masked, unbiased=False) if divisor is None else torch.as_tensor(divisor, dtype=img.dtype)
    if float(div) == 0.0:
        div = torch.as_tensor(1.0, dtype=img.dtype)
    img = img.clone()
    img[mask] = (masked - sub) / div
    return img


# ------------------------------------------------------------------ the inferer


def scan_starts(dim: int, roi: int, overlap: float) -> List[int]:
    """MONAI's ``_get_scan_interval`` + ``dense_patch_slices`` along one axis (``dim >= roi``)."""
    if dim == roi:
        return [0]
    interval = int(roi * (1 - overlap))
    interval = interval if interval > 0 else 1
    num = int(math.ceil(float(dim) / interval))
    count = next((d for d in range(num) if d * interval + roi >= dim), None)
    count = count + 1 if count is not None else 1
    return [min(interval * i, dim - roi) for i in range(count)]


def importance_map(roi_zyx: Sequence[int], mode: str, sigma_zyx: Sequence[float]) -> "Any":
    """MONAI's ``compute_importance_map`` (float32, (z, y, x))."""
    import torch

    if mode == "constant":
        return torch.ones(tuple(roi_zyx), dtype=torch.float32)
    weights = None
    for i, (size, scale) in enumerate(zip(roi_zyx, sigma_zyx)):
        sigma = size * scale
        x = torch.arange(start=-(size - 1) / 2.0, end=(size - 1) / 2.0 + 1, dtype=torch.float)
        x = torch.exp(x ** 2 / (-2 * sigma ** 2))
        weights = weights.unsqueeze(-1) * x[(None,) * i] if i > 0 else x
    min_non_zero = max(torch.min(weights).item(), 1e-3)
    return torch.clamp_(weights.to(torch.float), min=min_non_zero)


def _per_axis_zyx(value: Any) -> Tuple[float, float, float]:
    return tuple(float(v) for v in value[::-1]) if isinstance(value, tuple) else (float(value),) * 3  # type: ignore


_NP_PAD = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def sliding_window_logits(networks: Sequence[Any], array: np.ndarray, section: MonaiSection,
                          device: Any = "cpu") -> np.ndarray:
    """MONAI's ``SlidingWindowInferer`` (or ``SimpleInferer``) on ``array`` (C, z, y, x): logits.

    Several networks (an ensemble) are averaged logit by logit; a zoo bundle has one.
    """
    import torch

    inf = section.inferer
    dev = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    with torch.inference_mode():
        if inf.kind == "simple":
            return sum(net(x[None].to(dev))[0].float().cpu() for net in networks).div(len(networks)).numpy()
        roi = tuple(int(r) for r in inf.roi_size[::-1])  # type: ignore[index]
        shape = tuple(array.shape[1:])
        pads = [(0, 0)]
        for dim, r in zip(shape, roi):
            diff = max(r - dim, 0)
            pads.append((diff // 2, diff - diff // 2))
        if any(p != (0, 0) for p in pads):
            kw = {"constant_values": inf.cval} if inf.padding_mode == "constant" else {}
            x = torch.from_numpy(np.pad(array.astype(np.float32), pads, mode=_NP_PAD[inf.padding_mode], **kw))
        padded = tuple(x.shape[1:])
        overlap = _per_axis_zyx(inf.overlap)
        starts = [scan_starts(d, r, o) for d, r, o in zip(padded, roi, overlap)]
        corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
        weight = importance_map(roi, inf.mode, _per_axis_zyx(inf.sigma_scale))
        out: Optional[Any] = None
        count = torch.zeros(padded, dtype=torch.float32)
        for first in range(0, len(corners), inf.sw_batch_size):
            batch = corners[first:first + inf.sw_batch_size]
            windows = torch.stack([x[:, z:z + roi[0], y:y + roi[1], w:w + roi[2]] for z, y, w in batch]).to(dev)
            logits = sum(net(windows).float() for net in networks) / len(networks)
            logits = logits.cpu()
            if out is None:
                out = torch.zeros((logits.shape[1], *padded), dtype=torch.float32)
            for (z, y, w), pred in zip(batch, logits):
                out[:, z:z + roi[0], y:y + roi[1], w:w + roi[2]] += weight * pred
                count[z:z + roi[0], y:y + roi[1], w:w + roi[2]] += weight
        result = (out / count)[(slice(None),) + tuple(slice(a, a + d) for (a, _), d in zip(pads[1:], shape))]
        return result.numpy()


# ------------------------------------------------------------------ the whole case


@dataclass
class _Case:
    """Where the data is: the input grid, the oriented grid, the model grid and the crop box."""

    reference: sitk.Image
    oriented: Grid
    model: Grid
    axcodes: Optional[str] = None
    box: Optional[Tuple[np.ndarray, np.ndarray]] = None
    spacing: Optional[MonaiStep] = None
    affine: Optional[np.ndarray] = None  # MONAI's RAS affine of the current grid


def preprocess(images: Sequence[sitk.Image], section: MonaiSection,
               nifti_affine: bool = False) -> Tuple[np.ndarray, _Case]:
    """The bundle's preprocessing: (network input (C, z, y, x) float32, the case's grids).

    ``nifti_affine``: the images came from NIfTI files, whose affine MONAI reads in float32
    (see :func:`spacing_grid`)."""
    channels = [sitk.Cast(image, sitk.sitkFloat32) for image in images]
    case = _Case(images[0], Grid.of(channels[0]), Grid.of(channels[0]))
    case.affine = ras_affine(case.model, float32=nifti_affine)
    array: Optional[np.ndarray] = None

    def as_array() -> np.ndarray:
        return np.stack([sitk.GetArrayFromImage(c) for c in channels]).astype(np.float32, copy=False)

    for step in section.preprocessing:
        if step.transform == "Orientationd":
            if array is not None:  # intensity steps ran first: back into images
                channels = [case.model.image(a) for a in array]
                array = None
            channels = orient(channels, step["axcodes"])
            case.axcodes = step["axcodes"]
            before, case.oriented = case.model, Grid.of(channels[0])
            case.affine = orient_affine(case.affine, before, case.oriented)
            case.model = case.oriented
        elif step.transform == "Spacingd":
            if array is not None:
                channels = [case.model.image(a) for a in array]
                array = None
            target = spacing_grid(case.model, step["pixdim"], case.affine)
            case.affine = ras_affine(target)
            channels = [resample(c, target, step["mode"], step["padding_mode"], step["dtype"]) for c in channels]
            case.spacing, case.model = step, target
        elif step.transform == "CropForegroundd":
            array = as_array() if array is None else array
            case.box = foreground_box(array, step["source_channels"], step["margin"], step["allow_smaller"],
                                      step["k_divisible"])
            array = crop_pad(array, *case.box)
        else:
            array = intensity(as_array() if array is None else array, step)
    return (as_array() if array is None else array), case


def invert(array: np.ndarray, case: _Case, nearest: bool) -> np.ndarray:
    """``Invertd``: (C, z, y, x) on the (cropped) model grid -> on the input's grid."""
    if case.box is not None:
        array = uncrop(array, *case.box, case.model.shape_zyx)
    if case.spacing is not None:
        mode = "nearest" if nearest else case.spacing["mode"]
        array = np.stack([sitk.GetArrayFromImage(resample(case.model.image(a), case.oriented, mode,
                                                          case.spacing["padding_mode"], case.spacing["dtype"]))
                          for a in array])
    if case.axcodes is not None:
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(case.reference.GetDirection())
        back = [sitk.DICOMOrient(case.oriented.image(a), code) for a in array]
        if back[0].GetSize() != case.reference.GetSize() or not np.allclose(
                back[0].GetDirection(), case.reference.GetDirection(), atol=_DIRECTION_TOL):
            raise InputError("could not undo the bundle's orientation on this image's axes")  # pragma: no cover
        array = np.stack([sitk.GetArrayFromImage(b) for b in back])
    return array


def run_section(networks: Sequence[Any], images: Sequence[sitk.Image], section: MonaiSection,
                region_values: Sequence[int] = (), device: Any = "cpu",
                nifti_affine: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(labels (z, y, x) uint8, activated channels (C, z, y, x) float32), both on ``images[0]``'s grid."""
    data, case = preprocess(images, section, nifti_affine)
    pred = sliding_window_logits(networks, data, section, device)
    del data
    on_input = not (case.box is not None or case.spacing is not None or case.axcodes is not None)
    probabilities: Optional[np.ndarray] = None
    probs_on_input = on_input
    discrete = False
    labels: Optional[np.ndarray] = None
    for step in section.postprocessing:
        if step.transform == "Activationsd":
            import torch

            t = torch.from_numpy(pred)
            pred = (torch.softmax(t, 0) if step["softmax"] else torch.sigmoid(t) if step["sigmoid"] else t).numpy()
            probabilities, probs_on_input = pred, on_input
        elif step.transform == "Invertd":
            if not on_input:
                pred = invert(pred, case, step["nearest_interp"])
                on_input = True
            if probabilities is not None and not discrete:
                probabilities, probs_on_input = pred, True
        elif step.transform == "AsDiscreted":
            if step["argmax"]:
                pred = np.argmax(pred, axis=0)[None].astype(np.float32)
            else:
                pred = (pred >= step["threshold"]).astype(np.float32)
            discrete = True
        elif step.transform == "Lambdad":
            value = np.zeros(pred.shape[1:], dtype=np.float32)
            for channel, label in reversed(step["rules"]):  # first rule wins: paint it last
                value[pred[channel] > 0] = label
            labels = value.astype(np.uint8)
            pred = value[None]
    if not on_input:  # no Invertd (the import refuses that when a spatial step moved the grid)
        pred = invert(pred, case, nearest=discrete)
    if probabilities is None:  # no activation: the (inverted) network output
        probabilities, probs_on_input = pred, True
    if not probs_on_input:  # the bundle discretized before inverting (wholeBody): linear here
        probabilities = invert(probabilities, case, nearest=False)
    if labels is None:
        if not discrete:  # no AsDiscreted: what the activation implies
            softmax = section.activation != "sigmoid"
            pred = (np.argmax(pred, axis=0)[None] if softmax else (pred >= 0.5)).astype(np.float32)
            discrete = True
        if pred.shape[0] == 1 and (section.activation != "sigmoid" or not region_values):
            labels = np.rint(pred[0]).astype(np.uint8)
        else:
            labels = np.zeros(pred.shape[1:], dtype=np.uint8)
            for channel, label in enumerate(region_values or range(1, len(pred) + 1)):
                labels[pred[channel] > 0] = label
    return labels, np.ascontiguousarray(probabilities, dtype=np.float32)


def segment_bundle_package(package: Any, images: Union[Any, Sequence[Any]], device: Any = "cpu",
                           return_probabilities: bool = False, networks: Optional[Sequence[Any]] = None,
                           ) -> Union[sitk.Image, Tuple[sitk.Image, np.ndarray]]:
    """Segment one case with an imported MONAI bundle package (``monai`` section), as ``monai.bundle run``.

    ``images``: one path or SimpleITK image per input channel (the manifest's ``inputs`` order);
    channels on other grids are first resampled onto the first one's. Returns a uint8 label
    map on the first input's exact grid (see the module docstring for region models), and with
    ``return_probabilities`` also the activated channels (C, z, y, x) float32 on that grid.
    ``networks``: already loaded ``package.load_networks(device)`` (kept warm by a caller).
    """
    manifest = package.manifest
    data = manifest.to_dict()
    out_channels = data["kwargs"].get("out_channels")
    section = check_monai_section(data.get("monai"), manifest.num_inputs,
                                  out_channels if isinstance(out_channels, int) else None)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    inputs = io.read_images(items)
    if len(inputs) != manifest.num_inputs:
        names = ", ".join(manifest.input_modalities)
        raise InputError(f"model '{manifest.name}' expects {manifest.num_inputs} input image(s) ({names}), "
                         f"got {len(inputs)}; pass one image per input in that order")
    aligned = geometry.align_to_reference(inputs)
    nets = list(networks) if networks is not None else package.load_networks(device)
    regions = [s.value for s in manifest.segments] if manifest.output_type == "sigmoid" else []
    first = items[0]
    nifti = isinstance(first, (str, os.PathLike)) and str(first).lower().endswith((".nii", ".nii.gz"))
    labels, probabilities = run_section(nets, aligned, section, regions, device, nifti_affine=nifti)
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(inputs[0])
    return (result, probabilities) if return_probabilities else result
