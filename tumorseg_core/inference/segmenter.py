"""``segment()``: the one function every front door (CLI, Slicer worker, scripts) calls.

read → align inputs onto the first grid → (denoise) → to the model grid → normalize
→ Predictor (argmax at model resolution) → postprocess → labels back to the first
input's exact grid (nearest neighbour, uint8; never float logits per class). On request
(``uncertainty=True``) also the normalised predictive entropy, made on the model grid
from the same stitched probabilities and brought back linearly (``uncertainty.py``).

Image files on one grid (NIfTI, MetaImage) are read straight onto the model grid slab by
slab (``stream_resample.py``): the whole input is never in memory; same grid, and the
same voxels up to float rounding of the sample positions.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from tumorseg_core.errors import CancelledError, InputError
from tumorseg_core.imaging import geometry, postprocess, preprocess, stream_resample
from tumorseg_core.imaging.io import check_output_path, read_images, write_image, write_labelmap
from tumorseg_core.inference import input_checks
from tumorseg_core.inference.uncertainty import (
    SegmentResult,
    check_uncertainty_path,
    entropy_of_probabilities,
    to_reference,
)
from tumorseg_core.options import SegmentOptions

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
ImageLike = Union[str, "sitk.Image", Any]

# Share of the progress bar given to each stage; the network dominates run time.
_READ, _PREPARE, _PREDICT_END = 0.05, 0.12, 0.92


def _report(progress: Optional[ProgressFn], fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(max(fraction, 0.0), 1.0), message)


def _check_cancel(cancel: Optional[CancelFn]) -> None:
    if cancel is not None and cancel():
        raise CancelledError()


def _scaled_progress(progress: Optional[ProgressFn], start: float, end: float) -> Optional[ProgressFn]:
    """Map a sub-task's 0..1 progress onto ``start..end`` of the whole run."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * fraction, message)


