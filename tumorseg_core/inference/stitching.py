"""Streaming stitching: labels are made row by row, so only a band of sums is ever held.

Windows run in z-major order (the grid's order; explicit starts are sorted). When a
window starting at z runs, no later window starts below z, so every slice below z has
received all of its windows: those slices are final. They are turned into labels at
once and dropped from the sums. The sums therefore only ever cover the ``pz`` slices of
the windows in flight (one float32 map per foreground channel), and the only
full-volume buffer is the uint8 label map: memory grows with the voxel count at about
1 byte per voxel, whatever the number of classes.

Per voxel the sums are added in the same window order as a full-volume accumulator, so
the labels are bit-identical to argmax over full-volume sums.

With ``uncertainty=True`` the finished slices also give the normalised entropy of their
mean probabilities (:mod:`~tumorseg_core.inference.uncertainty`) into a second
full-volume float32 map (4 more bytes per voxel); the labels do not change.

All coordinates are on the grid padded by
:func:`~tumorseg_core.inference.sliding_window.pad_to_window`, array order (z, y, x).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tumorseg_core.inference.uncertainty import entropy_from_sums

# Slices per step when turning sums into labels (bounds the argmax temporaries).
LABEL_SLAB = 16


def labels_from_sums(sums: np.ndarray, weight: np.ndarray, output_type: str,
                     region_values: Sequence[int]) -> np.ndarray:
    """uint8 labels (z, y, x) from Gaussian-weighted foreground sums (K', z, y, x).

    ``weight`` (z, y, x) is the sum of the window weights per voxel. Softmax: the
    background's weighted sum is ``weight - sums.sum(0)`` and the label is the argmax
    (label value = channel index). Sigmoid: channel k is painted with
    ``region_values[k]`` where its probability exceeds 0.5 (later channels overwrite).
    The weights need no division: they are positive and shared by all channels.
    """
    if output_type == "softmax" and len(sums) == 1:  # two classes: no argmax temporaries
        return (sums[0] > weight - sums[0]).astype(np.uint8)
    if output_type == "softmax":
        # argmax over (background, channels...) as a running maximum: strict ">" keeps the
        # first maximum like np.argmax, without a (K, ...) stack or an int64 index array.
        best = weight - sums.sum(axis=0)
        labels = np.zeros(weight.shape, dtype=np.uint8)
        for channel in range(len(sums)):
            labels[sums[channel] > best] = channel + 1
            np.maximum(best, sums[channel], out=best)
        return labels
    labels = np.zeros(weight.shape, dtype=np.uint8)
    half = 0.5 * weight
    for channel, value in enumerate(region_values):
        labels[sums[channel] > half] = value
    return labels


class BandStitcher:
    """Adds window outputs into a band of ``pz`` slices and writes finished slices as labels.

    Args:
        padded_shape: (Z, Y, X) of the padded grid.
        channels: foreground channels K' of the window outputs.
        patch_zyx: window size.
        weights: callable ``(z0, z1) -> (z1 - z0, Y, X)`` float32 weight sums of padded slices.
        output_type, region_values: as for :func:`labels_from_sums`.
        uncertainty: also keep the normalised entropy (Z, Y, X) float32 as ``self.uncertainty``.
    """

    def __init__(self, padded_shape: Sequence[int], channels: int, patch_zyx: Sequence[int], weights,
                 output_type: str, region_values: Sequence[int], uncertainty: bool = False) -> None:
        self.shape = tuple(int(n) for n in padded_shape)
        self.depth = int(patch_zyx[0])
        self.sums = np.zeros((channels, self.depth, *self.shape[1:]), dtype=np.float32)
        self.labels = np.zeros(self.shape, dtype=np.uint8)
        self.base = 0  # padded z of the band's first slice; every slice below is final
        self.weights = weights
        self.output_type = output_type
        self.region_values = tuple(region_values)
        self._last_start = 0
        self.num_outputs = channels + (output_type == "softmax")
        self.uncertainty = np.zeros(self.shape, dtype=np.float32) if uncertainty else None

    def add(self, start: Sequence[int], window_sums: np.ndarray) -> None:
        """Add one window's (K', pz, py, px) weighted probabilities at ``start`` (z, y, x)."""
        z, y, x = (int(v) for v in start)
        if z < self._last_start:
            raise ValueError("windows must come in z order (sort the starts by z)")
        self._last_start = z
        if z > self.base:
            self._finish(z)
        _, pz, py, px = window_sums.shape
        self.sums[:, z - self.base : z - self.base + pz, y : y + py, x : x + px] += window_sums

    def result(self) -> np.ndarray:
        """The padded (Z, Y, X) uint8 label map, after finishing the remaining slices."""
        self._finish(self.shape[0])
        return self.labels

    def _finish(self, z_end: int) -> None:
        """Turn slices [base, z_end) into labels and slide the band up to start at z_end."""
        z_end = min(z_end, self.shape[0])
        done = z_end - self.base
        if done <= 0:
            return
        # Slices past the band were reached by no window (a gap between explicit or
        # region-selected windows): their sums are 0, their labels stay 0.
        for z0 in range(self.base, min(z_end, self.base + self.depth), LABEL_SLAB):
            z1 = min(z0 + LABEL_SLAB, z_end, self.base + self.depth)
            band = self.sums[:, z0 - self.base : z1 - self.base]
            weight = self.weights(z0, z1)
            self.labels[z0:z1] = labels_from_sums(band, weight, self.output_type, self.region_values)
            if self.uncertainty is not None:
                self.uncertainty[z0:z1] = entropy_from_sums(band, weight, self.output_type, self.num_outputs)
        kept = max(self.depth - done, 0)
        # Slide the kept slices to the front in pieces no longer than the shift, so source
        # and destination never overlap (an overlapping copy would allocate a band-sized temp).
        for i in range(0, kept, done):
            n = min(done, kept - i)
            self.sums[:, i : i + n] = self.sums[:, done + i : done + i + n]
        self.sums[:, kept:] = 0.0
        self.base = z_end
