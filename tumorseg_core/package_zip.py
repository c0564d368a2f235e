"""Safe handling of zipped model packages and file hashing.

A ``.zip`` package is extracted once into a private cache folder named after the
zip's sha256 (``$TUMORSEG_CACHE`` or ``~/.tumorseg/cache``, subfolder ``packages``).
Extraction refuses anything that could write outside that folder or exhaust the disk:
absolute paths, drive letters, ``..`` components, backslashes, symlinks, encrypted or
duplicate entries, too many entries, and more than ``MAX_UNCOMPRESSED_BYTES`` in all
(counted while writing, so a lying header does not help). It writes into a temporary
folder and renames it into place, so a failed or concurrent extraction never leaves a
half-written package behind. The extracted files are then verified like any folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import List, Optional

from tumorseg_core.errors import ModelPackageError

logger = logging.getLogger(__name__)

MAX_UNCOMPRESSED_BYTES = 4 * 1024**3
MAX_ENTRIES = 256
_CHUNK = 1024 * 1024
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Root of TumorSeg's private cache (``$TUMORSEG_CACHE`` or ``~/.tumorseg/cache``)."""
    env = os.environ.get("TUMORSEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".tumorseg" / "cache"


def _safe_parts(name: str, zip_path: Path) -> List[str]:
    """Split a zip entry name into path parts, refusing anything that could escape."""
    bad = (
        not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name
        or _DRIVE_RE.match(name) is not None
    )
    parts = [p for p in name.split("/") if p != ""]
    if bad or any(p in (".", "..") for p in parts) or not parts:
        raise ModelPackageError(f"{zip_path.name} has an unsafe entry {name!r} (absolute path or '..'); refusing to extract it")
    return parts


def _plan(zf: zipfile.ZipFile, zip_path: Path) -> List[tuple]:
    """Check every entry; return ``[(ZipInfo, relative parts)]`` for the files to write."""
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise ModelPackageError(f"{zip_path.name} has {len(infos)} entries; a model package has only a few files")
    files, seen, total = [], set(), 0
    for info in infos:
        parts = _safe_parts(info.filename, zip_path)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ModelPackageError(f"{zip_path.name} contains a symbolic link {info.filename!r}; refusing to extract it")
        if info.flag_bits & 0x1:
            raise ModelPackageError(f"{zip_path.name} has an encrypted entry {info.filename!r}; use an unencrypted zip")
        if info.is_dir():
            continue
        key = "/".join(parts)
        if key in seen:
            raise ModelPackageError(f"{zip_path.name} lists {key!r} twice; rebuild the zip")
        seen.add(key)
        total += info.file_size
        if total > MAX_UNCOMPRESSED_BYTES:
            raise ModelPackageError(f"{zip_path.name} unpacks to more than {MAX_UNCOMPRESSED_BYTES} bytes; refusing it")
        files.append((info, parts))
    # Zipping a folder usually adds one top-level directory; strip it if that is all there is.
    if files and not any(p == ["manifest.json"] for _, p in files):
        tops = {p[0] for _, p in files}
        if len(tops) == 1 and all(len(p) > 1 for _, p in files):
            files = [(info, parts[1:]) for info, parts in files]
    return files


def _extract_to(zf: zipfile.ZipFile, files: List[tuple], dest: Path, zip_path: Path) -> None:
    written = 0
    for info, parts in files:
        target = dest.joinpath(*parts)
        # Resolve and compare so nothing can land outside ``dest`` whatever the name.
        if os.path.commonpath([str(target.resolve()), str(dest.resolve())]) != str(dest.resolve()):
            raise ModelPackageError(f"{zip_path.name} entry {info.filename!r} points outside the package; refusing it")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "xb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                written += len(chunk)
                if written > MAX_UNCOMPRESSED_BYTES:
                    raise ModelPackageError(f"{zip_path.name} unpacks to more than {MAX_UNCOMPRESSED_BYTES} bytes; refusing it")
                out.write(chunk)


def extract_zip(zip_path: Path, cache_root: Optional[Path] = None) -> Path:
    """Extract a zipped package safely into the cache; return the extracted folder.

    The folder is ``<cache>/packages/<sha256 of the zip>``; if it already exists it is
    reused (the caller verifies every file's hash anyway). Raises ModelPackageError
    for a missing, corrupt or unsafe zip.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise ModelPackageError(f"model package {zip_path} does not exist; check the path")
    root = Path(cache_root) if cache_root is not None else cache_dir() / "packages"
    dest = root / sha256_file(zip_path)
    if dest.is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                files = _plan(zf, zip_path)
                _extract_to(zf, files, tmp, zip_path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
            raise ModelPackageError(f"{zip_path.name} is not a readable zip file ({exc}); re-download or rebuild it") from exc
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a lost race with another process: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("extracted %s into %s", zip_path, dest)
    return dest
