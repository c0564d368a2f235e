"""Model packages: open (verify first), load weights safely, write, list and install.

A package is a folder or ``.zip`` holding ``manifest.json`` (see
:mod:`tumorseg_core.modelpkg.manifest`), one ``*.safetensors`` file per fold/ensemble member
and optionally ``README.md``. Opening one checks, before anything else is parsed or
loaded, that every file is listed in the manifest's ``files`` and that every listed
file exists with the listed sha256. Weights are read only with ``safetensors``;
nothing here can execute code stored in a package.

Names: ``"default"`` and ``"realtime"`` are the packages shipped in ``tumorseg_core/data/models/``;
another plain name is a folder in the user model folder (``$TUMORSEG_MODELS`` or
``~/.tumorseg/models``); anything else is a path to a folder or ``.zip``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

from tumorseg_core.errors import ModelAlreadyInstalledError, ModelPackageError
from tumorseg_core.modelpkg.manifest import (
    ALIASES_DROPPED_FORMAT,
    MANIFEST_NAME,
    Manifest,
    check_file_name,
    check_files_dict,
    parse_manifest_json,
    read_manifest_json,
)
from tumorseg_core.models.registry import build_network

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
SHIPPED_DEFAULT = Path(__file__).resolve().parent.parent / "data" / "models" / "default"
SHIPPED_REALTIME = Path(__file__).resolve().parent.parent / "data" / "models" / "realtime"

__all__ = [
    "Manifest", "ModelInfo", "ModelPackage", "default_models_dir", "install_package",
    "installed_models", "open_package", "read_manifest", "shipped_models", "user_models_dir", "write_package",
]


def default_models_dir() -> Path:
    """The folder of the model shipped with TumorSeg (``tumorseg_core/data/models/default``)."""
    return SHIPPED_DEFAULT


def shipped_models() -> Dict[str, Path]:
    """The models shipped with TumorSeg by name: ``"default"`` (the 3D model) and ``"realtime"``
    (the 2.5D model of slice mode and the effect's Live mode), in ``tumorseg_core/data/models``."""
    return {"default": SHIPPED_DEFAULT, "realtime": SHIPPED_REALTIME}


def user_models_dir() -> Path:
    """The user model folder: ``$TUMORSEG_MODELS`` or ``~/.tumorseg/models``."""
    env = os.environ.get("TUMORSEG_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".tumorseg" / "models"


# ------------------------------------------------------------------ zipped packages
# Safe handling of zipped model packages and file hashing.
#
# A ``.zip`` package is extracted once into a private cache folder named after the
# zip's sha256 (``$TUMORSEG_CACHE`` or ``~/.tumorseg/cache``, subfolder ``packages``).
# Extraction refuses anything that could write outside that folder or exhaust the disk:
# absolute paths, drive letters, ``..`` components, backslashes, symlinks, encrypted or
# duplicate entries, too many entries, and more than ``MAX_UNCOMPRESSED_BYTES`` in all
# (counted while writing, so a lying header does not help). It writes into a temporary
# folder and renames it into place, so a failed or concurrent extraction never leaves a
# half-written package behind. The extracted files are then verified like any folder.

MAX_UNCOMPRESSED_BYTES = 4 * 1024**3
MAX_ENTRIES = 256
MAX_MANIFEST_BYTES_IN_ZIP = 1024 * 1024
_CHUNK = 1024 * 1024
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


# What reading a damaged zip raises besides BadZipFile (bad deflate data, an unsupported
# method, a lying header, a member that claims to be encrypted).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error,
               RuntimeError, ValueError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
    try:
        dest = root / sha256_file(zip_path)
        if dest.is_dir():
            return dest
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    except OSError as exc:
        raise ModelPackageError(f"could not unpack {zip_path.name} into {root} ({_first_line(exc)}); "
                                "set TUMORSEG_CACHE to a writable folder") from exc
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                files = _plan(zf, zip_path)
                _extract_to(zf, files, tmp, zip_path)
        except _ZIP_ERRORS as exc:
            raise ModelPackageError(f"{zip_path.name} is not a readable zip file ({_first_line(exc)}); "
                                    "re-download or rebuild it") from exc
        except OSError as exc:  # an entry clashing with another's folder ("a" and "a/b"), a full disk
            raise ModelPackageError(f"could not extract {zip_path.name} ({_first_line(exc)}); "
                                    "rebuild the zip or free disk space") from exc
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


# ------------------------------------------------------------------ folders

def verify_folder(root: Path) -> Dict[str, Any]:
    """Verify a package folder's files against its manifest; return the manifest dict.

    Only ``files`` is looked at here; the rest of the manifest is validated after the
    hashes match. Raises ModelPackageError for an unlisted, missing, non-regular or
    modified file.
    """
    data = read_manifest_json(root / MANIFEST_NAME)
    files = check_files_dict(data.get("files"))
    for entry in sorted(root.iterdir()):
        if entry.name == MANIFEST_NAME:
            continue
        if entry.is_symlink() or not entry.is_file():
            raise ModelPackageError(f"package {root} contains {entry.name!r}, which is not a plain file; remove it")
        if entry.name not in files:
            raise ModelPackageError(f"package {root} contains {entry.name!r}, which manifest 'files' does not list; remove it")
    for name, expected in files.items():
        path = root / name
        if path.is_symlink() or not path.is_file():
            raise ModelPackageError(f"package {root} is missing {name!r} listed in its manifest; reinstall the package")
        if sha256_file(path) != expected:
            raise ModelPackageError(f"{name!r} in package {root} does not match its sha256 (corrupt or modified); reinstall the package")
    return data


def _state_dict_problem(net: "torch.nn.Module", state: Dict[str, "torch.Tensor"]) -> Optional[str]:
    """One line describing why ``state`` does not fit ``net`` exactly, or None."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        return f"{len(missing)} missing key(s) (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            return f"{key} has shape {tuple(state[key].shape)}, the architecture needs {tuple(value.shape)}"
    return None


def alias_groups(net: "torch.nn.Module") -> List[List[str]]:
    """The state-dict names that are one tensor under several names, in state-dict order.

    nnU-Net's U-Nets reach every encoder weight four times (``encoder.*`` and the decoder's
    ``decoder.encoder.*``, each as ``conv.*`` and ``all_modules.0.*``). A package stores
    each such tensor once, under the group's first name (:func:`drop_aliases`), and loading
    fills the other names back in (:func:`with_aliases`).
    """
    groups: Dict[tuple, List[str]] = {}
    for name, tensor in net.state_dict().items():
        if tensor.numel() == 0:
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def drop_aliases(net: "torch.nn.Module", state: Dict[str, "torch.Tensor"]) -> Dict[str, "torch.Tensor"]:
    """``state`` without the second and later names of each alias group (``state`` as
    :func:`with_aliases` gives it: every name, aliases already checked equal)."""
    dropped = {name for names in alias_groups(net) for name in names[1:]}
    return {k: v for k, v in state.items() if k not in dropped}


def with_aliases(net: "torch.nn.Module", state: Dict[str, "torch.Tensor"], what: str) -> Dict[str, "torch.Tensor"]:
    """``state`` with every alias of a stored tensor filled in (packages store each tensor once)."""
    import torch

    full = dict(state)
    for names in alias_groups(net):
        present = [name for name in names if name in state]
        if not present:
            continue  # reported as missing keys by the strict load
        for name in present[1:]:
            if not torch.equal(state[name], state[present[0]]):
                raise ModelPackageError(f"weights in {what}: {name} and {present[0]} are one tensor of the "
                                        "network but hold different values; rebuild the package")
        for name in names:
            full.setdefault(name, state[present[0]])
    return full


def load_state_dict_strict(net: "torch.nn.Module", state: Dict[str, "torch.Tensor"], what: str) -> None:
    """Load ``state`` into ``net`` requiring identical keys and shapes (ModelPackageError otherwise)."""
    problem = _state_dict_problem(net, state)
    if problem is None:
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            problem = str(exc).strip().splitlines()[0]
    if problem is not None:
        raise ModelPackageError(f"weights in {what} do not match the architecture: {problem}")


class ModelPackage:
    """A verified model package.

    Attributes:
        root: folder holding the verified files (the cache folder for a ``.zip``).
        manifest: the validated :class:`Manifest`.
        weight_files: the ``*.safetensors`` files, sorted (one network each).
        sha256: digest of the canonical manifest JSON, which includes every file's
            hash; use it as a cache key for loaded networks.
        source: what was opened (name, folder or zip path).
    """

    def __init__(self, root: Path, manifest: Manifest, source: str) -> None:
        self.root = root
        self.manifest = manifest
        self.source = source
        cascade = manifest.cascade.weights if manifest.cascade else None
        self.weight_files: List[Path] = sorted(
            root / n for n in manifest.files if n.endswith(".safetensors") and n != cascade)
        canonical = json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":"))
        self.sha256 = hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def load_networks(self, device: Any = "cpu") -> List["torch.nn.Module"]:
        """Build one network per weight file, load it strictly, move it to ``device``, eval mode.

        Each file's bytes are hashed again as they are read, so a file swapped after
        :func:`open_package` is refused too. Each network maps
        ``(B, C_in, z, y, x)`` to ``(B, C_out, z, y, x)`` logits.
        """
        return [self._load_verified(path, self.manifest.architecture, self.manifest.kwargs, device)
                for path in self.weight_files]

    def load_cascade_network(self, device: Any = "cpu") -> "torch.nn.Module":
        """The manifest's dedicated coarse network (``cascade``), verified and loaded like the others."""
        spec = self.manifest.cascade
        if spec is None:
            raise ModelPackageError(f"model '{self.manifest.name}' has no cascade network")
        return self._load_verified(self.root / spec.weights, spec.architecture, spec.kwargs, device)

    def read_verified(self, name: str) -> bytes:
        """The bytes of package file ``name``, hashed again as read (a file swapped after opening is refused)."""
        if name not in self.manifest.files:
            raise ModelPackageError(f"model '{self.manifest.name}' has no file {name!r}; reinstall the package")
        try:
            data = (self.root / name).read_bytes()
        except OSError as exc:
            raise ModelPackageError(f"could not read {name} from {self.root} ({_first_line(exc)}); "
                                    "reinstall the package") from exc
        if hashlib.sha256(data).hexdigest() != self.manifest.files[name]:
            raise ModelPackageError(f"{name} changed since the package was verified; reinstall the package")
        return data

    def _load_verified(self, path: Path, architecture: str, kwargs: Dict[str, Any], device: Any) -> "torch.nn.Module":
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.manifest.files[path.name]:
            raise ModelPackageError(f"{path.name} changed since the package was verified; reinstall the package")
        try:
            state = load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise ModelPackageError(f"{path.name} is not a valid safetensors file ({exc}); rebuild the package") from exc
        del data
        net = build_network(architecture, kwargs)
        load_state_dict_strict(net, with_aliases(net, state, path.name), path.name)
        return net.to(device).eval()

    def __repr__(self) -> str:
        return f"ModelPackage({self.manifest.name!r} {self.manifest.version}, root={str(self.root)!r})"


def resolve_package_path(name_or_path: PathLike) -> Path:
    """Map ``"default"``, an installed model name, or a path to a package folder or zip."""
    text = os.fspath(name_or_path)
    shipped = shipped_models()
    if text in shipped:
        if not (shipped[text] / MANIFEST_NAME).is_file():
            raise ModelPackageError(
                f"the {text} model is not installed in this copy of TumorSeg; "
                "reinstall tumorseg-core or pass --model with a package path"
            )
        return shipped[text]
    path = Path(text).expanduser()
    if path.exists():
        return path
    if text and "/" not in text and "\\" not in text and text not in (".", ".."):
        for candidate in (user_models_dir() / text, user_models_dir() / f"{text}.zip"):
            if candidate.exists():
                return candidate
    raise ModelPackageError(
        f"no model package {text!r}: not a folder, not a .zip and not installed in {user_models_dir()}; "
        "run 'tumorseg models' to list installed models"
    )


def _verify(root: Path) -> Dict[str, Any]:
    """:func:`verify_folder`, with an unreadable file (permissions, I/O error) as a ModelPackageError."""
    try:
        return verify_folder(root)
    except OSError as exc:
        raise ModelPackageError(f"could not read package {root} ({_first_line(exc)}); check its files' permissions") from exc


def open_package(name_or_path: PathLike) -> ModelPackage:
    """Open and verify a model package (``"default"``, an installed name, a folder or a ``.zip``).

    Order: read ``manifest.json`` (JSON, at most 1 MB), check every file's presence
    and sha256 and refuse unlisted files, then validate the whole manifest (including
    that its architecture is in the registry). Weights are loaded later by
    :meth:`ModelPackage.load_networks`. Any problem raises ModelPackageError.
    """
    path = resolve_package_path(name_or_path)
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise ModelPackageError(f"{path} is a file but not a .zip; a model package is a folder or a .zip")
        root = extract_zip(path)
        try:
            data = _verify(root)
        except ModelPackageError:
            # The cached extraction may have been altered: extract afresh once and re-check.
            shutil.rmtree(root, ignore_errors=True)
            root = extract_zip(path)
            data = _verify(root)
    elif path.is_dir():
        root = path
        data = _verify(root)
    else:
        raise ModelPackageError(f"{path} is neither a folder nor a .zip model package")
    manifest = Manifest(data)
    return ModelPackage(root, manifest, os.fspath(name_or_path))


def read_manifest(name_or_path: PathLike) -> Manifest:
    """The validated manifest of a package, without hashing its files (nothing is extracted).

    For listing models and checking a model's inputs where weights are not needed (Slicer's
    UI process). Running a model goes through :func:`open_package`, which verifies every
    file first, so a package whose weights were altered is still refused before it runs.
    """
    path = resolve_package_path(name_or_path)
    if path.is_dir():
        return Manifest(read_manifest_json(path / MANIFEST_NAME))
    if not (path.is_file() and path.suffix.lower() == ".zip"):
        raise ModelPackageError(f"{path} is neither a folder nor a .zip model package")
    try:
        with zipfile.ZipFile(path) as zf:
            # The names extraction would refuse are refused here too (an empty name also breaks is_dir()).
            names = [info for info in zf.infolist() if _safe_parts(info.filename, path) and not info.is_dir()]
            entry = next((i for i in names if i.filename == MANIFEST_NAME), None)
            tops = {i.filename.split("/")[0] for i in names}
            if entry is None and len(tops) == 1:  # zipped folder: one top-level directory
                nested = f"{next(iter(tops))}/{MANIFEST_NAME}"
                entry = next((i for i in names if i.filename == nested), None)
            if entry is None:
                raise ModelPackageError(f"no manifest.json in {path.name}; a model package needs one")
            if entry.file_size > MAX_MANIFEST_BYTES_IN_ZIP:
                raise ModelPackageError(f"{path.name}: manifest.json is larger than 1 MB; a manifest is a small JSON file")
            with zf.open(entry) as fh:
                raw = fh.read(MAX_MANIFEST_BYTES_IN_ZIP + 1)
    except (*_ZIP_ERRORS, OSError) as exc:
        raise ModelPackageError(f"{path.name} is not a readable zip file ({_first_line(exc)}); "
                                "re-download or rebuild it") from exc
    return Manifest(parse_manifest_json(raw, f"{path.name}:manifest.json"))


def _clean_state_dict(state: Dict[str, Any], index: int) -> Dict[str, "torch.Tensor"]:
    import torch

    if not isinstance(state, dict) or not state:
        raise ModelPackageError(f"state dict {index} is empty or not a dict of tensors")
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelPackageError(f"state dict {index} entry {key!r} is not a tensor; only tensors can be saved")
        # safetensors refuses shared or non-contiguous storage: give each tensor its own copy.
        out[key] = value.detach().to("cpu").contiguous().clone()
    return out


def reserve_cascade_weights(manifest: Dict[str, Any], have_weights: bool) -> None:
    """Writing a package: list the ``cascade`` section's weights in ``manifest["files"]``
    (placeholder digest) after the ensemble's ``fold{i}`` files; refuse a mismatch."""
    section = manifest.get("cascade")
    name = section.get("weights") if isinstance(section, dict) else None
    if have_weights != (name is not None):
        raise ModelPackageError("give the cascade weights together with a manifest 'cascade' section, or neither")
    if name in manifest["files"]:
        raise ModelPackageError(f"cascade weights {name!r} would replace an ensemble member; name them otherwise")
    if name is not None:
        manifest["files"][name] = "0" * 64


def write_package(
    out_dir: PathLike,
    manifest: Dict[str, Any],
    state_dicts: List[Dict[str, "torch.Tensor"]],
    readme: Optional[str] = None,
    extra_files: Optional[Dict[str, bytes]] = None,
    overwrite: bool = False,
    cascade_state_dict: Optional[Dict[str, "torch.Tensor"]] = None,
) -> Path:
    """Write a model package folder atomically and return its path.

    Writes ``fold{i}.safetensors`` for each state dict (each must load strictly into
    the manifest's architecture), the manifest's ``cascade.weights`` from
    ``cascade_state_dict`` (the coarse network), ``README.md`` if ``readme`` is given, and
    ``extra_files``; fills ``files`` with their sha256 (any given ``files`` is
    replaced), validates the manifest and writes ``manifest.json``. Everything goes
    to a temporary sibling folder renamed into place at the end. An existing
    ``out_dir`` is an error unless ``overwrite=True``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise ModelPackageError(f"{out} already exists; choose another output or pass overwrite")
    if not state_dicts:
        raise ModelPackageError("no weights given; a package needs at least one state dict")
    manifest = dict(manifest)
    extras = dict(extra_files or {})
    for name in extras:
        check_file_name(name, "extra_files")
        if name.endswith(".safetensors") or name == "README.md":
            raise ModelPackageError(f"extra file {name!r} would clash with the weights or README; rename it")
    manifest["files"] = {f"fold{i}.safetensors": "0" * 64 for i in range(len(state_dicts))}
    reserve_cascade_weights(manifest, cascade_state_dict is not None)
    spec = Manifest(manifest).cascade  # fail on a bad manifest before writing anything
    cleaned = [_clean_state_dict(sd, i) for i, sd in enumerate(state_dicts)]
    aliases_dropped = False
    for i, state in enumerate(cleaned):
        net = build_network(manifest["architecture"], manifest["kwargs"])
        full = with_aliases(net, state, f"state dict {i}")
        load_state_dict_strict(net, full, f"state dict {i}")
        cleaned[i] = drop_aliases(net, full)
        aliases_dropped = aliases_dropped or len(cleaned[i]) < len(full)
    if aliases_dropped:  # a reader that cannot fill the aliases in must refuse the package
        manifest["format_version"] = max(int(Manifest(manifest).format_version), ALIASES_DROPPED_FORMAT)
    if spec is not None:
        coarse = _clean_state_dict(cascade_state_dict, len(cleaned))
        load_state_dict_strict(build_network(spec.architecture, spec.kwargs), coarse, spec.weights)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for i, state in enumerate(cleaned):
            save_file(state, str(tmp / f"fold{i}.safetensors"), metadata={"format": "pt"})
        if spec is not None:
            save_file(coarse, str(tmp / spec.weights), metadata={"format": "pt"})
        if readme is not None:
            extras["README.md"] = readme.encode("utf-8")
        for name, content in extras.items():
            (tmp / name).write_bytes(content)
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        validated = Manifest(manifest)
        (tmp / MANIFEST_NAME).write_text(json.dumps(validated.to_dict(), indent=2) + "\n", encoding="utf-8")
        _apply_umask(tmp)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote model package %s (%d weight file(s))", out, len(cleaned))
    return out


def _apply_umask(folder: Path) -> None:
    """Give ``folder`` and its files the permissions of a normal ``mkdir``/``open``.

    ``mkdtemp`` (and safetensors) create owner-only entries; a package written into a
    shared models folder must stay readable by the other users, as any file would be.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)  # put the previous package back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class ModelInfo:
    """One usable installed model: ``key`` is what to pass as ``model=``."""

    key: str
    name: str
    version: str
    description: str
    path: Path
    input_modalities: List[str]
    source: str  # "shipped" or "user"


