"""Where the time goes in one ``segment()`` call: read, resample, network+stitching, postprocess, write.

    python benchmarks/stage_breakdown.py [--case mri256] [--model default] [--backend auto] [--json]

Runs the same stages as ``tumorseg_core.inference.segmenter.Segmenter.segment`` one by one on a
phantom written to disk (same generator and sizes as ``cpu_vs_monai.py``), after one
warm-up call so the exported model is cached and loaded. Prints seconds per stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_vs_monai import CASES, make_case  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="mri256", choices=sorted(CASES))
    parser.add_argument("--model", default="default")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--work", default=None, help="folder for the phantom and output (default: a temp folder)")
    args = parser.parse_args(argv)

    from tumorseg_core.imaging import geometry, postprocess
    from tumorseg_core.imaging.io import read_images, write_labelmap
    from tumorseg_core.inference.devices import configure_threads
    from tumorseg_core.inference.segmenter import Segmenter, SegmentOptions

    configure_threads()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tumorseg-breakdown-"))
    image_path = make_case(args.case, work)
    segmenter = Segmenter(args.model, "cpu", backend=args.backend)
    segmenter.segment(str(image_path))  # warm-up: export/load once, like a warm Slicer worker

    stages: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        started = time.perf_counter()
        out = fn(*a, **k)
        stages[name] = round(time.perf_counter() - started, 2)
        return out

    # The pipeline's own read: slab by slab onto the model grid where the file allows it.
    streamed = timed("read+resample+normalize", segmenter.read_streaming, [str(image_path)], None)
    if streamed is not None:
        volume, grid, reference = streamed
    else:
        del stages["read+resample+normalize"]
        inputs = timed("read", read_images, [str(image_path)])
        aligned = geometry.align_to_reference(inputs)
        volume, grid = timed("resample+normalize", segmenter.prepare_aligned, aligned)
        reference = geometry.GridGeometry.of(inputs[0])
        del inputs, aligned
    predictor = segmenter.predictor(SegmentOptions(backend=args.backend))
    labels = timed("network+stitching", predictor.predict, volume)
    manifest = segmenter.manifest
    labels = timed("postprocess", postprocess.postprocess_labels, labels, manifest.spacing_xyz,
                   manifest.postprocessing)
    label_image = grid.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(labels)))
    result = timed("labels to input grid", geometry.labels_to_reference, label_image, reference)
    timed("write .seg.nrrd", write_labelmap, result, str(work / "out.seg.nrrd"))
    total = round(sum(stages.values()), 2)
    report = {"case": args.case, "size_xyz": list(reference.size), "model_grid_xyz": list(grid.size),
              "backend": predictor.backend,
              "stages_s": stages, "total_s": total}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.case}: input {report['size_xyz']}, model grid {report['model_grid_xyz']}")
    for name, seconds in stages.items():
        print(f"  {name:<22} {seconds:7.2f} s  {100 * seconds / total:5.1f} %")
    print(f"  {'total':<22} {total:7.2f} s")


if __name__ == "__main__":
    main()
