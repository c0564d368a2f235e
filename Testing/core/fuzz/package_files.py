"""Model-package files for the fuzz suite and the corpus: a tiny valid package, zips of any layout.

``tiny_package(folder)`` writes a real package (a random 2-level unet3d, 1 input) with
``write_package``; ``zip_folder`` zips a folder; ``write_zip`` writes a zip from raw
``(name, bytes, kind)`` entries (``kind``: "file", "symlink", "dir"), so names with ``..``,
absolute paths, duplicates and symlinks can be made; ``declare_size`` patches an entry's
declared uncompressed size in the central directory.
"""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Iterable

MANIFEST = "manifest.json"


def tiny_package(folder: Path) -> Path:
    from model_factory import make_tiny_package

    return make_tiny_package(Path(folder))


def zip_folder(folder: Path, zip_path: Path, top: str = "") -> Path:
    """Zip every file of ``folder`` (optionally under one top-level folder ``top``)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(Path(folder).iterdir()):
            zf.write(file, f"{top}/{file.name}" if top else file.name)
    return Path(zip_path)


def write_zip(zip_path: Path, entries: Iterable[tuple[str, bytes, str]]) -> Path:
    """A zip with exactly these entries, in order (duplicates allowed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": intended
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data, kind in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                if kind == "symlink":
                    info.external_attr = (0o120777 << 16)
                elif kind == "dir":
                    info.external_attr = (0o40755 << 16) | 0x10
                else:
                    info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    return Path(zip_path)


def declare_size(zip_path: Path, index: int, size: int) -> Path:
    """Set entry ``index``'s uncompressed size in the central directory (a lying header)."""
    raw = bytearray(Path(zip_path).read_bytes())
    position = -1
    for _ in range(index + 1):
        position = raw.find(b"PK\x01\x02", position + 1)
    if position >= 0:
        struct.pack_into("<I", raw, position + 24, size & 0xFFFFFFFF)
    Path(zip_path).write_bytes(bytes(raw))
    return Path(zip_path)


def package_entries(folder: Path) -> dict[str, bytes]:
    """Every file of a package folder by name."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def with_rehashed(entries: dict[str, bytes], manifest: dict | None = None) -> dict[str, bytes]:
    """``entries`` with manifest.json's ``files`` recomputed (so a damaged file passes the hash check)."""
    data = dict(manifest) if manifest is not None else json.loads(entries[MANIFEST])
    data["files"] = {n: hashlib.sha256(b).hexdigest() for n, b in entries.items() if n != MANIFEST}
    out = dict(entries)
    out[MANIFEST] = json.dumps(data).encode()
    return out


def write_folder(folder: Path, entries: dict[str, bytes]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in entries.items():
        (folder / name).write_bytes(data)
    return folder
