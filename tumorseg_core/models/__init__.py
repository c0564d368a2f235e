"""Network architectures a model package may name (see :mod:`.registry`).

Importing this package is cheap: torch and MONAI load only when a network is built.
"""

from __future__ import annotations

from tumorseg_core.models.registry import (
    ARCHITECTURES,
    ArchitectureSpec,
    build_network,
    effective_kwargs,
    get_spec,
    size_divisor,
    validate_kwargs,
)

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpec",
    "build_network",
    "effective_kwargs",
    "get_spec",
    "size_divisor",
    "validate_kwargs",
]
