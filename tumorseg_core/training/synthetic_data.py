"""``synthetic:N`` training data: varied phantoms from :func:`tumorseg_core.synthetic.make_phantom`.

Phantoms are written once as NIfTI (``images/syn_000.nii.gz`` + ``labels/syn_000.nii.gz``)
into a folder keyed by ``(n, seed, options)``, so they go through exactly the same
reading, resampling and caching as real data. Every case draws its own settings from
``numpy.random.default_rng([seed, i])``: field of view, spacing (0.5-5 mm, some cases
anisotropic with one thick-slice axis), modality (MRI/CT), lesion count, lesion size,
noise level (lesion contrast-to-noise) and lesion contrast kind (hyper/hypo-intense,
necrotic, rim, picked by ``make_phantom``), and about 15 % of the cases are
lesion-free (teaching the network that an image may contain no tumour).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg_core.errors import InputError
from tumorseg_core.training.datasets import Case, DatasetSource

logger = logging.getLogger(__name__)

SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "fov_mm": [60.0, 140.0],  # physical extent per axis
    "spacing_mm": [0.5, 5.0],  # in-plane spacing range
    "anisotropic_fraction": 0.3,  # cases whose z spacing is 2-5x the in-plane spacing
    "max_size": 96,  # voxels per axis (caps fov / spacing)
    "min_size": 16,
    "modalities": ["mri", "ct"],
    "lesion_free_fraction": 0.15,
    "lesion_count": [1, 3],
    "lesion_radius_mm": [4.0, 15.0],
    "noise": [0.6, 1.5],  # multiple of the modality's typical noise (lower = higher contrast-to-noise)
    "lesion_kinds": None,  # allowed contrast kinds (hyper, hypo, necrotic, rim); None = all
    "phantom": {},  # passed to make_phantom unchanged (overrides the drawn values)
}
_FORMAT = 1


def _options(options: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(SYNTHETIC_DEFAULTS)
    for key, value in (options or {}).items():
        if key not in SYNTHETIC_DEFAULTS:
            raise InputError(f"unknown synthetic option {key!r}; use one of {', '.join(sorted(SYNTHETIC_DEFAULTS))}")
        merged[key] = value
    return merged


def draw_case_options(i: int, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """The make_phantom keyword arguments of case ``i`` (deterministic for ``seed``)."""
    rng = np.random.default_rng([int(seed), int(i)])
    lo, hi = (float(v) for v in options["spacing_mm"])
    in_plane = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # log-uniform: as many fine as coarse
    spacing = [in_plane, in_plane, in_plane]
    if rng.random() < float(options["anisotropic_fraction"]):
        spacing[2] = float(min(hi, in_plane * rng.uniform(2.0, 5.0)))
    fov = rng.uniform(*[float(v) for v in options["fov_mm"]], size=3)
    size = [int(np.clip(round(f / s), options["min_size"], options["max_size"])) for f, s in zip(fov, spacing)]
    n_lo, n_hi = (int(v) for v in options["lesion_count"])
    lesion_free = bool(rng.random() < float(options["lesion_free_fraction"]))
    drawn = {
        "seed": int(rng.integers(2**31 - 1)),
        "size_xyz": size,
        "spacing_xyz": [round(s, 3) for s in spacing],
        "modality": str(rng.choice(list(options["modalities"]))),
        "lesion_free": lesion_free,
        "n_lesions": 0 if lesion_free else int(rng.integers(n_lo, n_hi + 1)),
        "lesion_radius_mm": [float(v) for v in options["lesion_radius_mm"]],
        "noise": round(float(rng.uniform(*[float(v) for v in options["noise"]])), 3),
        "lesion_kinds": options["lesion_kinds"],
    }
    drawn.update(options["phantom"])
    return drawn


def _call_make_phantom(kwargs: dict[str, Any]) -> Any:
    from tumorseg_core.synthetic import make_phantom

    kwargs = dict(kwargs)
    seed = kwargs.pop("seed")
    try:
        return make_phantom(seed, **kwargs)
    except TypeError as exc:  # a key of options["phantom"] that make_phantom does not take
        raise InputError(f"synthetic phantom option rejected ({exc}); fix the 'synthetic.phantom' settings") from exc


def _write_case(job: tuple[int, dict[str, Any], str]) -> None:
    """Generate phantom ``i`` and write its image and truth (runs in a worker process)."""
    import SimpleITK as sitk

    i, kwargs, folder = job
    phantom = _call_make_phantom(kwargs)
    sitk.WriteImage(phantom.image, str(Path(folder) / "images" / f"syn_{i:03d}.nii.gz"), True)
    sitk.WriteImage(phantom.truth, str(Path(folder) / "labels" / f"syn_{i:03d}.nii.gz"), True)


def _generate(jobs: list[tuple[int, dict[str, Any], str]]) -> None:
    # Phantoms are independent and CPU-bound: use every core (a GPU box has many).
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 8:
        for job in jobs:
            _write_case(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(_write_case, jobs, chunksize=2):
            pass


def synthetic_cases(n: int, seed: int, options: dict[str, Any] | None, out_dir: Path | str) -> list[Case]:
    """Generate ``n`` varied phantoms under ``out_dir`` (once; later calls reuse them) and return their cases."""
    opts = _options(options)
    key = hashlib.sha256(json.dumps({"v": _FORMAT, "n": n, "seed": seed, "options": opts},
                                    sort_keys=True).encode("utf-8")).hexdigest()[:16]
    root = Path(out_dir) / f"phantoms-{key}"
    marker = root / "phantoms.json"
    if not marker.is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            (tmp / "images").mkdir()
            (tmp / "labels").mkdir()
            records = [draw_case_options(i, seed, opts) for i in range(n)]
            _generate([(i, dict(kwargs), str(tmp)) for i, kwargs in enumerate(records)])
            (tmp / "phantoms.json").write_text(json.dumps({"n": n, "seed": seed, "cases": records}, indent=1),
                                               encoding="utf-8")
            if root.exists():  # another process finished first; theirs is identical
                shutil.rmtree(tmp)
            else:
                tmp.rename(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("generated %d synthetic phantoms in %s", n, root)
    return [
        Case(f"syn_{i:03d}", [root / "images" / f"syn_{i:03d}.nii.gz"], root / "labels" / f"syn_{i:03d}.nii.gz")
        for i in range(n)
    ]


def synthetic_source(n: int, seed: int, options: dict[str, Any] | None, out_dir: Path | str) -> DatasetSource:
    """:func:`synthetic_cases` as a data source with a description for the manifest."""
    opts = _options(options)
    cases = synthetic_cases(n, seed, opts, out_dir)
    return DatasetSource(cases, _description(n, seed, opts), [drawn_modality(n, seed, opts)], {})


def drawn_modality(n: int, seed: int, options: dict[str, Any] | None) -> str:
    """The one input channel's modality name over phantoms ``0..n-1``: ``"MRI"``, ``"CT"``, or
    ``"MRI/CT"`` when the drawn cases mix them (the model then takes either)."""
    opts = _options(options)
    drawn = {str(draw_case_options(i, seed, opts)["modality"]).upper() for i in range(n)}
    return "/".join(sorted(drawn, key=lambda m: (m != "MRI", m)))


def _description(n: int, seed: int, opts: dict[str, Any]) -> str:
    return (
        f"{n} synthetic phantoms (seed {seed}; {'/'.join(opts['modalities'])}, spacing "
        f"{opts['spacing_mm'][0]}-{opts['spacing_mm'][1]} mm, {round(100 * opts['lesion_free_fraction'])}% lesion-free)"
    )
