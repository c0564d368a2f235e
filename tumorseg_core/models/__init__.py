"""Network architectures a model package may name: the allowlist (:mod:`.registry`) and the networks.

Owns the registry (``ARCHITECTURES``, ``build_network``, kwargs validation, window size
divisors) and TumorSeg's own network definitions (3D/2D U-Net, V-Net, SegResNet, DynUNet).
A package names an architecture by a registry key; classes are never resolved from strings.
Importing this package is cheap: torch and MONAI load only when a network is built.

May import: ``tumorseg_core.errors`` only.
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
