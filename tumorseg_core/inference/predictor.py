"""Stateful sliding-window predictor: load the networks once, segment many volumes.

The loop is nnU-Net's, in small pieces: pad to the patch, tile with evenly spread
windows, run every network (ensemble members, optional flip TTA) on a batch of
windows, weight by a Gaussian and add into accumulators on the CPU, then argmax (softmax
models) or threshold ordered regions (sigmoid models) at model resolution.

Memory: :meth:`Predictor.predict` streams the Gaussian-weighted sums through a band of
``pz`` slices (:mod:`~tumorseg_core.inference.stitching`): slices that every window has
reached become uint8 labels at once, so the only full-volume buffer is the label map,
whatever the number of classes. Sums are float32 (the Gaussian floor is 1e-3, and float16
could not hold probability x weight products that small); softmax background is never
stored (it is the weight minus the foreground sums). GPU memory depends only on the
window batch. Per-window outputs are never kept.

torch is imported only for the torch backend (or to build a missing export): with an
exported CPU backend the windows are numpy arrays end to end (``window_batch.py``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tumorseg_core.errors import CancelledError, InputError, ModelPackageError, TumorSegError
from tumorseg_core.inference.backends import LazyNetworks, prepare_backend
from tumorseg_core.inference.backends.int8 import int8_wanted
from tumorseg_core.inference.devices import device_name
from tumorseg_core.inference.roi_windows import windows_to_run
from tumorseg_core.inference.slice_mode import ARCHITECTURE as SLICE_MODE_ARCHITECTURE
from tumorseg_core.inference.sliding_window import SlabWeights, gaussian_weights, pad_to_window
from tumorseg_core.inference.stitching import LABEL_SLAB, BandStitcher
from tumorseg_core.inference.tta import flip_axes_combinations
from tumorseg_core.inference.window_batch import run_batch_numpy, run_batch_torch
from tumorseg_core.inference.window_skipping import windows_in_body

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
Starts = Sequence[tuple[int, int, int]]

# Windows per batch on a GPU when the caller does not say; the OOM fallback halves it.
_GPU_WINDOW_BATCH = 4


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (the type, or a RuntimeError saying so)."""
    torch = sys.modules.get("torch")  # no torch loaded: no torch device to run out of memory on
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_conv_in_channels(net: Any) -> int | None:
    """Input channels of the first convolution in the ``nn.Module`` ``net``, or None if it has none."""
    from torch import nn

    for module in net.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(module.in_channels)
    return None


def _device_for(device: Any, backend: Any) -> str:
    """The device name to run on; an exported (CPU-only) backend named explicitly makes "auto" the CPU."""
    from tumorseg_core.inference.backends import CPU_BACKENDS

    cpu_only = str(backend or "torch").lower() in CPU_BACKENDS
    return device_name("cpu" if cpu_only and str(device) == "auto" else device)


