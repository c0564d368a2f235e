"""A per-session foreground/background classifier on voxel features (Gaussian mixtures).

Each class (foreground samples from clicks, scribbles and the previous result's inside;
background samples from the crop border, background clicks and the previous result's
outside) is modelled by a few Gaussians (k-means on whitened features, then one full
covariance per cluster, regularised); a heterogeneous tumour (rim, necrotic core) gets
one cluster per part. The output is the foreground posterior with equal class priors.
numpy and scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2

MAX_SAMPLES = 3000  # per class
FG_CLUSTERS = 3  # a rim, a core, a margin
BG_CLUSTERS = 5  # the organ, fat, vessels, bone, air
MIN_PER_CLUSTER = 40
RIDGE = 0.05  # covariance regularisation, in whitened feature units


class _Mixture:
    """Gaussian mixture of one class in whitened feature space."""

    def __init__(self, samples: np.ndarray, weights: np.ndarray, rng: np.random.Generator, clusters: int) -> None:
        k = int(np.clip(samples.shape[0] // MIN_PER_CLUSTER, 1, clusters))
        if k > 1:
            _, lab = kmeans2(samples, k, minit="++", seed=rng, missing="warn")
        else:
            lab = np.zeros(samples.shape[0], dtype=int)
        self.parts = []
        d = samples.shape[1]
        for c in np.unique(lab):
            sel = lab == c
            if sel.sum() < 3:
                continue
            w = weights[sel]
            mean = np.average(samples[sel], axis=0, weights=w)
            diff = samples[sel] - mean
            cov = (diff * w[:, None]).T @ diff / w.sum() + RIDGE * np.eye(d)
            inv = np.linalg.inv(cov)
            logdet = float(np.linalg.slogdet(cov)[1])
            self.parts.append((float(w.sum()), mean, inv, logdet))
        total = sum(p[0] for p in self.parts)
        self.parts = [(float(np.log(w / total)), m, i, ld) for w, m, i, ld in self.parts]

    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """log p(x | class) for the columns of ``x`` (F, N); elementwise only (no BLAS threads)."""
        terms = []
        for logw, mean, inv, logdet in self.parts:
            chol = np.linalg.cholesky(inv)  # inv = L L^T: maha = |L^T (x - mean)|^2
            diff = [x[j] - np.float32(mean[j]) for j in range(x.shape[0])]
            maha = np.zeros(x.shape[1], dtype=np.float32)
            for k in range(x.shape[0]):
                y = np.zeros(x.shape[1], dtype=np.float32)
                for j in range(k, x.shape[0]):
                    y += np.float32(chol[j, k]) * diff[j]
                maha += y * y
            terms.append(np.float32(logw - 0.5 * logdet) - 0.5 * maha)
        out = terms[0]
        for t in terms[1:]:
            out = np.logaddexp(out, t)
        return out


def _sample(mask_values: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = mask_values.shape[0]
    if n <= MAX_SAMPLES:
        return np.arange(n)
    p = weights / weights.sum()
    return rng.choice(n, MAX_SAMPLES, replace=False, p=p)


def foreground_probability(features: np.ndarray, fg_weight: np.ndarray, bg_weight: np.ndarray,
                           prior: float = 0.5, seed: int = 0) -> np.ndarray:
    """Posterior P(foreground) (z, y, x) float32 from features (F, z, y, x).

    ``fg_weight`` / ``bg_weight`` (z, y, x) are per-voxel sample weights (0 = not a sample;
    user clicks weigh more than samples taken from the previous result); ``prior`` is
    P(foreground) before the features are seen. 0.5 everywhere when a class has no sample.
    """
    f = features.reshape(features.shape[0], -1)
    mean = f.mean(axis=1, keepdims=True)
    std = f.std(axis=1, keepdims=True) + 1e-6
    fw = ((f - mean) / std).astype(np.float32)
    rng = np.random.default_rng(seed)
    fgw, bgw = fg_weight.ravel(), bg_weight.ravel()
    fi, bi = np.nonzero(fgw > 0)[0], np.nonzero(bgw > 0)[0]
    if fi.size < 3 or bi.size < 3:
        return np.full(features.shape[1:], 0.5, dtype=np.float32)
    fi = fi[_sample(fi, fgw[fi], rng)]
    bi = bi[_sample(bi, bgw[bi], rng)]
    fg = _Mixture(fw[:, fi].T.astype(np.float64), fgw[fi].astype(np.float64), rng, FG_CLUSTERS)
    bg = _Mixture(fw[:, bi].T.astype(np.float64), bgw[bi].astype(np.float64), rng, BG_CLUSTERS)
    logit = fg.log_likelihood(fw) - bg.log_likelihood(fw) + np.float32(np.log(prior / (1.0 - prior)))
    prob = 1.0 / (1.0 + np.exp(-np.clip(logit, -30.0, 30.0)))
    return prob.reshape(features.shape[1:]).astype(np.float32)
