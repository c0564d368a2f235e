"""Attach a trained coarse network to a model package as its ROI cascade (manifest ``cascade``).

The coarse package (``tumorseg train`` at the coarse scale on ``make_distillation_set.py``
output, normalization ``none``) must take the same inputs and have the same output type
and channel count; its grid spacing should be ``factor`` x the package's::

    python benchmarks/attach_cascade.py default /tmp/coarse -o /tmp/with-cascade --threshold 0.1

Both packages are verified; the result is written atomically with a new manifest whose
``files`` lists the coarse weights' sha256, and the coarse package's training config is
kept as ``coarse_training_config.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from tumorseg_core.modelpkg.package import open_package, write_package

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="model package (name, folder or .zip)")
    parser.add_argument("coarse", help="the coarse network's package")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--factor", type=float, help="coarse spacing / model spacing (default: from the spacings)")
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--margin-mm", type=float, default=10.0)
    parser.add_argument("--input-clip", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="clip the pooled volume to this range first (as make_distillation_set.py --input-clip did)")
    parser.add_argument("--opt-in", action="store_true", help='"default": false (cascade only when asked for)')
    parser.add_argument("--readme", type=Path, help="README.md for the result (default: the package's)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    fine, coarse = open_package(args.package), open_package(args.coarse)
    if len(coarse.weight_files) != 1:
        parser.error(f"{args.coarse} holds {len(coarse.weight_files)} networks; give a single-network package")
    if fine.manifest.num_inputs != coarse.manifest.num_inputs or fine.manifest.output_type != coarse.manifest.output_type:
        parser.error("the coarse package must take the same inputs and have the same output type")
    # The cascade feeds the coarse network the package's already normalized volume, pooled:
    # a coarse package trained on that (make_distillation_set.py) normalizes nothing.
    pre_normalized = all((n or {}).get("type", "none") == "none" for n in coarse.manifest.normalizations)
    if not pre_normalized and fine.manifest.normalizations != coarse.manifest.normalizations:
        parser.error("the coarse package must normalize its inputs like the package, or not at all "
                     "(trained on make_distillation_set.py's normalized volumes)")
    ratios = [c / f for c, f in zip(coarse.manifest.spacing_xyz, fine.manifest.spacing_xyz)]
    if args.factor is None and max(ratios) - min(ratios) > 1e-6:
        parser.error(f"the spacing ratios {ratios} differ per axis; give --factor")
    factor = args.factor or ratios[0]
    manifest = fine.manifest.to_dict()
    manifest.pop("files")
    manifest.pop("format_version", None)  # set by the writer: 2 with a cascade section
    manifest["cascade"] = {
        "weights": "coarse.safetensors", "architecture": coarse.manifest.architecture,
        "kwargs": coarse.manifest.kwargs, "patch_size": list(coarse.manifest.patch_size_xyz),
        "factor": factor, "threshold": args.threshold, "margin_mm": args.margin_mm,
        "input_clip": args.input_clip, "default": not args.opt_in,
    }
    readme = args.readme.read_text(encoding="utf-8") if args.readme else None
    if readme is None and (fine.root / "README.md").is_file():
        readme = (fine.root / "README.md").read_text(encoding="utf-8")
    extras = {name: (fine.root / name).read_bytes() for name in fine.manifest.files
              if not name.endswith(".safetensors") and name != "README.md"}
    if (coarse.root / "training_config.json").is_file():
        extras["coarse_training_config.json"] = (coarse.root / "training_config.json").read_bytes()
    weights = [net.state_dict() for net in fine.load_networks()]  # verified against the sha256 again
    path = write_package(args.output, manifest, weights, readme=readme, extra_files=extras,
                         overwrite=args.overwrite, cascade_state_dict=coarse.load_networks()[0].state_dict())
    print(f"wrote {path} (cascade: factor {factor:g}, threshold {args.threshold:g}, margin {args.margin_mm:g} mm, "
          f"input clip {args.input_clip})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