class Predictor:
    """Sliding-window inference with one or more networks (averaged as an ensemble).

    Args:
        networks: modules mapping (B, C, z, y, x) float32 to (B, num_outputs, z, y, x)
            logits (a list/tuple output, as from deep supervision, uses its first item),
            or :class:`~tumorseg_core.inference.backends.LazyNetworks` that load them
            only if the backend needs the modules.
        patch_size_zyx: window size (z, y, x); z = 1 for 2D-style networks.
        num_outputs: network output channels. Softmax: classes including background
            (channel k = label value k). Sigmoid: regions (channel k-1 = region k).
        output_type: ``"softmax"`` or ``"sigmoid"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a torch.device.
        overlap: window overlap fraction in [0, 1).
        window_batch: windows per forward pass (default 1 on CPU, 4 on CUDA).
        tta: average over flips of every spatial axis whose patch size is > 1.
        amp: autocast to float16 on CUDA (ignored elsewhere).
        sigma_scale: Gaussian sigma as a fraction of the patch size.
        region_values: sigmoid only: label value painted for each channel (default 1..K).
        in_channels: expected input channels (default: read from the first conv layer).
        modalities: input names, used in the channel-count error message.
        size_divisor: the architecture's required window-size multiple, int or (z, y, x).
        backend: ``"torch"`` (default), ``"onnxruntime"``, ``"openvino"`` or ``"auto"``
            (see :mod:`tumorseg_core.inference.backends`); ``.backend`` is the one used.
        export_identities: per network, a stable name for the export cache (default: a
            hash of its weights).
        stored_graph: the networks are imported ONNX graphs (architecture ``onnx``),
            never re-exported: ``auto`` runs them through torch (ONNX Runtime inside).
        int8_graphs: per network, a callable returning its INT8 ONNX graph's verified bytes
            (the package's ``int8`` section): these run instead of the float32 networks, on
            the CPU (:mod:`~tumorseg_core.inference.backends.int8`); ``.precision`` says which ran.

    ``skip_background`` (attribute, default False; the Segmenter sets it from
    ``SegmentOptions.skip_background``): windows wholly outside the body are not run and
    count as background (:mod:`~tumorseg_core.inference.window_skipping`);
    ``windows_skipped`` is how many of the last prediction's ``windows_total`` it skipped.
    """

    def __init__(
        self,
        networks: Sequence[nn.Module] | LazyNetworks,
        patch_size_zyx: Sequence[int],
        num_outputs: int,
        output_type: str = "softmax",
        device: str | torch.device = "auto",
        overlap: float = 0.5,
        window_batch: int | None = None,
        tta: bool = False,
        amp: bool = True,
        sigma_scale: float = 0.125,
        region_values: Sequence[int] | None = None,
        in_channels: int | None = None,
        modalities: Sequence[str] | None = None,
        size_divisor: int | Sequence[int] = 1,
        backend: str = "torch",
        export_identities: Sequence[str] | None = None,
        stored_graph: bool = False,
        int8_graphs: Sequence[Callable[[], bytes]] | None = None,
    ) -> None:
        if not len(networks):
            raise ModelPackageError("the model has no networks (weight files); reinstall the model package")
        self.patch_size_zyx = tuple(int(p) for p in patch_size_zyx)
        if len(self.patch_size_zyx) != 3 or min(self.patch_size_zyx) < 1:
            raise ModelPackageError(f"patch size must be 3 positive sizes, got {tuple(patch_size_zyx)}; fix the manifest")
        divisor = (size_divisor,) * 3 if isinstance(size_divisor, int) else tuple(int(d) for d in size_divisor)
        if any(p % d and p > 1 for p, d in zip(self.patch_size_zyx, divisor)):
            raise ModelPackageError(
                f"patch size {self.patch_size_zyx} (z, y, x) is not a multiple of {divisor}, "
                "which this architecture needs; fix patch_size in the manifest"
            )
        if output_type not in ("softmax", "sigmoid"):
            raise ModelPackageError(f"unknown output type '{output_type}'; use softmax or sigmoid")
        self.output_type = output_type
        self.num_outputs = int(num_outputs)
        if output_type == "softmax" and not 2 <= self.num_outputs <= 256:
            raise ModelPackageError(f"a softmax model needs 2..256 output channels, got {num_outputs}")
        if output_type == "sigmoid":
            values = list(range(1, self.num_outputs + 1)) if region_values is None else [int(v) for v in region_values]
            if len(values) != self.num_outputs or not all(1 <= v <= 255 for v in values):
                raise ModelPackageError(
                    f"sigmoid regions need one value in 1..255 per output channel ({self.num_outputs}), got {values}"
                )
            self.region_values: tuple[int, ...] = tuple(values)
        else:
            self.region_values = tuple(range(1, self.num_outputs))
        if sigma_scale <= 0:
            raise TumorSegError(f"sigma scale must be positive, got {sigma_scale}; try 0.125")
        self.sigma_scale = float(sigma_scale)
        self.amp = bool(amp)
        self.modalities = tuple(modalities) if modalities else None
        self._device_name = device_name(device)
        if not isinstance(networks, LazyNetworks):  # modules given: torch is in use anyway
            networks = LazyNetworks.of([net.to(self.device).eval() for net in networks])
        lazy = networks
        self.in_channels = in_channels if in_channels is not None else _first_conv_in_channels(lazy.modules()[0])
        # Window runners: the modules themselves (torch), cached exports (CPU backends) or INT8 graphs.
        self.precision = "int8" if int8_graphs else "fp32"
        if int8_graphs:
            from tumorseg_core.inference.backends.int8 import int8_runners

            if len(int8_graphs) != len(lazy) or self.in_channels is None:
                raise ModelPackageError("the model's INT8 networks do not match its networks; quantize it again")
            self.backend, self.networks = int8_runners(int8_graphs, backend, self._device_name, self.patch_size_zyx,
                                                       self.in_channels)
        else:
            self.backend, self.networks = prepare_backend(
                lazy, backend, self._device_name, self.patch_size_zyx, self.in_channels, export_identities,
                stored_graph=stored_graph,
            )
        # Settings the warm pipeline may change between calls (validated setters below).
        self.overlap = overlap
        self.window_batch = window_batch
        self.tta = tta
        self._gaussian = gaussian_weights(self.patch_size_zyx, self.sigma_scale)
        self.skip_background = False
        self.windows_skipped = self.windows_total = 0

    @classmethod
    def from_package(cls, package: Any, device: str | torch.device = "auto", **options: Any) -> Predictor:
        """Build from an opened ``ModelPackage``: the manifest's settings, then ``options`` on top.

        :meth:`Manifest.predictor_settings` gives the window, outputs, inputs and the
        manifest's ``inference`` defaults; ``None`` in ``options`` means "use the default".
        The networks are :class:`~tumorseg_core.inference.backends.LazyNetworks`: the weights
        are loaded (and torch imported) only if the backend needs the modules. ``precision``
        (``auto``/``fp32``/``int8``, default ``auto``) picks the package's INT8 graphs where
        :func:`~tumorseg_core.inference.backends.int8.int8_wanted` says so.
        """
        settings = package.manifest.predictor_settings()
        settings.update({key: value for key, value in options.items() if value is not None})
        name = _device_for(device, settings.get("backend"))
        settings.setdefault("export_identities", [f"{package.sha256}:{f.name}" for f in package.weight_files])
        settings.setdefault("stored_graph", getattr(package.manifest, "architecture", None) == "onnx")
        # precision (SegmentOptions.precision): the package's INT8 graphs on the CPU when it has them
        int8 = getattr(package.manifest, "int8", None)
        precision = settings.pop("precision", "auto")
        if int8 is not None and getattr(package.manifest, "architecture", None) == SLICE_MODE_ARCHITECTURE:
            # a 2.5D model's INT8 graphs are its slice-mode network (2D tiles), not 3D windows
            if str(precision).strip().lower() == "int8":
                raise TumorSegError(f"model '{package.manifest.name}' has an INT8 network for slice mode only; "
                                    "use --precision auto or fp32 for whole volumes")
            int8 = None
        if int8_wanted(precision, int8 is not None, name, settings.get("backend")):
            settings["int8_graphs"] = [lambda n=n: package.read_verified(n) for n in int8.networks]

        def load() -> list:
            from tumorseg_core.inference.devices import import_torch

            return list(package.load_networks(import_torch().device(name)))

        return cls(LazyNetworks(load, len(package.weight_files)), device=name, **settings)

    @classmethod
    def for_cascade(cls, package: Any, device: str | torch.device = "auto", **options: Any) -> Predictor:
        """The package's dedicated coarse network (manifest ``cascade``) as a Predictor.

        Same inputs, output type, backend and window batch as the package's networks and the
        manifest's overlap (a user's ``overlap`` is about the full-resolution windows); the
        coarse network's own architecture and window, no TTA, its own export cache entry.
        """
        from tumorseg_core.models.registry import size_divisor

        spec = package.manifest.cascade
        if spec is None:
            raise ModelPackageError(f"model '{package.manifest.name}' has no cascade network")
        settings = package.manifest.predictor_settings()
        settings.update({key: value for key, value in options.items() if value is not None and key != "overlap"})
        name = _device_for(device, settings.get("backend"))
        settings.update(patch_size_zyx=tuple(spec.patch_size_zyx), tta=False,
                        size_divisor=tuple(int(d) for d in size_divisor(spec.architecture, dict(spec.kwargs))),
                        export_identities=[f"{package.sha256}:{spec.weights}"])
        if spec.kwargs.get("out_channels") is not None:
            settings["num_outputs"] = int(spec.kwargs["out_channels"])

        def load() -> list:
            from tumorseg_core.inference.devices import import_torch

            return [package.load_cascade_network(import_torch().device(name))]

        return cls(LazyNetworks(load, 1), device=name, **settings)

    @property
    def device(self) -> torch.device:
        """Where the windows run, as a ``torch.device`` (reading it imports torch)."""
        from tumorseg_core.inference.devices import import_torch

        return import_torch().device(self._device_name)

    @property
    def device_type(self) -> str:
        """``cpu``, ``cuda`` or ``mps`` (no torch needed)."""
        return self._device_name.split(":")[0]

    @property
    def overlap(self) -> float:
        """Window overlap fraction in [0, 1)."""
        return self._overlap

    @overlap.setter
    def overlap(self, value: float) -> None:
        if not 0.0 <= float(value) < 1.0:
            raise TumorSegError(f"overlap must be at least 0 and below 1, got {value}; try 0.5")
        self._overlap = float(value)

    @property
    def window_batch(self) -> int:
        """Windows per forward pass; setting None picks 1 on CPU, 4 on CUDA."""
        return self._window_batch

    @window_batch.setter
    def window_batch(self, value: int | None) -> None:
        if value is None:
            value = _GPU_WINDOW_BATCH if self.device_type == "cuda" else 1
        if int(value) < 1:
            raise TumorSegError(f"window batch must be at least 1, got {value}")
        self._window_batch = int(value)

    @property
    def tta(self) -> bool:
        """Whether flip test-time augmentation is on."""
        return self._tta

    @tta.setter
    def tta(self, value: bool) -> None:
        self._tta = bool(value)
        # Flipping a size-1 axis is a no-op, so 2D-style (z = 1) models get 4 passes, not 8.
        axes = tuple(2 + i for i, p in enumerate(self.patch_size_zyx) if p > 1)
        self._flips = flip_axes_combinations(axes) if self._tta else [()]

    # ------------------------------------------------------------------ public API

    def predict(
        self, volume: np.ndarray, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
        region: np.ndarray | None = None, starts: Starts | None = None,
    ) -> np.ndarray:
        """Label map (z, y, x) uint8 at model resolution for a (C, z, y, x) float32 volume.

        Softmax: argmax over classes (label value = channel index). Sigmoid: each region
        channel thresholded at 0.5 and painted with its value in channel order (later
        regions overwrite earlier ones). ``region`` (z, y, x) bool: everything outside it
        is background; without ``starts`` only the grid windows touching it run (inside
        it the result equals the exhaustive one, since every window covering a region
        voxel runs). ``starts``: explicit window corners (z, y, x) on the grid padded by
        ``pad_to_window(volume, patch_size_zyx)``, e.g. from
        :func:`~tumorseg_core.inference.roi_windows.roi_window_starts`; they must cover
        every ``region`` voxel (ValueError otherwise).
        """
        return self._predict(volume, progress, cancel, region, starts, uncertainty=False)[0]

    def predict_with_uncertainty(
        self, volume: np.ndarray, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
        region: np.ndarray | None = None, starts: Starts | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, uncertainty)`` on the model grid: :meth:`predict`'s labels (bit-identical)
        and the normalised predictive entropy (z, y, x) float32 in [0, 1] of the same mean
        probabilities (over windows, networks and TTA flips; see
        :mod:`~tumorseg_core.inference.uncertainty`). Voxels no window reached (outside
        ``region``) get 0. Costs one more float32 volume, never one per pass.
        """
        labels, uncertainty = self._predict(volume, progress, cancel, region, starts, uncertainty=True)
        assert uncertainty is not None
        return labels, uncertainty

    def _predict(
        self, volume: np.ndarray, progress: ProgressFn | None, cancel: CancelFn | None,
        region: np.ndarray | None, starts: Starts | None, uncertainty: bool,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels, and the uncertainty map if asked (else None), through the band stitcher."""
        array = self._check_volume(volume)
        stitcher: BandStitcher | None = None

        def begin(spatial: tuple[int, int, int], weights: SlabWeights) -> None:
            nonlocal stitcher
            stitcher = BandStitcher(spatial, self._sum_channels, self.patch_size_zyx, weights.padded,
                                    self.output_type, self.region_values, uncertainty=uncertainty)

        undo, weights = self._run_windows(array, progress, cancel, region, starts, begin,
                                          lambda start, out: stitcher.add(start, out))  # type: ignore[union-attr]
        assert stitcher is not None
        labels = stitcher.result()[undo[1:]]
        if starts is not None and region is not None:
            for z0 in range(0, labels.shape[0], LABEL_SLAB):
                z1 = min(z0 + LABEL_SLAB, labels.shape[0])
                if not (weights.slab(z0, z1)[region[z0:z1]] > 0).all():
                    raise ValueError("the given windows leave some region voxels uncovered")
        labels = np.ascontiguousarray(labels)
        entropy = None
        if stitcher.uncertainty is not None:
            entropy = np.ascontiguousarray(stitcher.uncertainty[undo[1:]])
        if region is not None:
            labels[~region] = 0
            if entropy is not None:
                entropy[~region] = 0.0
        return labels, entropy

    def predict_probabilities(
        self, volume: np.ndarray, progress: ProgressFn | None = None, cancel: CancelFn | None = None
    ) -> np.ndarray:
        """Foreground probabilities, float32 (K, z, y, x), same windows as :meth:`predict`.

        Softmax: K = num_outputs - 1, channel k-1 is P(label k) (background dropped).
        Sigmoid: K = num_outputs, channel k-1 is P(region k).
        """
        acc, weights = self._stitch(volume, progress, cancel)
        out = np.empty(acc.shape, dtype=np.float32)
        for z0 in range(0, acc.shape[1], LABEL_SLAB):
            z1 = min(z0 + LABEL_SLAB, acc.shape[1])
            np.divide(acc[:, z0:z1], weights.slab(z0, z1)[None], out=out[:, z0:z1])
        return out

    # ------------------------------------------------------------------ internals

    def _check_volume(self, volume: np.ndarray) -> np.ndarray:
        """Validate a (C, z, y, x) input and return it as float32."""
        array = np.asarray(volume)
        if array.ndim != 4:
            raise InputError(f"expected a (channels, z, y, x) volume, got shape {array.shape}; stack the inputs first")
        if self.in_channels is not None and array.shape[0] != self.in_channels:
            names = f" ({', '.join(self.modalities)})" if self.modalities else ""
            raise InputError(
                f"model expects {self.in_channels} input channels{names}, got {array.shape[0]}; "
                "give one image per model input, in the manifest's order"
            )
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise InputError("the input contains NaN or infinite values; check the image and its normalization")
        return array

    def _stitch(
        self, volume: np.ndarray, progress: ProgressFn | None, cancel: CancelFn | None,
        region: np.ndarray | None = None, explicit: Starts | None = None,
    ) -> tuple[np.ndarray, SlabWeights]:
        """Run the windows into full-volume sums; return (acc (K', z, y, x) on the volume's grid, the weights).

        ``acc`` holds sum(gaussian x probabilities) of the foreground channels (K' = K - 1
        for softmax, K for sigmoid). Only :meth:`predict_probabilities` needs all of it;
        :meth:`predict` streams the same sums through a band instead.
        """
        array = self._check_volume(volume)
        acc: np.ndarray | None = None

        def begin(spatial: tuple[int, int, int], weights: SlabWeights) -> None:
            nonlocal acc
            acc = np.zeros((self._sum_channels, *spatial), dtype=np.float32)

        def add(start: tuple[int, int, int], out: np.ndarray) -> None:
            z, y, x = start
            acc[:, z : z + out.shape[1], y : y + out.shape[2], x : x + out.shape[3]] += out  # type: ignore[index]

        undo, weights = self._run_windows(array, progress, cancel, region, explicit, begin, add)
        assert acc is not None
        return acc[undo], weights

    @property
    def _sum_channels(self) -> int:
        """Channels stitched: softmax background is implied by the weights (never stored)."""
        return self.num_outputs - (self.output_type == "softmax")

    def _run_windows(
        self, array: np.ndarray, progress: ProgressFn | None, cancel: CancelFn | None,
        region: np.ndarray | None, explicit: Starts | None,
        begin: Callable[[tuple[int, int, int], SlabWeights], None],
        add: Callable[[tuple[int, int, int], np.ndarray], None],
    ) -> tuple[tuple, SlabWeights]:
        """Run the windows in z order and hand each weighted output to ``add``.

        Windows: ``explicit`` starts (padded grid) if given, else the grid, restricted to
        the windows touching ``region`` ((z, y, x) bool) if that is given. ``begin``
        receives the padded shape and the weights first. Returns (``pad_to_window``'s
        undo, the weights).
        """
        padded, undo = pad_to_window(array, self.patch_size_zyx)
        spatial = padded.shape[1:]
        if region is not None and region.shape != array.shape[1:]:
            raise ValueError(f"region shape {region.shape} differs from the volume's {array.shape[1:]}")
        starts = windows_to_run(spatial, self.patch_size_zyx, self.overlap, region, explicit)
        weights = SlabWeights(self._gaussian, starts, undo, spatial)
        begin(tuple(spatial), weights)  # type: ignore[arg-type]
        self.windows_total = len(starts)
        if self.skip_background:  # after the weights: a skipped window still weighs, as background
            run = windows_in_body(array, starts, self.patch_size_zyx)
            self.windows_skipped, starts = len(starts) - len(run), run
        else:
            self.windows_skipped = 0
        n = len(starts)
        pz, py, px = self.patch_size_zyx
        logger.info(
            "sliding window: %d windows of %s (z, y, x) on %s (%s), batch %d, %d pass(es) x %d network(s)",
            n, self.patch_size_zyx, self._device_name, self.backend, self.window_batch, len(self._flips), len(self.networks),
        )
        gaussian = self._gaussian_for_backend()
        done = 0
        while done < n:
            if cancel is not None and cancel():
                raise CancelledError()
            batch_starts = starts[done : done + self.window_batch]
            windows = np.stack([padded[:, z : z + pz, y : y + py, x : x + px] for z, y, x in batch_starts])
            try:
                out = self._run_batch(windows, gaussian)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                self._recover_from_oom(exc)
                gaussian = self._gaussian_for_backend()
                continue  # retry the same windows with the smaller batch / new device
            for start, window_out in zip(batch_starts, out):
                add(start, window_out)
            done += len(batch_starts)
            if progress is not None:
                progress(done / n, f"window {done}/{n}")
        return undo, weights

    def _gaussian_for_backend(self) -> Any:
        """The window weights where the runners need them: numpy, or a tensor on the device."""
        if self.backend != "torch":
            return self._gaussian
        import torch

        return torch.from_numpy(self._gaussian).to(self.device)

    def _run_batch(self, windows: np.ndarray, gaussian: Any) -> np.ndarray:
        """(B, C, z, y, x) windows -> Gaussian-weighted mean probabilities, (B, K', z, y, x) numpy."""
        if self.backend != "torch":
            return run_batch_numpy(self.networks, windows, gaussian, self._flips, self.output_type, self.num_outputs)
        return run_batch_torch(self.networks, windows, gaussian, self.device, self._flips, self.output_type,
                               self.num_outputs, self.amp)

    def _recover_from_oom(self, exc: BaseException) -> None:
        """Halve the window batch; at batch 1 move to the CPU; on the CPU give up."""
        if self.device_type == "cuda":
            import torch

            torch.cuda.empty_cache()
        if self.window_batch > 1:
            self.window_batch = max(1, self.window_batch // 2)
            logger.warning("out of memory on %s; retrying with %d window(s) per batch", self.device, self.window_batch)
            return
        if self.device_type != "cpu":
            logger.warning("out of memory on %s even with 1 window per batch; continuing on the CPU (slower)",
                           self._device_name)
            self._device_name = "cpu"
            self.networks = [net.to(self.device) for net in self.networks]
            return
        raise TumorSegError(
            "out of memory on the CPU even with 1 window per batch; close other programs or use a smaller model"
        ) from exc
