"""Random walker with a prior (Grady 2005) on a 6-connected isotropic grid, warm-started.

Minimises ``sum_ij w_ij (x_i - x_j)^2 + gamma * sum_i [p_i (1 - x_i)^2 + (1 - p_i) x_i^2]``
with ``x`` fixed to 1 on foreground seeds and 0 on background seeds: ``p`` is the
classifier's foreground probability, the weights ``w_ij = exp(-beta d_ij^2)`` fall across
edges of the smoothed image and of ``p``. The linear system is solved matrix-free
(a 6-neighbour stencil on the grid) by conjugate gradients with a Jacobi preconditioner,
starting from the previous solution, so a corrective click re-solves in few iterations.
Only elementwise numpy: no BLAS call, whose threads thrash on a busy CPU. numpy only.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

BETA = 4.0
PROB_WEIGHT = 1.0  # weight of the probability's edges against the image's
GAMMA = 0.05  # weight of the prior against the edges (edge weights are <= 1)
EPS = 1e-4
TOL = 1e-2  # relative residual: the result is thresholded at 0.5
MAX_ITER = 300


def edge_weights(image: np.ndarray, prob: np.ndarray) -> list[np.ndarray]:
    """Weights of the grid's edges along z, y and x (arrays one shorter along their axis) from an
    image and a probability, both (z, y, x)."""
    di = [np.diff(image, axis=ax) for ax in range(3)]
    dp = [np.diff(prob, axis=ax) for ax in range(3)]
    si = sum(float(np.mean(d * d)) for d in di) / 3.0 + 1e-12
    sp = sum(float(np.mean(d * d)) for d in dp) / 3.0 + 1e-3
    return [(np.exp(-0.5 * BETA * (a * a / si + PROB_WEIGHT * b * b / sp)) + EPS).astype(np.float32)
            for a, b in zip(di, dp)]


def _neighbour_sum(weights: list[np.ndarray], v: np.ndarray) -> np.ndarray:
    """``sum_j w_ij v_j`` over the 6 neighbours j of every voxel i."""
    out = np.zeros_like(v)
    for ax, w in enumerate(weights):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        out[tuple(lo)] += w * v[tuple(hi)]
        out[tuple(hi)] += w * v[tuple(lo)]
    return out


def _degree(weights: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return _neighbour_sum(weights, np.ones(shape, dtype=np.float32))


def solve(weights: list[np.ndarray], prior: np.ndarray, fg_seeds: np.ndarray, bg_seeds: np.ndarray,
          x0: Optional[np.ndarray] = None, gamma: float = GAMMA) -> np.ndarray:
    """Foreground potential (z, y, x) float32 in [0, 1].

    ``weights`` from :func:`edge_weights`; ``prior`` P(foreground) (z, y, x); seeds are bool
    (z, y, x), foreground winning where both are set; ``x0`` a previous solution.
    """
    shape = prior.shape
    fixed = fg_seeds | bg_seeds
    free = ~fixed
    value = fg_seeds.astype(np.float32)
    diag = _degree(weights, shape) + np.float32(gamma)
    inv_diag = 1.0 / diag
    rhs = (np.float32(gamma) * prior.astype(np.float32) + _neighbour_sum(weights, value)) * free
    x = np.where(free, prior if x0 is None else x0, 0.0).astype(np.float32)

    def apply(v: np.ndarray) -> np.ndarray:
        return (diag * v - _neighbour_sum(weights, v)) * free

    r = rhs - apply(x)
    norm_b = float(np.sqrt((rhs * rhs).sum())) + 1e-12
    z = r * inv_diag
    p = z.copy()
    rz = float((r * z).sum())
    for _ in range(MAX_ITER):
        if float(np.sqrt((r * r).sum())) <= TOL * norm_b:
            break
        ap = apply(p)
        alpha = rz / max(float((p * ap).sum()), 1e-30)
        x += np.float32(alpha) * p
        r -= np.float32(alpha) * ap
        z = r * inv_diag
        rz_new = float((r * z).sum())
        p = z + np.float32(rz_new / max(rz, 1e-30)) * p
        rz = rz_new
    return np.clip(np.where(free, x, value), 0.0, 1.0).astype(np.float32)