def installed_models(models_dir: Optional[PathLike] = None, verify: bool = True) -> List[ModelInfo]:
    """The shipped models (:func:`shipped_models`) and every valid package in the user model folder.

    With ``verify`` (the CLI's ``tumorseg models``) each is fully verified, hashes included;
    ``verify=False`` reads only the manifests (Slicer's UI process: listing stays instant
    whatever the weights weigh; the worker verifies before running). Broken ones are
    skipped with a warning.
    """
    candidates = [(name, path, "shipped") for name, path in shipped_models().items()
                  if (path / MANIFEST_NAME).is_file()]
    folder = Path(models_dir) if models_dir is not None else user_models_dir()
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                candidates.append((entry.name, entry, "user"))
    infos = []
    for key, path, source in candidates:
        try:
            m = open_package(path).manifest if verify else read_manifest(path)
        except ModelPackageError as exc:
            logger.warning("skipping model %s: %s", path, exc)
            continue
        infos.append(ModelInfo(key, m.name, m.version, m.description, path, m.input_modalities, source))
    return infos


def install_package(src: PathLike, models_dir: Optional[PathLike] = None, overwrite: bool = False) -> Path:
    """Verify a package (folder or zip) and copy it into the user model folder.

    The copy goes to ``<models folder>/<manifest name>`` (atomically); an existing
    model of that name is an error unless ``overwrite=True``. Returns the new folder.
    """
    pkg = open_package(src)
    folder = Path(models_dir) if models_dir is not None else user_models_dir()
    dest = folder / pkg.manifest.name
    if dest.exists() and not overwrite:
        raise ModelAlreadyInstalledError(pkg.manifest.name, folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=folder))
    try:
        for name in [MANIFEST_NAME, *pkg.manifest.files]:
            shutil.copyfile(pkg.root / name, tmp / name)
        verify_folder(tmp)  # the copy must match too (guards against a change mid-copy)
        _replace_dir(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("installed model %s into %s", pkg.manifest.name, dest)
    return dest
