"""Write a distillation set: synthetic phantoms labelled by a model's own exhaustive pass.

A cascade's coarse model must flag everything the full-resolution model would label
(lesions and its false positives alike), so it is trained on that model's output, not on
the phantoms' truth::

    python benchmarks/make_distillation_set.py /tmp/distill -n 480 --model default [--device cuda]
    tumorseg train configs/default_model_coarse.json --data /tmp/distill -o coarse [--device cuda]
    python benchmarks/attach_cascade.py default coarse -o with-cascade
    python benchmarks/cascade_agreement.py /tmp/tune40 --model with-cascade

Writes ``images/syn_NNN.nii.gz`` (the training generator's phantoms, seed 7 so they are
not the default model's own training cases) and ``labels/syn_NNN.nii.gz`` (the model's labels).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import SimpleITK as sitk

    from tumorseg_core.pipeline import Segmenter
    from tumorseg_core.training.synthetic_data import synthetic_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("-n", type=int, default=160)
    parser.add_argument("--model", default="default")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-size", type=int, default=128, help="voxels per axis of a phantom")
    parser.add_argument("--device", default="cpu", help="where the model labels the phantoms (cpu, cuda, auto)")
    args = parser.parse_args(argv)
    options = {"fov_mm": [80.0, 320.0], "max_size": args.max_size, "lesion_radius_mm": [2.5, 20.0]}
    cases = synthetic_cases(args.n, args.seed, options, args.folder / "generated")
    segmenter = Segmenter(args.model, device=args.device, cascade=False)
    for folder in ("images", "labels"):
        (args.folder / folder).mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        image = Path(case.images[0])
        target = args.folder / "labels" / image.name
        if not target.exists():
            sitk.WriteImage(segmenter.segment([str(image)]), str(target), True)
        link = args.folder / "images" / image.name
        if not link.exists():
            link.symlink_to(image.resolve())
        print(f"{i + 1}/{len(cases)} {image.name}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
