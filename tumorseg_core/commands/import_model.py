"""Import a pretrained model as a safe TumorSeg model package (nnU-Net, MONAI bundle, ONNX, state dict).

Example::

    tumorseg import model.pt --architecture unet3d \\
        --kwargs '{"in_channels": 1, "out_channels": 2, "features": [16, 32, 64, 128]}' \\
        --name my-liver-model --spacing 1.5 1.5 1.5 --patch-size 96 96 96 \\
        --modality CT --normalization '{"type": "ct", "window": [-100, 300]}' \\
        --labels '[{"value": 1, "name": "Tumor", "color": [0.9, 0.3, 0.2]}]' --install

``-o DIR`` writes the package folder instead of installing it into the user model
folder (``$TUMORSEG_MODELS`` or ``~/.tumorseg/models``). Several ``.pt`` files become an
ensemble. The file is read weights-only: a checkpoint that holds anything but tensors
and plain data (plus the numpy scalars of nnU-Net checkpoints) is refused, and nothing
in it runs.
An nnU-Net v2 trained-model folder (``dataset.json``, ``plans.json``, ``fold_N/``) or the
zip ``nnUNetv2_export_model_to_zip`` writes needs no manifest options::

    tumorseg import Dataset501_X/nnUNetTrainer__nnUNetPlans__3d_fullres -o my-model --folds 0,1

(``--checkpoint final|best``, ``--configuration`` when a zip holds several, ``--name``).
A MONAI bundle folder or zip needs only ``--name`` (optional). An ``.onnx`` file needs a
JSON sidecar, ``model.onnx.json`` next to it or ``--sidecar FILE``, with the manifest
fields the graph cannot hold (inputs, spacing, patch_size, output; optionally name,
orientation, postprocessing, inference, license, description, citation)::

    tumorseg import model.onnx [--sidecar model.onnx.json] -o my-model

JSON options take either JSON text or ``@file.json``.
``tumorseg import-weights`` is this command restricted to state dicts, with every
manifest option required and ``-o``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tumorseg_core.errors import InputError, ModelPackageError

logger = logging.getLogger(__name__)


def _json_arg(text: str, option: str) -> Any:
    """Parse an option given as JSON text or ``@path`` to a JSON file."""
    source = text
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{option}: cannot read {path} ({exc.strerror}); check the path") from exc
    try:
        return json.loads(source)
    except ValueError as exc:
        raise InputError(f"{option} is not valid JSON ({exc}); quote it, e.g. '{{\"type\": \"zscore\"}}'") from exc


def add_arguments(parser: argparse.ArgumentParser, legacy: bool = False) -> None:
    """Register the import options on ``parser``.

    ``legacy=True`` gives ``import-weights``' interface: state dicts only, every manifest
    option required, ``-o`` required and no ``--install``. Without it (``import``) the
    manifest options are checked per kind of SOURCE, and ``-o`` or ``--install`` is required.
    """
    need = legacy
    if legacy:
        parser.add_argument("sources", nargs="+", metavar="STATE_DICT.pt",
                            help="PyTorch state dict(s); several files become an ensemble (one fold each)")
    else:
        parser.add_argument("sources", nargs="+", metavar="SOURCE",
                            help="what to import: an nnU-Net v2 model folder or zip, a MONAI bundle, an .onnx file "
                                 "(with its JSON sidecar), or PyTorch state dict(s) (.pt/.pth; several "
                                 "files become an ensemble, one fold each)")
    for_pt = "" if legacy else " (needed for a .pt state dict; default: none)"
    required = " (required)" if legacy else ""
    parser.add_argument("--architecture", required=need, help=f"registered architecture name, e.g. unet3d{for_pt}{required}")
    parser.add_argument("--kwargs", default="{}", help="architecture kwargs as JSON (or @file.json) (default: {}, the architecture's defaults)")
    parser.add_argument("--name", required=need,
                        help="package name (letters, digits, . _ -)"
                             + (required if legacy else " (default: the output folder's or file's name)"))
    parser.add_argument("--version", default="1.0.0", help="package version (default 1.0.0)")
    parser.add_argument("--license", default="unknown", help="license of the weights, e.g. Apache-2.0 (default: unknown)")
    parser.add_argument("--description", default=None, help="one paragraph shown to users (default: none)")
    parser.add_argument("--spacing", nargs=3, type=float, required=need, metavar=("X", "Y", "Z"),
                        help=f"voxel spacing in mm the model was trained at (x y z){for_pt}{required}")
    parser.add_argument("--patch-size", nargs=3, type=int, required=need, metavar=("X", "Y", "Z"),
                        help=f"sliding-window size in voxels (x y z){for_pt}{required}")
    parser.add_argument("--orientation", default="LPS", help="3-letter orientation code, or 'none' to keep the input's (default: LPS)")
    parser.add_argument("--modality", action="append", required=need,
                        help=f"input channel name as shown to users; repeat once per channel, in order{for_pt}{required}")
    parser.add_argument("--normalization", action="append", default=None,
                        help="normalization JSON; give one for all channels or one per --modality "
                             '(default: {"type": "none"}, intensities as they are)')
    parser.add_argument("--labels", required=need,
                        help="JSON list of {value, name, color, terminology} (sigmoid: the regions in paint order)"
                             + for_pt + required)
    parser.add_argument("--output-type", choices=("softmax", "sigmoid"), default="softmax",
                        help="softmax: one label per voxel; sigmoid: overlapping regions, one channel each "
                             "(default: softmax)")
    parser.add_argument("--postprocessing", default=None, help="postprocessing rules as a JSON list (default: none)")
    parser.add_argument("--inference", default=None, help="inference options as JSON, e.g. '{\"overlap\": 0.5}' (default: TumorSeg's defaults)")
    parser.add_argument("--metrics", default=None, help="validation metrics as JSON, shown with the model (default: none)")
    parser.add_argument("--readme", default=None, type=Path, help="Markdown file to ship as README.md (default: a generated one)")
    if legacy:
        parser.add_argument("-o", "--output", required=True, type=Path, help="package folder to create (required)")
        parser.set_defaults(install=False)
    else:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("-o", "--output", type=Path,
                           help="package folder to create (this or --install is required)")
        where.add_argument("--install", action="store_true",
                           help="install into the user model folder ($TUMORSEG_MODELS or ~/.tumorseg/models) "
                                "(default: off; this or -o is required)")
    if not legacy:
        parser.add_argument("--folds", default=None,
                            help="nnU-Net: folds to import, e.g. 0,1 (default: every fold_N with the checkpoint)")
        parser.add_argument("--checkpoint", choices=("final", "best"), default="final",
                            help="nnU-Net: checkpoint_final.pth (default) or checkpoint_best.pth")
        parser.add_argument("--configuration", default=None,
                            help="nnU-Net: which model when the source holds several (3d_fullres, 3d_lowres, 2d) "
                                 "(default: the only one)")
        parser.add_argument("--sidecar", default=None, type=Path, metavar="FILE",
                            help="ONNX: the JSON sidecar (inputs, spacing, patch_size, output, ...); "
                                 "default: SOURCE.json next to the .onnx file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder" + ("" if legacy else " or installed model")
                             + " (default: off, refuse)")


def build_manifest_fields(args: argparse.Namespace) -> dict:
    """Turn parsed options into manifest fields (everything except architecture/kwargs/files)."""
    norms = [_json_arg(n, "--normalization") for n in (args.normalization or ['{"type": "none"}'])]
    if len(norms) == 1:
        norms = norms * len(args.modality)
    if len(norms) != len(args.modality):
        raise InputError(
            f"{len(args.modality)} --modality but {len(norms)} --normalization; give one for all or one per modality"
        )
    labels = _json_arg(args.labels, "--labels")
    fields = {
        "version": args.version,
        "license": args.license,
        "inputs": [{"modality": m, "normalization": n} for m, n in zip(args.modality, norms)],
        "spacing": list(args.spacing),
        "patch_size": list(args.patch_size),
        "orientation": None if args.orientation.lower() in ("none", "null") else args.orientation,
        "output": {"type": args.output_type, "labels" if args.output_type == "softmax" else "regions": labels},
    }
    if args.name is not None:
        fields["name"] = args.name
    if args.description:
        fields["description"] = args.description
    for key in ("postprocessing", "inference", "metrics"):
        value = getattr(args, key)  # fixed option names, not names read from a file
        if value is not None:
            fields[key] = _json_arg(value, f"--{key}")
    return fields


def _check_state_dict_options(args: argparse.Namespace) -> None:
    """A state dict holds only weights: the options describing the model must all be given."""
    missing = [option for option, value in (
        ("--architecture", args.architecture), ("--spacing", args.spacing), ("--patch-size", args.patch_size),
        ("--modality", args.modality), ("--labels", args.labels),
    ) if value is None]
    if missing:
        raise InputError(
            f"{Path(args.sources[0]).name} is a PyTorch state dict, which holds only weights: "
            f"also give {', '.join(missing)} (see 'tumorseg import --help')"
        )


def run(args: argparse.Namespace) -> int:
    """Import the source(s) and write or install the package; user errors raise TumorSegError."""
    from tumorseg_core.modelpkg.convert import import_model, source_kind

    kinds = [source_kind(source) for source in args.sources]  # refuse what this version cannot import first
    if getattr(args, "sidecar", None) is not None and "onnx" not in kinds:
        raise InputError("--sidecar describes an .onnx source; the other sources need none")
    if "nnunet" in kinds:
        return _run_nnunet(args, import_model)
    if "package" in kinds:  # a TumorSeg package: verified and installed as it is
        out = import_model(args.sources, out_dir=args.output, install=args.install, overwrite=args.overwrite)
        sys.stdout.write(f"{out}\n")
        return 0
    if "onnx" in kinds:  # the graph and its JSON sidecar bring everything but (optionally) the name
        fields = {"name": args.name} if args.name else {}
        out = import_model(args.sources, out_dir=args.output, install=args.install, overwrite=args.overwrite,
                           sidecar=args.sidecar, **fields)
        logger.info("%s model package %s", "installed" if args.install else "wrote", out)
        sys.stdout.write(f"{out}\n")
        return 0
    if "monai" in kinds:  # a MONAI bundle brings everything but the name
        fields = {"name": args.name} if args.name else {}
        out = import_model(args.sources, out_dir=args.output, install=args.install, overwrite=args.overwrite, **fields)
        sys.stdout.write(f"{out}\n")
        return 0
    _check_state_dict_options(args)
    kwargs = _json_arg(args.kwargs, "--kwargs")
    if not isinstance(kwargs, dict):
        raise ModelPackageError("--kwargs must be a JSON object, e.g. '{\"in_channels\": 1, \"out_channels\": 2}'")
    readme = None
    if args.readme is not None:
        try:
            readme = args.readme.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read --readme {args.readme} ({exc.strerror}); check the path") from exc
    out = import_model(
        args.sources, out_dir=args.output, install=args.install, architecture=args.architecture, kwargs=kwargs,
        readme=readme, overwrite=args.overwrite, **build_manifest_fields(args),
    )
    logger.info("%s model package %s", "installed" if args.install else "wrote", out)
    sys.stdout.write(f"{out}\n")  # the command's result, for scripts: the package path
    return 0


def _run_nnunet(args: argparse.Namespace, import_model: Any) -> int:
    """An nnU-Net v2 folder or zip: everything comes from its dataset.json, plans.json and checkpoints."""
    folds = None
    if getattr(args, "folds", None):
        folds = [f.strip() for f in args.folds.split(",") if f.strip()]
        if not all(f.isdigit() or f == "all" for f in folds):
            raise InputError(f"--folds must list fold numbers such as 0,1 (or 'all'), got {args.folds!r}")
    fields = {"name": args.name, "description": args.description}
    if args.license != "unknown":
        fields["license"] = args.license
    if args.version != "1.0.0":
        fields["version"] = args.version
    readme = args.readme.read_text(encoding="utf-8") if args.readme is not None else None
    out = import_model(args.sources, out_dir=args.output, install=args.install, readme=readme,
                       overwrite=args.overwrite, folds=folds, checkpoint=args.checkpoint,
                       configuration=args.configuration, **{k: v for k, v in fields.items() if v is not None})
    logger.info("%s model package %s", "installed" if args.install else "wrote", out)
    sys.stdout.write(f"{out}\n")
    return 0
