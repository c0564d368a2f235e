"""Turn a PyTorch state dict into a safe model package (tumorseg import's original interface).

Example::

    tumorseg import-weights model.pt --architecture unet3d \\
        --kwargs '{"in_channels": 1, "out_channels": 2, "features": [16, 32, 64, 128]}' \\
        --name my-liver-model --spacing 1.5 1.5 1.5 --patch-size 96 96 96 \\
        --modality CT --normalization '{"type": "ct", "window": [-100, 300]}' \\
        --labels '[{"value": 1, "name": "Tumor", "color": [0.9, 0.3, 0.2]}]' -o my-liver-model

JSON options take either JSON text or ``@file.json``. This is an alias of
``tumorseg import`` (:mod:`tumorseg_core.commands.import_model`, the one implementation)
with its original interface: state dicts only, every manifest option required, ``-o``.
"""

from __future__ import annotations

import argparse

from tumorseg_core.commands import import_model
from tumorseg_core.commands.import_model import _json_arg, build_manifest_fields, run

__all__ = ["_json_arg", "add_arguments", "build_manifest_fields", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the import-weights options on ``parser`` (``import``'s, in their original form)."""
    import_model.add_arguments(parser, legacy=True)
