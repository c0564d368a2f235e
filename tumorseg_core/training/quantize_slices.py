"""What ``tumorseg quantize`` needs from a 2.5D model (architecture ``unet25d``, slice mode).

A 2.5D model's network runs in slice mode as a plain 2D network
(:class:`~tumorseg_core.models.unet25d.CentreSliceNet`) on one-plane tiles
``(1, C*(2k+1), 1, th, tw)`` of the training patch's (y, x) size
(:mod:`tumorseg_core.inference.slice_mode`). Quantizing it therefore means:

- the float32 graph is that network's ONNX export, the one slice mode itself caches
  (same export identity, so a later float32 run reuses it);
- calibration windows are the tiles slice mode cuts from the calibration cases: for each
  case, axial slices spread evenly through the volume, one tile of each in turn (so the
  centre and the edges of the plane both come up); ``max_windows // cases`` per case, so
  at most ``max_windows`` in all (fewer when a case has fewer slices);
- the accuracy check segments every case by axial slices (``segment_volume``, no
  postprocessing, the image's own grid) with the float32 and with the INT8 network.

:class:`SliceCalibration` has the same three members as the sliding-window calibration in
:mod:`tumorseg_core.training.quantize` (``windows``, ``graphs_fp32``, ``labels``), which
runs the quantize-check-fallback loop for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from tumorseg_core.inference.backends.export import ensure_onnx
from tumorseg_core.inference.slice_mode import SliceSegmenter
from tumorseg_core.modelpkg.package import ModelPackage


class SliceCalibration:
    """Calibration tiles, float32 graphs and label maps of a 2.5D model's slice mode.

    Args:
        package: an opened ``unet25d`` package.
        cases: one list of input images (model input order) per calibration case.
        max_windows: most tiles in all (spread over the cases).
    """

    def __init__(self, package: ModelPackage, cases: Sequence[Sequence[Any]], max_windows: int) -> None:
        self.package = package
        self.cases = [list(images) for images in cases]
        self._fp32 = SliceSegmenter(package, backend="auto", device="cpu", precision="fp32")
        self.windows = self._calibration_tiles(int(max_windows))
        self.graphs_fp32 = self._float_graphs()

    def _calibration_tiles(self, max_windows: int) -> list[np.ndarray]:
        """``(1, C*(2k+1), 1, th, tw)`` float32 tiles: spread slices of each case, one tile of each in turn."""
        quota = max(1, max_windows // max(1, len(self.cases)))
        tiles: list[np.ndarray] = []
        for images in self.cases:
            slices = int(self._fp32.normalized(images)[1].GetSize()[2])
            picks = np.unique(np.linspace(0, slices - 1, min(quota, slices)).round().astype(int))
            for turn, index in enumerate(picks):
                plane = self._fp32.slice_tiles(images, int(index), "axial")
                tiles.append(np.ascontiguousarray(plane[turn % len(plane)][None, :, None]))
        return tiles[:max_windows]

    def _float_graphs(self) -> list[Path]:
        """Each fold's float32 centre-slice ONNX export (slice mode's own cached export)."""
        return [ensure_onnx(spec) / "model.onnx" for spec in self._fp32.export_specs()]

    def labels(self, graphs: Optional[Sequence[bytes]] = None) -> tuple[list[np.ndarray], str]:
        """``(label map (z, y, x) uint8 per case, backend used)``: float32, or the INT8 ``graphs`` (one per fold)."""
        if graphs is None:
            runner = self._fp32
        else:
            sources: list[Callable[[], bytes]] = [lambda d=d: d for d in graphs]
            runner = SliceSegmenter(self.package, backend="auto", device="cpu", int8_graphs=sources)
        out = [sitk.GetArrayFromImage(runner.segment_volume(images, ("axial",), postprocess_labels=False))
               for images in self.cases]
        return out, str(runner.backend_used)
