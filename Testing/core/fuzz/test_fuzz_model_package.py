"""Fuzz the model-package reader and the manifest validator.

Truncated and bit-flipped zips, safetensors files and manifests; random manifests (JSON of
any shape, and a valid manifest with fields deleted or replaced); zip layouts with ``..``,
absolute paths, drive letters, symlinks, duplicates, folders clashing with files and huge
declared sizes. Each case ends in a verified package (whose networks load) or a
TumorSegError of one line; nothing is written outside the cache; the input is unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fuzz_files import expect_one_line, sha256
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from package_files import (
    MANIFEST,
    declare_size,
    package_entries,
    tiny_package,
    with_rehashed,
    write_folder,
    write_zip,
)

from tumorseg_core.errors import TumorSegError
from tumorseg_core.modelpkg.manifest import Manifest
from tumorseg_core.modelpkg.package import open_package, read_manifest

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                    | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    return package_entries(tiny_package(tmp_path_factory.mktemp("pkg") / "tiny"))


def _outside_files(root: Path) -> set:
    """Every file under ``root`` except the cache (where extraction may write)."""
    cache = Path(os.environ["TUMORSEG_CACHE"]).resolve()
    return {p for p in root.rglob("*") if cache not in p.resolve().parents and p.resolve() != cache}


def _check_package(path: Path, fuzz_cases, load: bool = True) -> None:
    """open_package and read_manifest: a verified package whose networks load, or one line."""
    before = sha256(path)
    around = path.parent
    existing = _outside_files(around)
    package = expect_one_line(lambda: open_package(path))
    if package is not None and load:
        networks = expect_one_line(lambda: package.load_networks("cpu"))
        assert networks is None or len(networks) == len(package.weight_files)
    expect_one_line(lambda: read_manifest(path))
    assert sha256(path) == before, "the package changed"
    assert _outside_files(around) == existing, "a file was written outside the cache"
    fuzz_cases.add("model package")


def _zip_of(entries: dict, path: Path) -> Path:
    return write_zip(path, [(n, b, "file") for n, b in entries.items()])


@SETTINGS
@given(data=st.data())
def test_fuzz_damaged_zip(tmp_path_factory, entries, fuzz_cases, data):
    raw = bytearray(_zip_of(entries, tmp_path_factory.mktemp("z") / "pkg.zip").read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "flip_many"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(1 if kind == "flip" else data.draw(st.integers(2, 40))):
            bit = data.draw(st.integers(0, len(raw) * 8 - 1))
            raw[bit // 8] ^= 1 << (bit % 8)
    path = tmp_path_factory.mktemp("z") / "damaged.zip"
    path.write_bytes(bytes(raw))
    _check_package(path, fuzz_cases)


@SETTINGS
@given(data=st.data())
def test_fuzz_damaged_safetensors_with_matching_hash(tmp_path_factory, entries, fuzz_cases, data):
    weights = bytearray(entries["fold0.safetensors"])
    kind = data.draw(st.sampled_from(["truncate", "flip_header", "flip_any", "empty", "header_length"]))
    if kind == "truncate":
        weights = weights[: data.draw(st.integers(0, len(weights) - 1))]
    elif kind == "empty":
        weights = bytearray()
    elif kind == "header_length":
        weights[:8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    else:
        top = min(len(weights), 400) if kind == "flip_header" else len(weights)
        for _ in range(data.draw(st.integers(1, 8))):
            bit = data.draw(st.integers(0, top * 8 - 1))
            weights[bit // 8] ^= 1 << (bit % 8)
    folder = write_folder(tmp_path_factory.mktemp("s") / "pkg",
                          with_rehashed({**entries, "fold0.safetensors": bytes(weights)}))
    _check_package(folder, fuzz_cases)


@SETTINGS
@given(manifest=JSON)
def test_fuzz_random_manifest_json(tmp_path_factory, entries, fuzz_cases, manifest):
    folder = write_folder(tmp_path_factory.mktemp("m") / "pkg", {**entries, MANIFEST: json.dumps(manifest).encode()})
    _check_package(folder, fuzz_cases, load=False)
    zipped = _zip_of({**entries, MANIFEST: json.dumps(manifest).encode()}, folder.parent / "pkg.zip")
    _check_package(zipped, fuzz_cases, load=False)


def _mutate(value, data, depth=0):
    """A random edit somewhere inside a JSON value: delete, replace or keep each level."""
    if isinstance(value, dict) and value and depth < 4:
        key = data.draw(st.sampled_from(sorted(value)))
        action = data.draw(st.sampled_from(["delete", "replace", "descend", "descend", "add"]))
        out = dict(value)
        if action == "delete":
            del out[key]
        elif action == "replace":
            out[key] = data.draw(JSON)
        elif action == "add":
            out[data.draw(st.text(max_size=8))] = data.draw(JSON)
        else:
            out[key] = _mutate(value[key], data, depth + 1)
        return out
    if isinstance(value, list) and value and depth < 4:
        index = data.draw(st.integers(0, len(value) - 1))
        out = list(value)
        if data.draw(st.booleans()):
            out[index] = _mutate(value[index], data, depth + 1)
        else:
            del out[index]
        return out
    return data.draw(JSON)


@SETTINGS
@given(data=st.data())
def test_fuzz_manifest_validator(entries, fuzz_cases, data):
    valid = json.loads(entries[MANIFEST])
    mutated = valid
    for _ in range(data.draw(st.integers(1, 3))):
        mutated = _mutate(mutated, data)
    manifest = expect_one_line(lambda: Manifest(mutated))
    if manifest is not None:
        assert isinstance(manifest.to_dict(), dict)
        again = Manifest(manifest.to_dict())  # what it writes, it reads back
        assert again.to_dict() == manifest.to_dict()
    fuzz_cases.add("manifest validator")


ENTRY_NAMES = ["../evil.txt", "/abs.txt", "a/../../b.txt", "C:/x.txt", "C:x", "dir\\x.txt", "./manifest.json",
               "sub/", "sub", "sub/inner.txt", "", "nul\x00.txt", "fold0.safetensors", MANIFEST, "README.md",
               "top/manifest.json", "top/fold0.safetensors", "..", "."]


@SETTINGS
@given(data=st.data())
def test_fuzz_zip_layouts(tmp_path_factory, entries, fuzz_cases, data):
    chosen = data.draw(st.lists(st.tuples(st.sampled_from(ENTRY_NAMES),
                                          st.sampled_from(["file", "file", "file", "symlink", "dir"])),
                                min_size=1, max_size=6))
    rows = []
    for name, kind in chosen:
        payload = entries.get(name.split("/")[-1], b"x" * 10)
        rows.append((name, b"../../etc/passwd" if kind == "symlink" else payload, kind))
    path = tmp_path_factory.mktemp("l") / "layout.zip"
    try:
        write_zip(path, rows)
    except (ValueError, OSError):
        return  # zipfile itself refuses that name: no such zip can exist
    if data.draw(st.booleans()):
        declare_size(path, data.draw(st.integers(0, len(rows) - 1)), data.draw(st.sampled_from([0, 2**32 - 1, 5])))
    _check_package(path, fuzz_cases)


def test_deeply_nested_manifest_is_one_line(tmp_path, entries, fuzz_cases):
    folder = write_folder(tmp_path / "pkg", {**entries, MANIFEST: b"[" * 100000 + b"]" * 100000})
    with pytest.raises(TumorSegError, match="not valid JSON"):
        open_package(folder)
    fuzz_cases.add("model package")
