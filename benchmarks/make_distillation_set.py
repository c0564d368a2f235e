"""Write a distillation set for a cascade's coarse network: what it sees, and what it must flag.

A cascade's coarse network must flag everything the full-resolution model would label
(lesions and its false positives alike), so it is trained on that model's output, not on
the phantoms' truth, and on exactly the input the cascade gives it at run time::

    python benchmarks/make_distillation_set.py /tmp/distill -n 160 --input-clip -2 4 [--device cuda --jobs 8]
    tumorseg train configs/default_model_coarse.json --data /tmp/distill -o coarse [--device cuda]
    python benchmarks/attach_cascade.py default coarse -o with-cascade --input-clip -2 4
    python benchmarks/cascade_agreement.py /tmp/tune40 --model with-cascade

Per phantom (the training generator's, seed 7 so they are not the default model's own
training cases) it runs the model's exhaustive pass and writes, on the **coarse grid**
(the model grid average-pooled by ``--factor``, as ``cascade.area_pool`` does at run time):

- ``images/syn_NNN.nii.gz``: the pooled, already normalized volume (float32; clipped to
  ``--input-clip``, e.g. ``-2 4``, which the cascade then applies too), so the coarse
  training config uses normalization ``none``;
- ``labels/syn_NNN.nii.gz``: 1 where the coarse voxel contains ANY voxel the model labels
  (after its postprocessing). Nearest-neighbour downsampling of the full-resolution labels
  would erase lesions smaller than a coarse voxel, which are exactly the ones a cascade
  must not lose.

An odd model-grid axis loses its last slice, so the coarse spacing is exactly ``factor``
times the model's and training resamples nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def coarse_pair(volume: np.ndarray, labels: np.ndarray, grid, factor: int, input_clip=None):
    """``(image, label)`` SimpleITK images on the coarse grid of a (C, z, y, x) model-grid volume
    (the pooled image clipped to ``input_clip`` = (low, high) when given, as the cascade does)."""
    import SimpleITK as sitk

    from tumorseg_core.inference.cascade import area_pool

    even = tuple(n - n % factor for n in labels.shape)
    crop = tuple(slice(0, n) for n in even)
    small = tuple(n // factor for n in even)
    image = area_pool(volume[(slice(None), *crop)], small)
    if input_clip is not None:
        np.clip(image, input_clip[0], input_clip[1], out=image)
    hit = area_pool(labels[crop][None].astype(np.float32), small)[0] > 0
    spacing = np.asarray(grid.spacing, dtype=float)
    direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    # A coarse voxel's centre is the centre of the `factor` fine voxels it averages.
    origin = np.asarray(grid.origin, dtype=float) + direction @ (spacing * (factor - 1) / 2.0)
    pair = []
    for array in (image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1), hit.astype(np.uint8)):
        out = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=array.ndim == 4)
        out.SetSpacing(tuple(float(s) * factor for s in spacing))
        out.SetOrigin(tuple(float(v) for v in origin))
        out.SetDirection(tuple(float(v) for v in direction.ravel()))
        pair.append(out)
    return pair


_WORKER: dict = {}


def _start_worker(model: str, device: str, threads: int | None) -> None:
    """Worker process set-up: its own thread share and its own Segmenter (loaded once)."""
    from tumorseg_core.inference.devices import configure_threads
    from tumorseg_core.inference.segmenter import Segmenter

    if threads:
        configure_threads(threads)
    _WORKER["segmenter"] = Segmenter(model, device=device, cascade=False)


def label_case(images: list[str], targets: list[str], factor: int, input_clip) -> int:
    """Write one case's coarse (image, label) pair (unless both exist); returns its flagged voxel count."""
    import SimpleITK as sitk

    paths = [Path(t) for t in targets]
    if not all(t.exists() for t in paths):
        segmenter = _WORKER["segmenter"]
        volume, grid, _ = segmenter.prepare(images)
        labels = segmenter.model_grid_labels(volume)
        for image, target in zip(coarse_pair(volume, labels, grid, factor, input_clip), paths):
            partial = target.with_name(".partial-" + target.name)
            sitk.WriteImage(image, str(partial), True)
            partial.replace(target)
    return int(np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(paths[1])))))


def _label_all(jobs: list[tuple], args: argparse.Namespace):
    """Counts of :func:`label_case` in case order, in ``args.jobs`` spawned processes when > 1
    (each loads the model once; on a GPU they share the card, on a CPU they split the cores)."""
    if args.jobs <= 1:
        _start_worker(args.model, args.device, None)
        yield from (label_case(*job) for job in jobs)
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(args.model, args.device, threads)) as pool:
        yield from pool.map(label_case, *zip(*jobs))


def main(argv: list[str] | None = None) -> int:
    from tumorseg_core.training.synthetic_data import synthetic_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("-n", type=int, default=160)
    parser.add_argument("--model", default="default")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--factor", type=int, default=2, help="coarse spacing / model spacing (the cascade's factor)")
    parser.add_argument("--max-size", type=int, default=128, help="voxels per axis of a phantom")
    parser.add_argument("--fov-mm", type=float, nargs=2, default=[80.0, 320.0], metavar=("MIN", "MAX"),
                        help="field of view range of the phantoms (the exhaustive pass's cost grows with it)")
    parser.add_argument("--input-clip", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="clip the pooled volumes to this range (give attach_cascade.py the same)")
    parser.add_argument("--device", default="cpu", help="where the model labels the phantoms (cpu, cuda, auto)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="label in this many processes (a GPU box: ~cores/2; they share the card)")
    args = parser.parse_args(argv)
    if args.factor < 2:
        parser.error("--factor must be an integer >= 2")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    options = {"fov_mm": list(args.fov_mm), "max_size": args.max_size, "lesion_radius_mm": [2.5, 20.0]}
    cases = synthetic_cases(args.n, args.seed, options, args.folder / "generated")
    for folder in ("images", "labels"):
        (args.folder / folder).mkdir(parents=True, exist_ok=True)
    input_clip = tuple(args.input_clip) if args.input_clip else None
    jobs = [([str(p) for p in case.images],
             [str(args.folder / folder / Path(case.images[0]).name) for folder in ("images", "labels")],
             args.factor, input_clip) for case in cases]
    flagged = 0
    for i, (job, count) in enumerate(zip(jobs, _label_all(jobs, args))):
        flagged += count > 0
        print(f"{i + 1}/{len(cases)} {Path(job[0][0]).name}: {count} coarse voxels flagged", flush=True)
    print(f"{flagged}/{len(cases)} cases with flagged voxels", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
