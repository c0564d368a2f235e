"""List the installed model packages (the shipped default and the user's model folder)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--install", metavar="PACKAGE", help="verify a package folder/.zip and install it (default: none, list the installed models)")


def run(args: argparse.Namespace) -> int:
    from tumorseg_core.modelpkg.package import install_package, installed_models

    if args.install:
        path = install_package(args.install)
        print(f"installed {path}")
        return 0
    models = installed_models()
    if not models:
        print("no model installed; 'tumorseg models --install PACKAGE' adds one")
        return 0
    for info in models:
        inputs = ", ".join(info.input_modalities)
        print(f"{info.name}\t{info.version}\tinputs: {inputs}\t{info.path}")
        if info.description:
            print(f"    {info.description.splitlines()[0][:100]}")
    return 0
