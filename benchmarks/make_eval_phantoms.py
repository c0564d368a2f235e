"""Write fresh evaluation phantoms (images/ + labels/) for ``tumorseg evaluate --model``.

The default model's README table comes from::

    python benchmarks/make_eval_phantoms.py /tmp/eval20           # 20 phantoms
    tumorseg evaluate --model default --data /tmp/eval20 --csv /tmp/eval20.csv

Seeds start at 500000: training uses seeds below 100000 (per-case seeds are drawn from
``default_rng([0, i])``, i < 640) and ``tumorseg demo`` uses 424242 and small seeds, so
these cases are new to the model. Lesions are 5-40 mm in diameter (radius 2.5-20 mm);
modality alternates MRI / CT; the grid is the demo's 96x96x80 at 1.5 mm, every fourth case
anisotropic (1.0 x 1.0 x 3.0 mm). ``--size X Y Z --spacing X Y Z`` puts every case on one
other grid instead, e.g. the benchmark's 256x256x160 at 1 mm (a 256 mm field of view, larger
than the training phantoms' 70-150 mm)::

    python benchmarks/make_eval_phantoms.py /tmp/big --first-seed 800000 -n 6 --size 256 256 160 --spacing 1 1 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIRST_SEED = 500_000


def main(argv: list[str] | None = None) -> int:
    from tumorseg_core.synthetic import make_phantom, write_phantom

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("-n", type=int, default=20, help="number of phantoms (default 20)")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="one grid for every case (voxels)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="its spacing (mm)")
    args = parser.parse_args(argv)
    if (args.size is None) != (args.spacing is None):
        parser.error("--size and --spacing go together")
    for i in range(args.n):
        seed = args.first_seed + i
        anisotropic = i % 4 == 3
        grid = {"size_xyz": (144, 144, 40), "spacing_xyz": (1.0, 1.0, 3.0)} if anisotropic else {}
        if args.size:
            grid = {"size_xyz": tuple(args.size), "spacing_xyz": tuple(args.spacing)}
        phantom = make_phantom(seed, modality="mri" if i % 2 == 0 else "ct", lesion_radius_mm=(2.5, 20.0), **grid)
        paths = write_phantom(phantom, args.folder / "images", f"case_{i:02d}")
        (args.folder / "labels").mkdir(parents=True, exist_ok=True)
        paths["truth"].rename(args.folder / "labels" / f"case_{i:02d}.nii.gz")  # evaluate pairs files by name
        print(f"case_{i:02d}: seed {seed} {phantom.modality}, lesions (radius mm): "
              + ", ".join(f"{les.radius_mm:.1f}" for les in phantom.lesions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
