"""Slice mode: a 2.5D model (architecture ``unet25d``) segments one slice of an image's own grid.

:class:`SliceSegmenter` keeps the image's normalized voxels warm (cached, keyed on the
image's grid and a checksum of its voxels), so each :meth:`SliceSegmenter.segment_slice`
call only samples ``2k+1`` planes and runs the 2D network once: the real-time path behind
``Segmenter.segment_slice`` (issue #23).

Geometry. The image array is ``(C, z, y, x)`` (SimpleITK order). A slice is a plane of the
image's own grid: ``axis="axial"`` fixes numpy axis 0 (the image's k index), ``"coronal"``
axis 1 (j), ``"sagittal"`` axis 2 (i); for an oblique image these are the grid's planes,
not the patient's. The network sees a *slab* on the image's own axes at the model's spacing:
its rows and columns are the slice's two in-plane axes (in numpy order) resampled to the
model's y and x spacing, its ``2k+1`` planes lie ``-k..k`` model z steps along the slice
axis (clamped at the image's ends: the edge plane repeats). All resampling is separable
linear interpolation along the grid's own axes, so no world-space resampling is done per call
and the slice's labels come back on exactly its own pixels (probabilities interpolated
linearly, then argmax). The slab's plane is run in tiles of the training patch's (y, x) size
(:mod:`tumorseg_core.inference.plane_tiles`: the manifest's overlap, Gaussian blending, zero
padding where the plane is smaller), as the network was trained and as the trainer validates it.

:meth:`SliceSegmenter.segment_volume` runs every slice along one axis (the same computation
as :meth:`~SliceSegmenter.segment_slice` for each index) or along all three and averages
the probabilities (tri-planar), then applies the manifest's postprocessing on the image grid.

Backends: the fastest CPU backend (``auto``: OpenVINO, ONNX Runtime, torch) runs the plain 2D
network (:class:`~tumorseg_core.models.unet25d.CentreSliceNet`) on tiles of one shape, exported
once and cached like every export (keyed by the package's sha256). A package quantized by
``tumorseg quantize`` (manifest section ``int8``) holds that same network as INT8 graphs
taking ``(1, C*(2k+1), 1, th, tw)`` tiles; ``precision`` chooses them exactly as the 3D
Predictor does (:func:`~tumorseg_core.inference.backends.int8.int8_wanted`: ``auto`` on the
CPU with an exported backend, ``int8`` insists, ``fp32`` never), each graph hashed again as
it is read.
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import InputError
from tumorseg_core.imaging import geometry, postprocess, preprocess
from tumorseg_core.imaging.io import read_images
from tumorseg_core.inference.plane_tiles import plane_tiles, softmax, tiled_probabilities

logger = logging.getLogger(__name__)

ARCHITECTURE = "unet25d"
# Slice axis name -> numpy axis of a (z, y, x) array.
AXES: Dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
DEFAULT_OVERLAP = 0.25  # tiles' overlap when the manifest sets none
TILE_BATCH = 16  # tiles of a plane run as one batch (a 256 x 256 plane at the model spacing is 16 tiles)


def axis_index(axis: Union[str, int]) -> int:
    """The numpy axis (0 z, 1 y, 2 x) of ``axis`` (a name of :data:`AXES` or 0, 1, 2)."""
    if isinstance(axis, str) and axis.strip().lower() in AXES:
        return AXES[axis.strip().lower()]
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) and 0 <= int(axis) <= 2:
        return int(axis)
    raise InputError(f"unknown slice axis {axis!r}; use axial, coronal or sagittal (or 0, 1, 2)")


class Interp1D:
    """Linear interpolation along one axis at positions ``r * step`` (r = 0..n_out-1, clamped to the
    input's ends): ``out[r] = (1 - w[r]) * in[lo[r]] + w[r] * in[lo[r] + 1]``; the identity is a no-op."""

    def __init__(self, n_out: int, n_in: int, step: float) -> None:
        pos = np.clip(np.arange(n_out, dtype=np.float64) * float(step), 0.0, n_in - 1.0)
        self.lo = np.floor(pos).astype(np.int64)
        self.hi = np.minimum(self.lo + 1, n_in - 1)
        self.w = (pos - self.lo).astype(np.float32)
        self.n_out = int(n_out)
        self.identity = n_out == n_in and bool(np.all(self.w == 0)) and bool(np.all(self.lo == np.arange(n_in)))

    def __call__(self, array: np.ndarray, axis: int) -> np.ndarray:
        """``array`` resampled along ``axis`` (float32; other axes unchanged)."""
        if self.identity:
            return array
        shape = [1] * array.ndim
        shape[axis] = self.n_out
        w = self.w.reshape(shape)
        return np.take(array, self.lo, axis=axis) * (1.0 - w) + np.take(array, self.hi, axis=axis) * w


class _Plan:
    """How one slice axis of one image maps to the network's slab (fixed per axis).

    Attributes:
        axis: numpy axis of the slices (0, 1, 2); ``n``: slices along it.
        offsets: (2k+1,) through-plane positions in image slice units, relative to the slice.
        down: (rows P -> H', columns Q -> W') image plane -> slab plane (:class:`Interp1D`).
        up: (rows H' -> P, columns W' -> Q) slab plane -> image plane.
        slab_size: (H', W'), the slab's plane at the model's spacing.
    """

    def __init__(self, axis: int, size_zyx: Sequence[int], spacing_zyx: Sequence[float],
                 model_spacing_zyx: Sequence[float], context: int) -> None:
        self.axis = axis
        self.n = int(size_zyx[axis])
        plane_axes = [a for a in range(3) if a != axis]
        through = float(model_spacing_zyx[0]) / float(spacing_zyx[axis])
        self.offsets = np.arange(-context, context + 1, dtype=np.float64) * through
        down, up = [], []
        for a, model_step in zip(plane_axes, (model_spacing_zyx[1], model_spacing_zyx[2])):
            n_in, ratio = int(size_zyx[a]), float(model_step) / float(spacing_zyx[a])
            n_out = int(np.floor((n_in - 1) / ratio + 1e-6)) + 1
            down.append(Interp1D(n_out, n_in, ratio))
            up.append(Interp1D(n_in, n_out, 1.0 / ratio))
        self.down: Tuple[Interp1D, Interp1D] = (down[0], down[1])
        self.up: Tuple[Interp1D, Interp1D] = (up[0], up[1])
        self.slab_size = (down[0].n_out, down[1].n_out)


class SliceSegmenter:
    """A 2.5D model package run slice by slice on an image's own grid, kept warm.

    Args:
        package: an opened :class:`~tumorseg_core.modelpkg.package.ModelPackage` whose
            architecture is ``unet25d``.
        backend: ``auto`` (fastest installed CPU backend), ``openvino``, ``onnxruntime``, ``torch``.
        device: where torch runs (the exported backends need the CPU).
        precision: ``auto``, ``fp32`` or ``int8`` (the package's INT8 graphs; see the module docstring).
        int8_graphs: per fold, a callable returning an INT8 graph's bytes to run instead of the
            package's (``tumorseg quantize`` checks graphs it has not written yet); implies INT8.
    """

    def __init__(self, package: Any, backend: str = "auto", device: str = "cpu", precision: str = "auto",
                 int8_graphs: Optional[Sequence[Callable[[], bytes]]] = None) -> None:
        manifest = package.manifest
        if manifest.architecture != ARCHITECTURE:
            raise InputError(f"model '{manifest.name}' is a {manifest.architecture} model; slice mode needs a "
                             f"2.5D model (architecture {ARCHITECTURE}); choose a unet25d package")
        if manifest.output_type != "softmax":
            raise InputError(f"model '{manifest.name}' has {manifest.output_type} outputs; slice mode needs softmax")
        self.package = package
        self.manifest = manifest
        self.backend = backend
        self.device = device
        self.precision = precision
        self._int8_graphs = list(int8_graphs) if int8_graphs else None
        kwargs = manifest.kwargs
        self.context = int(kwargs.get("context", 2))
        self.channels = int(manifest.num_inputs)
        self.model_spacing_zyx = tuple(float(s) for s in manifest.spacing_xyz[::-1])
        self.tile: Tuple[int, int] = (int(manifest.patch_size_zyx[1]), int(manifest.patch_size_zyx[2]))
        overlap = manifest.inference.get("overlap")
        self.overlap = float(DEFAULT_OVERLAP if overlap is None else overlap)
        self._runners: Optional[Tuple[str, List[Any], str]] = None
        self._lazy: Any = None  # LazyNetworks of the centre-slice networks (_networks)
        self._cache: Optional[Tuple[tuple, np.ndarray, sitk.Image]] = None
        self._plans: Dict[int, _Plan] = {}
        self.cache_misses = 0  # how often an image was read and normalized (tests, benchmarks)

    # --- the image, normalized once ------------------------------------------------------

    @staticmethod
    def _image_key(items: Sequence[Any]) -> tuple:
        """The cache key: per input its path (size, mtime) or grid plus a checksum of its voxels."""
        key = []
        for item in items:
            if isinstance(item, sitk.Image):
                view = sitk.GetArrayViewFromImage(item)
                checksum = zlib.adler32(np.ascontiguousarray(view).view(np.uint8).reshape(-1))
                key.append(("image", item.GetSize(), item.GetSpacing(), item.GetOrigin(), item.GetDirection(),
                            item.GetPixelIDValue(), item.GetNumberOfComponentsPerPixel(), checksum))
            elif isinstance(item, (str, os.PathLike)):
                path = os.fspath(item)
                try:
                    stat = os.stat(path)
                except OSError as exc:
                    raise InputError(f"cannot read {path}: {exc.strerror}; check the path") from exc
                key.append(("path", os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
            else:
                raise InputError(f"slice mode takes a SimpleITK image or a file path, not a {type(item).__name__}")
        return tuple(key)

    def normalized(self, images: Any) -> Tuple[np.ndarray, sitk.Image]:
        """``(volume (C, z, y, x) float32 normalized on the image's own grid, the first image)``, cached."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        key = self._image_key(items)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        inputs = read_images(items, channels=self.channels)
        if len(inputs) != self.channels:
            raise InputError(f"model '{self.manifest.name}' expects {self.channels} input image(s), got "
                             f"{len(inputs)}; pass one image per modality")
        if inputs[0].GetDimension() != 3:
            raise InputError(f"slice mode needs a 3D image, got {inputs[0].GetDimension()}D; give a volume")
        aligned = geometry.align_to_reference(inputs)
        arrays = [preprocess.normalize(sitk.GetArrayViewFromImage(image), channel.get("normalization", {}))
                  for image, channel in zip(aligned, self.manifest.inputs)]
        volume = np.ascontiguousarray(np.stack(arrays), dtype=np.float32)
        self._cache = (key, volume, inputs[0])
        self._plans = {}
        self.cache_misses += 1
        return volume, inputs[0]

    def clear_cache(self) -> None:
        """Forget the cached image (its voxels are freed)."""
        self._cache = None
        self._plans = {}

    def _plan(self, axis: int, reference: sitk.Image) -> _Plan:
        if axis not in self._plans:
            size_zyx = reference.GetSize()[::-1]
            spacing_zyx = reference.GetSpacing()[::-1]
            self._plans[axis] = _Plan(axis, size_zyx, spacing_zyx, self.model_spacing_zyx, self.context)
        return self._plans[axis]

    def network_plane(self, image: Any, axis: Union[str, int] = "axial") -> Tuple[int, int]:
        """The slab's plane (rows, columns) at the model's spacing for slices of ``image`` along ``axis``
        (the network runs it in tiles of :attr:`tile`)."""
        a = axis_index(axis)
        return self._plan(a, self.normalized(image)[1]).slab_size

    @property
    def backend_used(self) -> Optional[str]:
        """The backend that runs the network (None before the first slice)."""
        return self._runners[0] if self._runners else None

    @property
    def precision_used(self) -> Optional[str]:
        """``int8`` or ``fp32``: which network runs (None before the first slice)."""
        return self._runners[2] if self._runners else None

    # --- the network ----------------------------------------------------------------------

    def _runners_for_tiles(self) -> Tuple[str, List[Any], str]:
        """``(backend used, one runner per fold, precision used)`` for tiles of :attr:`tile` (exported once)."""
        if self._runners is None:
            from tumorseg_core.inference.backends import prepare_backend
            from tumorseg_core.inference.backends.int8 import int8_runners, int8_wanted

            package = self.package
            device = "cpu" if str(self.device) == "auto" else self.device
            in_channels = self.channels * (2 * self.context + 1)
            graphs = self._int8_graphs
            spec = self.manifest.int8
            if graphs is None and int8_wanted(self.precision, spec is not None, device, self.backend):
                graphs = [lambda n=n: package.read_verified(n) for n in spec.networks]
            if graphs:
                if len(graphs) != len(package.weight_files):
                    raise InputError(f"{len(graphs)} INT8 graph(s) for {len(package.weight_files)} fold(s); "
                                     "quantize the package again")
                used, runners = int8_runners(graphs, self.backend, device, (1, *self.tile), in_channels)
                self._runners = (used, runners, "int8")
                return self._runners

            used, runners = prepare_backend(self._networks(), self.backend, device, (1, *self.tile), in_channels,
                                            self._export_identities())
            self._runners = (used, runners, "fp32")
        return self._runners

    def _networks(self) -> Any:
        """The folds' float32 centre-slice networks, loaded (on :attr:`device`) only when something needs them."""
        if self._lazy is None:
            from tumorseg_core.inference.backends import LazyNetworks

            package, device = self.package, "cpu" if str(self.device) == "auto" else self.device

            def load() -> list:
                from tumorseg_core.inference.devices import import_torch
                from tumorseg_core.models.unet25d import CentreSliceNet

                return [CentreSliceNet(net).eval() for net in package.load_networks(import_torch().device(device))]

            self._lazy = LazyNetworks(load, len(package.weight_files))
        return self._lazy

    def _export_identities(self) -> List[str]:
        return [f"{self.package.sha256}:{f.name}:centre-slice" for f in self.package.weight_files]

    def export_specs(self) -> List[Any]:
        """One :class:`~tumorseg_core.inference.backends.export.ExportSpec` per fold: the float32 centre-slice
        network on ``(1, C*(2k+1), 1, th, tw)`` tiles, as the exported backends cache it (``tumorseg quantize``)."""
        from tumorseg_core.inference.backends.export import ExportSpec

        networks, channels = self._networks(), self.channels * (2 * self.context + 1)
        return [ExportSpec(lambda i=i: networks.modules()[i], identity, (1, *self.tile), channels)
                for i, identity in enumerate(self._export_identities())]

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        """``tiles`` (n, C*(2k+1), th, tw) -> softmax probabilities (n, K, th, tw), mean over folds.

        The tiles go as one batch of z = 1 windows (every backend takes a batch of windows)."""
        used, runners, _ = self._runners_for_tiles()
        batch = np.ascontiguousarray(tiles[:, :, None], dtype=np.float32)
        total = None
        for runner in runners:
            if used == "torch":
                import torch

                param = next(runner.parameters())
                with torch.inference_mode():
                    logits = runner(torch.from_numpy(batch).to(param.device)).float().cpu().numpy()
            else:
                logits = np.asarray(runner(batch), dtype=np.float32)
            probs = softmax(logits[:, :, 0], axis=1)
            total = probs if total is None else total + probs
        return total / len(runners)

    # --- slices ---------------------------------------------------------------------------

    def _slab(self, volume: np.ndarray, plan: _Plan, index: int) -> np.ndarray:
        """The network's plane for slice ``index``: (C*(2k+1), H', W') float32 at the model's spacing."""
        moved = np.moveaxis(volume, 1 + plan.axis, 1)  # (C, n, P, Q), a view
        pos = np.clip(index + plan.offsets, 0.0, plan.n - 1.0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, plan.n - 1)
        w = (pos - lo).astype(np.float32)[None, :, None, None]
        planes = moved[:, lo] * (1.0 - w) + moved[:, hi] * w  # (C, 2k+1, P, Q)
        rows, cols = plan.down
        slab = cols(rows(planes, 2), 3)  # (C, 2k+1, H', W')
        return np.ascontiguousarray(slab.reshape(-1, *slab.shape[2:]), dtype=np.float32)

    def _slice_probabilities(self, volume: np.ndarray, plan: _Plan, index: int) -> np.ndarray:
        """Probabilities (K, P, Q) on slice ``index``'s own pixels (P, Q: its in-plane sizes, numpy order)."""
        probs = tiled_probabilities(self._slab(volume, plan, index), self.tile, self.overlap, self._run,
                                    batch=TILE_BATCH)
        up_rows, up_cols = plan.up
        return up_cols(up_rows(probs, 1), 2)

    def _check_index(self, index: Any, plan: _Plan, axis_name: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InputError(f"slice index must be a whole number, got {index!r}")
        if not 0 <= int(index) < plan.n:
            raise InputError(f"slice index {index} is outside the image: {axis_name} slices are 0..{plan.n - 1}")
        return int(index)

    def slice_tiles(self, image: Any, index: int, axis: Union[str, int] = "axial") -> np.ndarray:
        """The tiles the network runs for one slice: (n, C*(2k+1), th, tw) float32 (calibration, tests)."""
        a = axis_index(axis)
        volume, reference = self.normalized(image)
        plan = self._plan(a, reference)
        return plane_tiles(self._slab(volume, plan, self._check_index(index, plan, axis)), self.tile, self.overlap)

    def slice_probabilities(self, image: Any, index: int, axis: Union[str, int] = "axial") -> np.ndarray:
        """Softmax probabilities (K, P, Q) float32 of one slice on its own pixels (P, Q in numpy order)."""
        a = axis_index(axis)
        volume, reference = self.normalized(image)
        plan = self._plan(a, reference)
        return self._slice_probabilities(volume, plan, self._check_index(index, plan, axis))

    def segment_slice(self, image: Any, index: int, axis: Union[str, int] = "axial") -> np.ndarray:
        """Labels of one slice of the image's own grid: uint8 (P, Q).

        ``axial``: ``array[index]`` of the (z, y, x) array, shape (y, x); ``coronal``:
        ``array[:, index]``, (z, x); ``sagittal``: ``array[:, :, index]``, (z, y). No
        postprocessing (its rules are 3D).
        """
        return self.slice_probabilities(image, index, axis).argmax(axis=0).astype(np.uint8)

    def volume_probabilities(self, image: Any, axes: Sequence[Union[str, int]] = ("axial",)) -> np.ndarray:
        """Probabilities (K, z, y, x) on the image grid: every slice along each of ``axes``, averaged."""
        if isinstance(axes, (str, int)) or not len(axes):
            raise InputError("axes must be a non-empty list of slice axes, e.g. ['axial'] or all three")
        numbers = sorted({axis_index(a) for a in axes})
        volume, reference = self.normalized(image)
        total: Optional[np.ndarray] = None
        for a in numbers:
            plan = self._plan(a, reference)
            out = None
            for index in range(plan.n):
                probs = self._slice_probabilities(volume, plan, index)
                if out is None:
                    out = np.zeros((probs.shape[0], *volume.shape[1:]), dtype=np.float32)
                np.moveaxis(out, 1 + a, 1)[:, index] = probs
            total = out if total is None else total + out
        assert total is not None
        return total / len(numbers)

    def segment_volume(self, image: Any, axes: Sequence[Union[str, int]] = ("axial",),
                       postprocess_labels: bool = True) -> sitk.Image:
        """A uint8 label map on the image's exact grid from every slice along ``axes``.

        One axis: each slice as :meth:`segment_slice` gives it; several (tri-planar:
        ``("axial", "coronal", "sagittal")``): the mean of their probabilities, then argmax.
        The manifest's postprocessing runs on the image grid unless ``postprocess_labels`` is False.
        """
        probs = self.volume_probabilities(image, axes)
        labels = probs.argmax(axis=0).astype(np.uint8)
        reference = self._cache[2] if self._cache is not None else None
        assert reference is not None
        if postprocess_labels and self.manifest.postprocessing:
            labels = postprocess.postprocess_labels(labels, reference.GetSpacing(), self.manifest.postprocessing)
        result = sitk.GetImageFromArray(labels)
        result.CopyInformation(reference)
        return result