class Segmenter:
    """A model opened once and kept warm: call :meth:`segment` for as many cases as needed.

    The package's sha256 is verified when it is opened; the networks are built and
    moved to the device on the first call (so listing a model's inputs stays cheap).
    """

    def __init__(self, model: Any = "default", device: str = "auto", **options: Any) -> None:
        from tumorseg_core.modelpkg.package import ModelPackage, open_package

        # Options first: a bad value fails before the package is opened and verified.
        self.options = SegmentOptions.from_mapping({**options, "device": device})
        self.package = model if isinstance(model, ModelPackage) else open_package(model)
        if self.package.manifest.validation_warning():
            logger.warning("%s", self.package.manifest.validation_warning())
        self.device = self.options.device
        self._predictor = None
        self._predictor_key: Optional[tuple] = None
        self._backend: Optional[tuple] = None  # (backend, precision) of the warm Predictor
        self._coarse: Optional[tuple] = None  # (backend option, Predictor of the cascade's coarse network)
        self._cpu_nets: Optional[list] = None  # an imported nnU-Net/MONAI model's folds (their pipelines)
        self._nnunet_runners: Optional[tuple] = None  # (backend option, an imported nnU-Net model's window runners)
        self._device_nets: Optional[tuple] = None  # (torch.device, an imported nnU-Net model's folds on a GPU)
        self._slices: Any = None  # a 2.5D model's warm SliceSegmenter (slice_mode.py)

    @classmethod
    def with_options(cls, model: Any, options: SegmentOptions) -> "Segmenter":
        """A Segmenter for ``model`` with validated :class:`~tumorseg_core.options.SegmentOptions`."""
        values = options.to_dict()
        return cls(model, values.pop("device"), **values)

    def load(self) -> "Segmenter":
        """Build the networks (and any backend export) now rather than in the first call; returns self."""
        if self.manifest.nnunet is not None:
            self._nnunet_models(self.options.backend)
        elif self.manifest.monai is not None:
            self._monai_models()
        else:
            self.predictor(self.options)
        return self

    @property
    def manifest(self):
        return self.package.manifest

    def predictor(self, options: SegmentOptions):
        """The warm Predictor for these options (rebuilt only if they change)."""
        from tumorseg_core.inference.predictor import Predictor

        defaults = self.manifest.inference
        overlap = options.window_overlap
        overlap = overlap if overlap is not None else float(defaults.get("overlap", 0.5))
        key = (overlap, options.use_tta, options.window_batch)
        if self._predictor is None or (self._backend is not None
                                       and (options.backend, options.precision) != self._backend):
            # The backend's session (export, load) is kept warm; only a new backend rebuilds.
            self._predictor = Predictor.from_package(
                self.package, device=self.device, overlap=overlap, tta=options.use_tta,
                window_batch=options.window_batch, backend=options.backend, precision=options.precision,
            )
            self._backend = (options.backend, options.precision)
        elif key != self._predictor_key:
            # Same networks, new sliding-window settings: no reload needed.
            self._predictor.overlap = overlap
            self._predictor.tta = options.use_tta
            if options.window_batch is not None:
                self._predictor.window_batch = options.window_batch
        self._predictor_key = key
        self._predictor.skip_background = options.skip_background
        return self._predictor

    def coarse_predictor(self, options: SegmentOptions):
        """The warm Predictor of the package's dedicated coarse network (manifest ``cascade``), or None."""
        from tumorseg_core.inference.cascade import cascade_enabled

        spec = self.manifest.cascade
        if spec is None or not cascade_enabled(options.cascade, spec):
            return None
        if self._coarse is None or self._coarse[0] != options.backend:
            from tumorseg_core.inference.predictor import Predictor

            coarse = Predictor.for_cascade(self.package, self.device, backend=options.backend,
                                           window_batch=options.window_batch)
            self._coarse = (options.backend, coarse)
        elif options.window_batch is not None:
            self._coarse[1].window_batch = options.window_batch  # same networks, new batch size
        self._coarse[1].skip_background = options.skip_background
        return self._coarse[1]

    def segment(
        self,
        images: Union[ImageLike, Sequence[ImageLike]],
        progress: Optional[ProgressFn] = None,
        cancel: Optional[CancelFn] = None,
        uncertainty: bool = False,
        **overrides: Any,
    ) -> Union[sitk.Image, SegmentResult]:
        """Segment one case; returns a uint8 label map on the first image's exact grid.

        ``uncertainty=True`` returns a :class:`~tumorseg_core.inference.uncertainty.SegmentResult`
        ``(labels, uncertainty)`` instead: the same label map (bit-identical) and the
        normalised predictive entropy, float32 in [0, 1], on the same grid (linear from the
        model grid). It is a request for a second output, not an option of the computation,
        so it is not a :class:`~tumorseg_core.options.SegmentOptions` field.
        """
        if not isinstance(uncertainty, bool):
            raise InputError(f"uncertainty must be true or false, got {uncertainty!r}")
        options = self._options_for(overrides)
        self._check_before_reading(images, options)
        started = time.perf_counter()
        _report(progress, 0.0, "reading images")
        if self.manifest.nnunet is not None:
            labels_array, probabilities, image = self._nnunet_run(images, options, progress, cancel)
            result = sitk.GetImageFromArray(labels_array)
            result.CopyInformation(image)
            entropy = None
            if uncertainty:
                kind = "sigmoid" if self.manifest.nnunet.get("regions_class_order") else "softmax"
                entropy = self._input_grid_uncertainty(probabilities, kind, image)
            del probabilities
            return self._finish(result, options, progress, started, entropy)
        if self.manifest.monai is not None:
            return self._monai_segment(images, options, progress, cancel, started, uncertainty)
        volume, model_grid, reference = self.prepare(images, cancel, _scaled_progress(progress, 0.0, _PREPARE))
        input_checks.check_points(options, reference, model_grid)  # DICOM folders: known only now
        _check_cancel(cancel)
        _report(progress, _PREPARE, "running the model")

        labels, entropy = self._model_grid_outputs(
            volume, _scaled_progress(progress, _PREPARE, _PREDICT_END), cancel, options, uncertainty)
        del volume
        _report(progress, _PREDICT_END, "labels to the input grid")
        label_image = model_grid.apply_to(sitk.GetImageFromArray(labels.astype(np.uint8, copy=False)))
        result = geometry.labels_to_reference(label_image, reference)
        del labels, label_image
        entropy_image = None if entropy is None else to_reference(entropy, model_grid, reference)
        return self._finish(result, options, progress, started, entropy_image)

    def _monai_segment(self, images: Any, options: SegmentOptions, progress: Optional[ProgressFn],
                       cancel: Optional[CancelFn], started: float, uncertainty: bool) -> Any:
        """An imported MONAI bundle's labels (and uncertainty from its activated outputs)."""
        from tumorseg_core.inference.monai_pipeline import segment_bundle_package

        _report(progress, _PREPARE, "running the bundle's pipeline")
        if not uncertainty:
            networks, device = self._monai_models()
            result = segment_bundle_package(self.package, _as_list(images), device=device or "cpu", networks=networks)
            _check_cancel(cancel)
            return self._finish(result, options, progress, started)
        from tumorseg_core.modelpkg.monai_section import check_monai_section

        data = self.manifest.to_dict()
        out_channels = data["kwargs"].get("out_channels")
        activation = check_monai_section(data.get("monai"), self.manifest.num_inputs,
                                         out_channels if isinstance(out_channels, int) else None).activation
        if activation is None:
            raise InputError(f"uncertainty is not available for model '{self.manifest.name}': its MONAI bundle "
                             "has no softmax or sigmoid activation; run it without uncertainty")
        networks, device = self._monai_models()
        result, probabilities = segment_bundle_package(self.package, _as_list(images), device=device or "cpu",
                                                       return_probabilities=True, networks=networks)
        _check_cancel(cancel)
        entropy = self._input_grid_uncertainty(probabilities, activation, result)
        return self._finish(result, options, progress, started, entropy)

    @staticmethod
    def _input_grid_uncertainty(probabilities: np.ndarray, output_type: str, image: sitk.Image) -> sitk.Image:
        """An imported model's probabilities (C, z, y, x), already on ``image``'s grid, as an uncertainty image."""
        out = sitk.GetImageFromArray(entropy_of_probabilities(probabilities, output_type))
        out.CopyInformation(image)
        return out

    def _check_before_reading(self, images: Any, options: SegmentOptions) -> None:
        """The input count and the points, from the inputs' headers: fail before reading or any network."""
        items = _as_list(images)
        if self.manifest.monai is None:  # a bundle's pipeline takes its own inputs
            input_checks.check_input_count(items, self.manifest.num_inputs, self.manifest.name,
                                           self.manifest.input_modalities)
        grid = input_checks.first_grid(items)
        if grid is not None:
            input_checks.check_points(options, grid)
            if self.manifest.nnunet is None and self.manifest.monai is None:
                input_checks.check_model_grid(grid, self.manifest.spacing_xyz, "the first input")

    def _finish(self, result: sitk.Image, options: SegmentOptions, progress: Optional[ProgressFn],
                started: float, entropy: Optional[sitk.Image] = None) -> Union[sitk.Image, SegmentResult]:
        """The clicked-lesion filter (seeds) on the input-grid label map, and the last progress report.

        With ``entropy`` (the uncertainty image) the result is a ``SegmentResult``.
        """
        if options.seeds_lps or options.background_lps:
            from tumorseg_core.interactive.refine import keep_clicked_lesions

            result = keep_clicked_lesions(result, options.seeds_lps, options.background_lps)
        _report(progress, 1.0, f"done in {time.perf_counter() - started:.1f} s")
        return result if entropy is None else SegmentResult(result, entropy)

    def probabilities(self, images: Union[ImageLike, Sequence[ImageLike]], progress: Optional[ProgressFn] = None,
                      cancel: Optional[CancelFn] = None, **overrides: Any) -> tuple:
        """An imported model's ``(probabilities (C, z, y, x) float32, first input image)``.

        The probabilities are on the first input's exact grid, as the source framework
        gives them: nnU-Net's ``--save_probabilities`` (softmax: every class, background
        first; region-based: one channel per region) or a MONAI bundle's activated outputs
        after ``Invertd``.
        """
        if self.manifest.monai is not None:
            from tumorseg_core.inference.monai_pipeline import segment_bundle_package

            inputs = read_images(_as_list(images))
            networks, device = self._monai_models()
            _, probabilities = segment_bundle_package(self.package, inputs, device=device or "cpu",
                                                      return_probabilities=True, networks=networks)
            return probabilities, inputs[0]
        if self.manifest.nnunet is None:
            raise InputError(f"model '{self.manifest.name}' is not an imported nnU-Net or MONAI model; "
                             "use Predictor.predict_probabilities on a prepared volume")
        _, probabilities, image = self._nnunet_run(images, self._options_for(overrides), progress, cancel)
        return probabilities, image

    def _nnunet_run(self, images: Any, options: SegmentOptions, progress: Optional[ProgressFn],
                    cancel: Optional[CancelFn]) -> tuple:
        """(labels, probabilities, first input image) through nnU-Net's pipeline (``nnunet_pipeline.py``)."""
        from tumorseg_core.inference.nnunet_pipeline import case_arrays, predict_case

        manifest = self.manifest
        inputs = read_images(_as_list(images), channels=manifest.num_inputs)
        input_checks.check_points(options, geometry.GridGeometry.of(inputs[0]))
        if len(inputs) != manifest.num_inputs:
            names = ", ".join(manifest.input_modalities)
            raise InputError(
                f"model '{manifest.name}' expects {manifest.num_inputs} input image(s) ({names}), "
                f"got {len(inputs)}; pass one image per modality in that order"
            )
        arrays, spacing = case_arrays(geometry.align_to_reference(inputs))
        _check_cancel(cancel)
        overlap = options.window_overlap
        mirror = options.tta if options.tta is not None else options.quality != "fast"
        networks, device = self._nnunet_models(options.backend)
        labels, probabilities = predict_case(
            networks, arrays, spacing, manifest.nnunet, int(manifest.predictor_settings()["num_outputs"]),
            mirror=mirror, step=None if overlap is None else 1.0 - overlap,
            progress=_scaled_progress(progress, _PREPARE, _PREDICT_END), cancel=cancel, device=device,
        )
        return labels, probabilities, inputs[0]

    def _nnunet_models(self, backend: str) -> Tuple[list, Any]:
        """An imported nnU-Net model's folds, kept warm, and the GPU they are on (None: the CPU)."""
        return self._imported_models(lambda: self._nnunet_networks(backend))

    def _monai_models(self) -> Tuple[list, Any]:
        """An imported MONAI bundle's networks, kept warm, and the GPU they are on (None: the CPU)."""
        return self._imported_models(self._cpu_networks)

    def _imported_models(self, on_cpu: Callable[[], list]) -> Tuple[list, Any]:
        """An imported model's networks where ``--device`` says (``auto``: CUDA, then MPS, else
        the CPU, where ``on_cpu`` gives them), and that GPU (None: the CPU)."""
        from tumorseg_core.inference.devices import resolve_device

        device = resolve_device(self.device)
        if device.type == "cpu":
            return on_cpu(), None
        return self._device_networks(device), device

    def _device_networks(self, device: Any) -> list:
        """An imported model's networks on a GPU (``device``), loaded once, in torch
        (exported backends are CPU-only, so ``--backend`` is not used)."""
        if self.options.backend not in ("auto", "torch"):
            logger.warning("backend %s runs on the CPU only; model '%s' runs with torch on %s",
                           self.options.backend, self.manifest.name, device)
        if self._device_nets is None or self._device_nets[0] != device:
            self._device_nets = (device, list(self.package.load_networks(device)))
        return self._device_nets[1]

    def _nnunet_networks(self, backend: str) -> list:
        """An imported nnU-Net model's folds as callables on (1, C, *patch) torch tensors, kept warm.

        ``auto`` and ``torch`` run the torch modules: nnUNetPredictor's own arithmetic, so the
        result is nnU-Net's (probabilities within ~1e-6), with the large full-resolution layers
        run slab by slab along z (``slab_forward.py``: about half the window's memory). ``--backend openvino|onnxruntime``
        runs the windows on that exported backend instead (exported once, cached by package
        sha256; about 2x faster per window on a 2-core AVX2 CPU, probabilities within ~3e-4 on
        the test fixtures, but a few near-tie voxels may flip on a real-size model:
        benchmarks/README.md). nnU-Net's mirroring, Gaussian and float16 accumulation stay
        around them (``nnunet_windows.py``).
        """
        if backend == "auto":
            backend = "torch"  # the same result as nnU-Net's predictor is the default; speed is opt-in
        patch = tuple(int(p) for p in self.manifest.nnunet["patch_size"])
        if len(patch) != 3:
            return self._cpu_networks()
        if self._nnunet_runners is None or self._nnunet_runners[0] != backend:
            from tumorseg_core.inference.backends import LazyNetworks, prepare_backend
            from tumorseg_core.inference.devices import import_torch

            package = self.package

            def load() -> list:
                return list(package.load_networks(import_torch().device("cpu")))

            used, runners = prepare_backend(
                LazyNetworks(load, len(package.weight_files)), backend, "cpu", patch, self.manifest.num_inputs,
                [f"{package.sha256}:{f.name}" for f in package.weight_files])
            if used == "torch":
                from tumorseg_core.inference import heap
                from tumorseg_core.inference.slab_forward import SlabUNet

                runners = [SlabUNet(runner) for runner in runners]
                heap.trim()  # the weight files' read buffers
            else:
                runners = [_TensorRunner(runner) for runner in runners]
            self._nnunet_runners = (backend, runners)
        return self._nnunet_runners[1]

    def _cpu_networks(self) -> list:
        """An imported model's folds as modules on the CPU, loaded once (MONAI bundles, 2D nnU-Net models)."""
        if self.manifest.monai is not None and self.options.backend not in ("auto", "torch"):
            logger.warning("model '%s' is an imported MONAI bundle, whose pipeline runs with torch in this "
                           "version; backend %s is not used", self.manifest.name, self.options.backend)
        if self._cpu_nets is None:
            from tumorseg_core.inference.devices import import_torch

            self._cpu_nets = list(self.package.load_networks(import_torch().device("cpu")))
        return self._cpu_nets

    def slice_segmenter(self) -> Any:
        """The warm :class:`~tumorseg_core.inference.slice_mode.SliceSegmenter` of a 2.5D model
        (built on first use; its normalized-image cache lives as long as this Segmenter)."""
        if self._slices is None or (self._slices.backend, self._slices.precision) \
                != (self.options.backend, self.options.precision):
            from tumorseg_core.inference.slice_mode import SliceSegmenter

            self._slices = SliceSegmenter(self.package, backend=self.options.backend, device=self.device,
                                          precision=self.options.precision)
        return self._slices

    def segment_slice(self, image: Any, index: int, axis: Union[str, int] = "axial") -> np.ndarray:
        """Labels uint8 (2D) of slice ``index`` along ``axis`` of the image's own grid (2.5D models only;
        see :meth:`~tumorseg_core.inference.slice_mode.SliceSegmenter.segment_slice`)."""
        return self.slice_segmenter().segment_slice(image, index, axis)

    def segment_by_slices(self, image: Any, axes: Sequence[Union[str, int]] = ("axial",)) -> sitk.Image:
        """A 2.5D model's label map on the image's exact grid from every slice along ``axes``
        (all three: tri-planar fusion of the probabilities); the manifest's postprocessing applies."""
        return self.slice_segmenter().segment_volume(image, axes)

    def segment_to_file(
        self,
        images: Union[ImageLike, Sequence[ImageLike]],
        output: Union[str, "os.PathLike[str]"],
        progress: Optional[ProgressFn] = None,
        cancel: Optional[CancelFn] = None,
        uncertainty_path: Union[str, "os.PathLike[str]", None] = None,
        **overrides: Any,
    ) -> sitk.Image:
        """Segment one case and write its label map to ``output``; returns the label map.

        The one place a model's result is written (CLI, demo, worker): the format follows
        the extension (:data:`~tumorseg_core.options.LABELMAP_EXTENSIONS`), ``.seg.nrrd``
        carries the manifest's segment names, colors and terminology, and the write is
        atomic. The output path is checked before any work is done.

        ``uncertainty_path``: also write the uncertainty map there (float32 on the label
        map's grid; :data:`~tumorseg_core.inference.uncertainty.UNCERTAINTY_EXTENSIONS`),
        checked before any work too. Each file is written atomically, the uncertainty map
        first; if the label map then cannot be written the new uncertainty file is removed,
        so a failed call leaves neither.
        """
        check_output_path(output)
        if uncertainty_path is not None:
            check_uncertainty_path(uncertainty_path, output)
        result = self.segment(images, progress=progress, cancel=cancel, uncertainty=uncertainty_path is not None,
                              **overrides)
        _check_cancel(cancel)
        if uncertainty_path is None:
            write_labelmap(result, output, segments=self.manifest.segments)
            return result
        labels, entropy = result
        write_image(entropy, uncertainty_path)
        try:
            write_labelmap(labels, output, segments=self.manifest.segments)
        except BaseException:
            try:
                os.remove(uncertainty_path)
            except OSError:
                logger.warning("could not remove %s after the label map failed to write", uncertainty_path)
            raise
        return labels

    def _options_for(self, overrides: dict) -> SegmentOptions:
        """This Segmenter's options with a call's ``overrides``; the device is fixed at construction."""
        options = self.options.replace(**overrides) if overrides else self.options
        if options.device != self.options.device:
            raise InputError(f"this Segmenter runs on {self.options.device}; make another one for {options.device}")
        return options

    def model_grid_labels(self, volume: np.ndarray, progress: Optional[ProgressFn] = None,
                          cancel: Optional[CancelFn] = None, options: Optional[SegmentOptions] = None) -> np.ndarray:
        """Labels (z, y, x) uint8 on the model grid for a :meth:`prepare`-d (C, z, y, x) volume.

        The network (cascade or exhaustive windows) and then the manifest's postprocessing
        (unless ``options.postprocess`` is False): everything :meth:`segment` does before
        putting the labels back on the input grid.
        """
        return self._model_grid_outputs(volume, progress, cancel, options, uncertainty=False)[0]

    def _model_grid_outputs(self, volume: np.ndarray, progress: Optional[ProgressFn], cancel: Optional[CancelFn],
                            options: Optional[SegmentOptions], uncertainty: bool) -> tuple:
        """``(labels, uncertainty or None)`` on the model grid; the uncertainty is the network's,
        before postprocessing (which changes labels, not probabilities)."""
        from tumorseg_core.inference.cascade import predict_labels, predict_labels_and_uncertainty

        options = options or self.options
        manifest = self.manifest
        run = predict_labels_and_uncertainty if uncertainty else predict_labels
        out = run(self.predictor(options), volume, manifest.spacing_xyz, options.cascade,
                  progress=progress, cancel=cancel,
                  coarse_predictor=self.coarse_predictor(options), spec=manifest.cascade)
        labels, entropy = out if uncertainty else (out, None)
        _check_cancel(cancel)
        if options.postprocess and manifest.postprocessing:
            labels = postprocess.postprocess_labels(labels, manifest.spacing_xyz, manifest.postprocessing)
        return labels, entropy

    def prepare(self, images: Union[ImageLike, Sequence[ImageLike]], cancel: Optional[CancelFn] = None,
                progress: Optional[ProgressFn] = None) -> tuple:
        """The network's input for one case: ``(volume, model grid, input grid)``.

        ``volume`` is (C, z, y, x) float32, resampled and normalized on the model grid
        (a :class:`~tumorseg_core.imaging.geometry.GridGeometry`); the input grid is the first
        image's, where :meth:`segment` puts its labels back.
        """
        manifest = self.manifest
        items = _as_list(images)
        streamed = self.read_streaming(items, cancel)
        if streamed is not None:
            return streamed
        inputs = read_images(items, channels=manifest.num_inputs)
        if len(inputs) != manifest.num_inputs:
            names = ", ".join(manifest.input_modalities)
            raise InputError(
                f"model '{manifest.name}' expects {manifest.num_inputs} input image(s) ({names}), "
                f"got {len(inputs)}; pass one image per modality in that order"
            )
        reference = geometry.GridGeometry.of(inputs[0])
        input_checks.check_model_grid(reference, manifest.spacing_xyz, "the first input")
        aligned = geometry.align_to_reference(inputs)
        _check_cancel(cancel)
        _report(progress, _READ / _PREPARE, "resampling to the model grid")
        volume, model_grid = self.prepare_aligned(aligned)
        # The inputs' voxels are not needed any more (only their grid): images this call
        # read are freed here, before the model and the output's allocations.
        del inputs, aligned
        return volume, model_grid, reference

    def read_streaming(self, items: list, cancel: Optional[CancelFn]) -> Optional[tuple]:
        """``(volume, model grid, input grid)`` read slab by slab, or None where that would differ.

        Streams only what gives the whole-image path's grid and voxels (up to the float
        rounding of sample positions, see ``stream_resample``): image files a slab
        reader can read (NIfTI, MetaImage), one per model input, all on the first file's
        exact grid (channels on other grids are aligned first, which needs them whole), no
        denoising (it filters the whole input grid).
        """
        manifest = self.manifest
        prep = manifest.preprocessing or {}
        if prep.get("denoise") or len(items) != manifest.num_inputs:
            return None
        if not all(isinstance(item, (str, os.PathLike)) for item in items):
            return None
        grids = [stream_resample.file_grid(item) for item in items]
        if grids[0] is None or any(grid != grids[0] for grid in grids):
            return None
        arrays = []
        model_grid = None
        for item, channel in zip(items, manifest.inputs):
            _check_cancel(cancel)
            array, model_grid, _ = stream_resample.read_to_model_grid(
                item, manifest.spacing_xyz, manifest.orientation, prep.get("interpolator", "linear"), cancel=cancel)
            arrays.append(preprocess.normalize(array, channel.get("normalization", {})))
            del array
        volume = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
        return volume.astype(np.float32, copy=False), model_grid, grids[0]

    def prepare_aligned(self, aligned: list) -> tuple:
        """Resample and normalize every channel on the model grid.

        Returns ``(volume (C, z, y, x) float32, the model grid (channel 0's))``.
        """
        manifest = self.manifest
        prep = manifest.preprocessing or {}
        arrays = []
        model_grid = None
        for image, channel in zip(aligned, manifest.inputs):
            if prep.get("denoise"):
                image = preprocess.denoise(image, prep["denoise"])
            on_grid = geometry.to_model_grid(
                image, manifest.spacing_xyz, manifest.orientation,
                prep.get("interpolator", "linear"),
            )
            if model_grid is None:
                model_grid = geometry.GridGeometry.of(on_grid)  # the grid only: its voxels are freed
            arrays.append(preprocess.normalize(sitk.GetArrayViewFromImage(on_grid), channel.get("normalization", {})))
        return np.stack(arrays).astype(np.float32, copy=False), model_grid


