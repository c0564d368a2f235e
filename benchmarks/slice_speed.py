"""Slice mode speed: median time of ``Segmenter.segment_slice`` over N calls (issue #23, part 4).

One synthetic phantom (default 256 x 256 x 64 voxels at the model's 1.5 mm, so the network
sees 256 x 256 planes) is segmented slice by slice with a 2.5D model; the normalized image is
cached after the first call, so each later call is the real-time path: sample 2k+1 planes,
run the 2D network, interpolate back, argmax. Indices walk through the volume (a user
scrolling). The first call (read, normalize, export/compile) is reported apart::

    python benchmarks/slice_speed.py --model realtime -n 200
    python benchmarks/slice_speed.py --model PKG --spacing 1 1 1 --axis coronal --volume
    python benchmarks/slice_speed.py --model PKG_INT8 --compare-fp32 -n 200

``--compare-fp32`` (a package with INT8 networks, ``tumorseg quantize``): the same calls run
with ``precision=int8`` and ``precision=fp32`` on the same package, interleaved call by call
(this machine is noisy), and report both medians, their ratio and the Dice of the INT8 to the
float32 slice labels over all calls (pooled).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tumorseg_core.options import PRECISIONS  # noqa: E402

logger = logging.getLogger("slice_speed")


def _timings(times: list[float]) -> dict:
    median = statistics.median(times)
    return {"median_ms": round(median, 2), "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))], 2),
            "min_ms": round(min(times), 2), "fps_at_median": round(1000 / median, 1)}


def measure(model: str, size_xyz, spacing_xyz, calls: int, axis: str, backend: str, volume: bool,
            seed: int = 800_000, precision: str = "auto", compare_fp32: bool = False) -> dict:
    """Timings in ms of ``calls`` segment_slice calls on one phantom (and optionally whole volumes).

    ``compare_fp32``: the same calls with ``precision="fp32"`` too, interleaved, under ``"fp32"``.
    """
    import numpy as np

    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.inference.slice_mode import axis_index
    from tumorseg_core.synthetic import make_phantom

    phantom = make_phantom(seed, size_xyz=tuple(size_xyz), spacing_xyz=tuple(spacing_xyz))
    image = phantom.image
    segmenter = Segmenter(model, device="cpu", backend=backend, precision=precision)
    sides = {"main": segmenter}
    if compare_fp32:
        sides["fp32"] = Segmenter(segmenter.package, device="cpu", backend=backend, precision="fp32")
    slices = image.GetSize()[::-1][axis_index(axis)]
    first_ms = {}
    for name, side in sides.items():
        start = time.perf_counter()
        side.segment_slice(image, slices // 2, axis)
        first_ms[name] = 1000 * (time.perf_counter() - start)
    times: dict = {name: [] for name in sides}
    labels: dict = {name: [] for name in sides}
    for i in range(calls):
        index = (slices // 2 + i) % slices
        for name, side in sides.items():
            start = time.perf_counter()
            out = side.segment_slice(image, index, axis)
            times[name].append(1000 * (time.perf_counter() - start))
            labels[name].append(out)
    slicer = segmenter.slice_segmenter()
    result = {
        "model": model, "backend": slicer.backend_used, "precision": slicer.precision_used,
        "image_size_xyz": list(image.GetSize()), "spacing_xyz": list(image.GetSpacing()), "axis": axis,
        "slice_shape": list(labels["main"][-1].shape), "network_plane": list(slicer.network_plane(image, axis)),
        "first_call_ms": round(first_ms["main"], 1), "calls": calls, **_timings(times["main"]),
        "normalizations": slicer.cache_misses,
    }
    if compare_fp32:
        from tumorseg_core.evaluation.metrics import dice

        reference = sides["fp32"].slice_segmenter()
        result["fp32"] = {"backend": reference.backend_used, "precision": reference.precision_used,
                          "first_call_ms": round(first_ms["fp32"], 1), **_timings(times["fp32"])}
        result["speedup_vs_fp32"] = round(result["fp32"]["median_ms"] / result["median_ms"], 3)
        a, b = np.stack(labels["main"]), np.stack(labels["fp32"])
        result["dice_to_fp32"] = {str(v): round(float(dice(a == v, b == v)), 4)
                                  for v in sorted(set(np.unique(b).tolist()) - {0})}
    if volume:
        for name, axes in (("by_slices_s", ["axial"]), ("triplanar_s", ["axial", "coronal", "sagittal"])):
            start = time.perf_counter()
            segmenter.segment_by_slices(image, axes)
            result[name] = round(time.perf_counter() - start, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realtime",
                        help="a 2.5D model package (name, folder or zip; default: the shipped realtime)")
    parser.add_argument("-n", type=int, default=200, help="timed calls (default 200)")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 1.5), metavar=("X", "Y", "Z"))
    parser.add_argument("--axis", default="axial", choices=("axial", "coronal", "sagittal"))
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--compare-fp32", action="store_true",
                        help="also run every call with precision fp32 (interleaved): ratio and label Dice")
    parser.add_argument("--volume", action="store_true", help="also time whole volumes (axial, tri-planar)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    result = measure(args.model, args.size, args.spacing, args.n, args.axis, args.backend, args.volume,
                     precision=args.precision, compare_fp32=args.compare_fp32)
    text = json.dumps(result, indent=2)
    logger.info("%s", text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
