"""Direction cosines for test images (a plain module: test files import it by name, not from conftest)."""

from __future__ import annotations

import numpy as np


def rotation_direction(axis: str, degrees: float) -> tuple[float, ...]:
    """Row-major 3x3 direction cosines of a rotation by ``degrees`` about ``axis`` (x, y or z)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    matrices = {
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }
    return tuple(float(v) for v in np.asarray(matrices[axis]).ravel())