class _TensorRunner:
    """An exported backend's numpy window runner seen as a network on torch tensors (nnU-Net's window loop)."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner

    def eval(self) -> "_TensorRunner":
        return self

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.from_numpy(np.ascontiguousarray(self._runner(np.ascontiguousarray(x.numpy())), dtype=np.float32))


def _as_list(images: Any) -> list:
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("no input image given; pass at least one image path or SimpleITK image")
        return list(images)
    return [images]


def segment(images: Any, model: Any = "default", device: str = "auto", progress: Optional[ProgressFn] = None,
            cancel: Optional[CancelFn] = None, uncertainty: bool = False,
            **options: Any) -> Union[sitk.Image, SegmentResult]:
    """Segment tumors in one case.

    Args:
        images: a path or ``SimpleITK.Image``, or a list of them: the model's input
            channels in the order its manifest names them. They may have different grids;
            channels 2..n are resampled onto the first.
        model: ``"default"``, an installed model name, a package folder or ``.zip``.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``.
        options: ``overlap``, ``tta``, ``window_batch``, ``postprocess``, ``seeds_lps``,
            ``background_lps`` (keep only the lesions clicked / drop those marked),
            ``backend`` (``auto``: fastest installed for the device), ``cascade``
            (coarse-to-fine ROI pass; ``False``: exhaustive windows).
        uncertainty: also return the voxel-wise uncertainty (not an option of the computation:
            the label map is the same either way).

    Returns:
        A uint8 label map with exactly the first image's size, spacing, origin and direction;
        with ``uncertainty=True`` a :class:`~tumorseg_core.inference.uncertainty.SegmentResult`
        ``(labels, uncertainty)``, the second a float32 image in [0, 1] on that same grid.
    """
    return Segmenter(model, device).segment(images, progress=progress, cancel=cancel, uncertainty=uncertainty,
                                            **options)
