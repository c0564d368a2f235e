"""A new package made from a verified one: its files, some dropped, some added, manifest sections changed.

``tumorseg quantize`` uses it to write ``PACKAGE_INT8``: every file of the source package
(each re-hashed as it is copied, so a file changed since opening is refused), the new
INT8 graphs, and the manifest with the ``int8`` section and ``files`` updated. The
folder is built next to the output and renamed into place, so an error leaves nothing
behind (and an existing package is replaced only with ``overwrite``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from tumorseg_core.errors import InputError, ModelPackageError
from tumorseg_core.modelpkg.manifest import MANIFEST_NAME, Manifest, check_file_name
from tumorseg_core.modelpkg.package import ModelPackage, _apply_umask, _replace_dir, open_package, sha256_file

logger = logging.getLogger(__name__)


def check_package_output(out_dir: Path, source: ModelPackage, overwrite: bool) -> Path:
    """``out_dir`` as a new package folder: not the source, not an existing path unless ``overwrite``."""
    out = Path(out_dir).expanduser()
    if out.resolve() == Path(source.root).resolve():
        raise InputError(f"output {out} is the source package itself; choose another folder")
    if out.exists() and not overwrite:
        raise InputError(f"output {out} already exists; choose another folder or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file; a model package is a folder")
    if out.parent.exists() and not out.parent.is_dir():
        raise InputError(f"cannot write {out}: {out.parent} is not a folder")
    return out


def write_derived_package(
    source: ModelPackage,
    out_dir: Path,
    add_files: Mapping[str, bytes],
    sections: Mapping[str, Optional[Any]],
    drop_files: Iterable[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write ``source``'s files minus ``drop_files`` plus ``add_files`` to ``out_dir``; return it.

    ``sections``: manifest keys to set (``None`` removes the key). ``files`` is recomputed;
    the new manifest is validated before anything is renamed into place.
    """
    out = check_package_output(out_dir, source, overwrite)
    drop = set(drop_files)
    keep = [name for name in source.manifest.files if name not in drop]
    for name in add_files:
        check_file_name(name, "files")
        if name in keep:
            raise ModelPackageError(f"{name!r} is already a file of package '{source.manifest.name}'")
    manifest: Dict[str, Any] = source.manifest.to_dict()
    for key, value in sections.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise InputError(f"cannot write {out} ({exc.strerror or exc}); choose a writable folder") from exc
    try:
        for name in keep:
            (tmp / name).write_bytes(source.read_verified(name))
        for name, content in add_files.items():
            (tmp / name).write_bytes(content)
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        validated = Manifest(manifest)
        (tmp / MANIFEST_NAME).write_text(json.dumps(validated.to_dict(), indent=2) + "\n", encoding="utf-8")
        _apply_umask(tmp)
        open_package(tmp)  # the copy verifies as a package before it takes the output's name
        _replace_dir(tmp, out)
    except OSError as exc:
        raise InputError(f"cannot write {out} ({exc.strerror or exc}); choose a writable folder") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote model package %s (%d file(s) added)", out, len(add_files))
    return out
