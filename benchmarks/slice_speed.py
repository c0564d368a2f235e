"""Slice mode speed: median time of ``Segmenter.segment_slice`` over N calls (issue #23, part 4).

One synthetic phantom (default 256 x 256 x 64 voxels at the model's 1.5 mm, so the network
sees 256 x 256 planes) is segmented slice by slice with a 2.5D model; the normalized image is
cached after the first call, so each later call is the real-time path: sample 2k+1 planes,
run the 2D network, interpolate back, argmax. Indices walk through the volume (a user
scrolling). The first call (read, normalize, export/compile) is reported apart::

    python benchmarks/slice_speed.py --model tumorseg_core/data/models/realtime2d -n 200
    python benchmarks/slice_speed.py --model PKG --spacing 1 1 1 --axis coronal --volume
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

logger = logging.getLogger("slice_speed")


def measure(model: str, size_xyz, spacing_xyz, calls: int, axis: str, backend: str, volume: bool,
            seed: int = 800_000) -> dict:
    """Timings in ms of ``calls`` segment_slice calls on one phantom (and optionally whole volumes)."""
    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.inference.slice_mode import axis_index
    from tumorseg_core.synthetic import make_phantom

    phantom = make_phantom(seed, size_xyz=tuple(size_xyz), spacing_xyz=tuple(spacing_xyz))
    image = phantom.image
    segmenter = Segmenter(model, device="cpu", backend=backend)
    slices = image.GetSize()[::-1][axis_index(axis)]
    start = time.perf_counter()
    segmenter.segment_slice(image, slices // 2, axis)
    first_ms = 1000 * (time.perf_counter() - start)
    times = []
    for i in range(calls):
        index = (slices // 2 + i) % slices
        start = time.perf_counter()
        labels = segmenter.segment_slice(image, index, axis)
        times.append(1000 * (time.perf_counter() - start))
    slicer = segmenter.slice_segmenter()
    result = {
        "model": model, "backend": slicer.backend_used,
        "image_size_xyz": list(image.GetSize()), "spacing_xyz": list(image.GetSpacing()), "axis": axis,
        "slice_shape": list(labels.shape), "network_plane": list(slicer.network_plane(image, axis)),
        "first_call_ms": round(first_ms, 1), "calls": calls, "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))], 2), "min_ms": round(min(times), 2),
        "normalizations": slicer.cache_misses,
    }
    result["fps_at_median"] = round(1000 / result["median_ms"], 1)
    if volume:
        for name, axes in (("by_slices_s", ["axial"]), ("triplanar_s", ["axial", "coronal", "sagittal"])):
            start = time.perf_counter()
            segmenter.segment_by_slices(image, axes)
            result[name] = round(time.perf_counter() - start, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "tumorseg_core" / "data" / "models" / "realtime2d"),
                        help="a 2.5D model package (name, folder or zip; default: the shipped realtime2d)")
    parser.add_argument("-n", type=int, default=200, help="timed calls (default 200)")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 1.5), metavar=("X", "Y", "Z"))
    parser.add_argument("--axis", default="axial", choices=("axial", "coronal", "sagittal"))
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--volume", action="store_true", help="also time whole volumes (axial, tri-planar)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    result = measure(args.model, args.size, args.spacing, args.n, args.axis, args.backend, args.volume)
    text = json.dumps(result, indent=2)
    logger.info("%s", text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
