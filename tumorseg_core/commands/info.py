"""Show versions, compute devices, threads and model folders (paste this into bug reports)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys

OPTIONAL_PACKAGES = ("numpy", "SimpleITK", "torch", "monai", "safetensors", "scipy", "slicerio",
                     "onnxruntime", "openvino")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: off, a readable list)")


def _version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken optional package is reported, not fatal
        return "not installed"
    return str(getattr(module, "__version__", "?"))


def collect() -> dict:
    from tumorseg_core import __version__
    from tumorseg_core.modelpkg.package import default_models_dir, user_models_dir

    report: dict = {
        "tumorseg": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {name: _version(name) for name in OPTIONAL_PACKAGES},
        "default_model_dir": str(default_models_dir()),
        "user_model_dir": str(user_models_dir()),
    }
    try:
        from tumorseg_core.inference.devices import device_report

        report["devices"] = device_report()
    except ImportError as error:
        report["devices"] = {"error": f"torch is not usable: {error}"}
    return report


def run(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for sub_key, sub_value in value.items():
                print(f"  {sub_key}: {sub_value}")
        else:
            print(f"{key}: {value}")
    return 0
