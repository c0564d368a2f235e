"""The adversarial corpus: >= 50 named hostile inputs, generated deterministically.

Each case is a name (what it is: ``nifti_zero_dim.nii.gz``, ``zip_dotdot.zip``,
``manifest_sha_mismatch/``), a builder that writes it into a folder, and what TumorSeg
must answer: ``OK`` (a result on the input's exact grid, or a verified package whose
networks load) or a fragment of the one-line error. ``test_adversarial_corpus.py``
generates the corpus into a temporary folder and checks every case; run this script to
write it somewhere to look at::

    python Testing/core/fuzz/make_corpus.py OUT_FOLDER

Nothing here is random: the voxels come from fixed seeds, so the files are identical on
every run.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from fuzz_files import (
    NIFTI_DIM,
    NIFTI_PIXDIM,
    NIFTI_VOX_OFFSET,
    patch_nifti,
    voxel_bytes,
    write_mha,
    write_sitk,
)
from package_files import (
    MANIFEST,
    declare_size,
    package_entries,
    tiny_package,
    with_rehashed,
    write_folder,
    write_zip,
    zip_folder,
)

OK = "OK"
OBLIQUE = (0.8, -0.6, 0.0, 0.6, 0.8, 0.0, 0.0, 0.0, 1.0)
FLIPPED = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)
IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


class Case(NamedTuple):
    kind: str  # "image" or "package"
    build: Callable[[Path], Path]  # writes the case as folder / name, returns its path
    expect: str  # OK, or a fragment of the one-line error


def _volume(shape=(6, 7, 8), seed=0, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(40.0, 10.0, shape)).astype(dtype)


def _nifti(array, *, spacing=(0.8, 1.2, 2.5), direction=OBLIQUE, vector=False, patches=(), truncate=None):
    def build(path: Path) -> Path:
        write_sitk(path, array, spacing=spacing, direction=direction, vector=vector)
        if patches or truncate is not None:
            patch_nifti(path, patches, truncate)
        return path
    return build


def _with(array, index, value):
    out = array.copy()
    out.reshape(-1)[index] = value
    return out


def _mha(size=(5, 6, 7), spacing=(0.9, 1.1, 2.0), direction=IDENTITY, element="MET_FLOAT", channels=1,
         pattern="random", cut=None, compressed=False, data=None):
    def build(path: Path) -> Path:
        raw = voxel_bytes(size, element, channels, pattern) if data is None else data
        return write_mha(path, size, spacing, direction, raw[:cut] if cut is not None else raw, element, channels,
                         compressed=compressed)
    return build


def _bytes(content: bytes):
    def build(path: Path) -> Path:
        path.write_bytes(content)
        return path
    return build


def _folder(files: dict):
    def build(path: Path) -> Path:
        path.mkdir()
        for name, content in files.items():
            (path / name).write_bytes(content)
        return path
    return build


def _four_d(volumes: int):
    def build(path: Path) -> Path:
        array = np.stack([_volume(seed=v) for v in range(volumes)])  # (t, z, y, x)
        import SimpleITK as sitk

        images = [sitk.GetImageFromArray(a) for a in array]
        sitk.WriteImage(sitk.JoinSeries(images), str(path))
        return path
    return build


def _mhd_missing_data(path: Path) -> Path:
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\n"
                    "ElementDataFile = nowhere.raw\n")
    return path


_SEPARATE_GZ_HEADER = gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 100, mtime=0)

IMAGE_CASES: dict[str, Case] = {
    "nifti_zero_dim.nii.gz": Case("image", _nifti(_volume(), patches=[(NIFTI_DIM + 2, "h", (0,))]), "bad dim"),
    "nifti_zero_dim.nii": Case("image", _nifti(_volume(), patches=[(NIFTI_DIM + 2, "h", (0,))]), "bad dim"),
    "nifti_zero_second_dim.nii": Case("image", _nifti(_volume(), patches=[(NIFTI_DIM + 4, "h", (0,))]),
                                      "single slice"),  # niftilib reads a 0 there as 1
    "nifti_negative_dim.nii": Case("image", _nifti(_volume(), patches=[(NIFTI_DIM + 2, "h", (-3,))]), "could not read"),
    "nifti_ndim_9.nii": Case("image", _nifti(_volume(), patches=[(NIFTI_DIM, "h", (9,))]), "could not read"),
    "nifti_partly_nan.nii.gz": Case("image", _nifti(_with(_volume(), [3, 50], np.nan)), "2 NaN and 0 Inf voxels"),
    "nifti_partly_nan.nii": Case("image", _nifti(_with(_volume(), [7], np.nan)), "1 NaN and 0 Inf voxels"),
    "nifti_all_nan.nii.gz": Case("image", _nifti(np.full((6, 7, 8), np.nan, np.float32)), "(every voxel)"),
    "nifti_all_nan.nii": Case("image", _nifti(np.full((6, 7, 8), np.nan, np.float32)), "336 NaN"),
    "nifti_plus_minus_inf.nii.gz": Case("image", _nifti(_with(_with(_volume(), 0, np.inf), 9, -np.inf)),
                                        "0 NaN and 2 Inf voxels"),
    "nifti_float64_nan.nii.gz": Case("image", _nifti(_with(_volume(dtype=np.float64), 11, np.nan)), "1 NaN"),
    "nifti_complex.nii.gz": Case("image", _nifti((_volume() + 1j).astype(np.complex64)), "complex voxels"),
    "nifti_4d_two_volumes.nii.gz": Case("image", _four_d(2), "fslsplit"),
    "nifti_4d_one_volume.nii.gz": Case("image", _four_d(1), OK),
    "nifti_vector_two_components.nii.gz": Case("image", _nifti(_volume((6, 7, 8, 2)), vector=True), "values per voxel"),
    "nifti_2d.nii.gz": Case("image", _nifti(_volume((7, 8)), spacing=(1.0, 1.0), direction=(1, 0, 0, 1)), "2D"),
    "nifti_single_slice.nii.gz": Case("image", _nifti(_volume((1, 7, 8))), "single slice"),
    "nifti_constant.nii.gz": Case("image", _nifti(np.full((6, 7, 8), 5, np.int16)), "constant"),
    "nifti_truncated_voxels.nii.gz": Case("image", _nifti(_volume(), truncate=348 + 4 + 100), "could not read"),
    "nifti_truncated_voxels.nii": Case("image", _nifti(_volume(), truncate=348 + 4 + 100), "truncated"),
    "nifti_truncated_header.nii": Case("image", _nifti(_volume(), truncate=200), "could not read"),
    "nifti_pixdim_zero.nii": Case("image", _nifti(_volume(), patches=[(NIFTI_PIXDIM + 4, "f", (0.0,))]), OK),
    "nifti_pixdim_negative.nii": Case("image", _nifti(_volume(), patches=[(NIFTI_PIXDIM + 8, "f", (-2.0,))]), OK),
    "nifti_pixdim_nan.nii": Case("image", _nifti(_volume(), patches=[(NIFTI_PIXDIM + 4, "f", (float("nan"),))]),
                                 OK),  # ITK reads a NaN spacing as 1 mm
    "nifti_vox_offset_beyond_end.nii": Case("image", _nifti(_volume(), patches=[(NIFTI_VOX_OFFSET, "f", (1e9,))]),
                                            "truncated"),
    "nifti_bad_magic.nii": Case("image", _nifti(_volume(), patches=[(344, "4s", (b"xx1\x00",))]),
                                OK),  # ITK falls back to Analyze 7.5: no orientation, but a volume
    "nifti_gzip_garbage.nii.gz": Case("image", _bytes(b"\x1f\x8b\x08\x00garbage" * 10), "could not read"),
    "nifti_gzip_header_only.nii.gz": Case("image", _bytes(_SEPARATE_GZ_HEADER), "could not read"),
    "nifti_empty_file.nii.gz": Case("image", _bytes(b""), "could not read"),
    "nifti_bool_mask.nii.gz": Case("image", _nifti((_volume() > 40).astype(np.uint8)), OK),
    "nifti_uint16_oblique.nii.gz": Case("image", _nifti(_volume(dtype=np.float32).astype(np.uint16)), OK),
    "nifti_int8_flipped.nii": Case("image", _nifti(_volume().astype(np.int8), direction=FLIPPED), OK),
    "mha_all_nan.mha": Case("image", _mha(pattern="all_nan"), "(every voxel)"),
    "mha_partly_inf.mha": Case("image", _mha(pattern="one_inf"), "0 NaN and 1 Inf voxels"),
    "mha_half_nan_float64.mha": Case("image", _mha(element="MET_DOUBLE", pattern="half_nan"), "NaN"),
    "mha_zero_spacing.mha": Case("image", _mha(spacing=(0, 1, 1)), "spacing"),
    "mha_negative_spacing.mha": Case("image", _mha(spacing=(-1.5, 1, 1)), OK),
    "mha_nan_spacing.mha": Case("image", _mha(spacing=("nan", 1, 1)), "could not read"),
    "mha_huge_spacing.mha": Case("image", _mha(spacing=(1e30, 1, 1)), "too many voxels"),
    "mha_tiny_spacing.mha": Case("image", _mha(spacing=(1e-30, 1e-30, 1e-30)), OK),
    "mha_singular_direction.mha": Case("image", _mha(direction=(1, 0, 0, 1, 0, 0, 0, 0, 1)), "Bad direction"),
    "mha_zero_direction.mha": Case("image", _mha(direction=(0,) * 9), "Bad direction"),
    "mha_non_orthonormal_direction.mha": Case("image", _mha(direction=(1, 0.5, 0, 0, 1, 0, 0, 0, 1)), OK),
    "mha_huge_declared_size.mha": Case("image", _mha(size=(100000, 100000, 100000), data=b"\x00" * 64),
                                       "more than TumorSeg reads"),
    "mha_truncated_data.mha": Case("image", _mha(cut=37), "could not read"),
    "mha_one_voxel.mha": Case("image", _mha(size=(1, 1, 1)), "single slice"),
    "mha_zero_size.mha": Case("image", _mha(size=(5, 0, 7)), "empty"),
    "mha_vector_three_channels.mha": Case("image", _mha(channels=3), "values per voxel"),
    "mha_compressed_garbage.mha": Case("image", _mha(data=b"\x78\x9cnot deflate at all" * 4, compressed=True),
                                       "compressed voxels"),
    "mha_compressed_truncated.mha": Case("image", _mha(cut=300, compressed=True), "could not read"),
    "mha_compressed_stream_cut.mha": Case("image", lambda p: _bytes(_mha(compressed=True)(p).read_bytes()[:-40])(p),
                                          "could not read"),
    "mha_compressed_without_size.mha": Case("image", lambda p: _bytes(re.sub(
        rb"CompressedDataSize = \d+\n", b"", _mha(compressed=True)(p).read_bytes()))(p), "no CompressedDataSize"),
    "mha_compressed_ok.mha": Case("image", _mha(compressed=True, direction=(0, -1, 0, 1, 0, 0, 0, 0, -1)), OK),
    "mha_int8_constant.mha": Case("image", _mha(element="MET_CHAR", pattern="constant"), "constant"),
    "mhd_missing_data_file.mhd": Case("image", _mhd_missing_data, "could not read"),
    "nrrd_garbage.nrrd": Case("image", _bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4\n\n\x00\x01"),
                              "could not read"),
    "text_file_named.nii": Case("image", _bytes(b"hello, not an image\n" * 30), "could not read"),
    "folder_without_dicom/": Case("image", _folder({"notes.txt": b"no dicom here", "x.dcm": b"DICM?"}),
                                  "without a DICOM series"),
    "folder_named_like_a_file.nii.gz/": Case("image", _folder({}), "without a DICOM series"),
    "missing_file.nii.gz": Case("image", lambda path: path, "does not exist"),
}


# ---------------------------------------------------------------------------------- packages

def _pkg_folder(mutate: Callable[[dict], dict]):
    def build(path: Path) -> Path:
        return write_folder(path, mutate(package_entries(_shared_package(path.parent))))
    return build


def _pkg_zip(rows: Callable[[dict], list], huge: bool = False):
    def build(path: Path) -> Path:
        write_zip(path, rows(package_entries(_shared_package(path.parent))))
        if huge:
            declare_size(path, 1, 2**32 - 1)
        return path
    return build


def _shared_package(folder: Path) -> Path:
    """One tiny valid package per corpus folder (the cases copy or damage its files)."""
    source = folder / ".source_package"
    if not source.is_dir():
        tiny_package(source)
    return source


def _files(entries: dict) -> list:
    return [(n, b, "file") for n, b in entries.items()]


def _manifest_edit(edit: Callable[[dict], None]):
    def mutate(entries: dict) -> dict:
        manifest = json.loads(entries[MANIFEST])
        edit(manifest)
        return {**entries, MANIFEST: json.dumps(manifest).encode()}
    return mutate


def _weights_edit(edit: Callable[[bytes], bytes]):
    return lambda entries: with_rehashed({**entries, "fold0.safetensors": edit(entries["fold0.safetensors"])})


def _zipped_valid(path: Path) -> Path:
    return zip_folder(_shared_package(path.parent), path)


def _zipped_nested(path: Path) -> Path:
    return zip_folder(_shared_package(path.parent), path, top="tiny-model")


def _set(key, value):
    return lambda manifest: manifest.__setitem__(key, value)


def _other_weights(entries: dict) -> dict:
    """Weights of a network with other shapes, hashed correctly: they must not load."""
    header = json.dumps({"head.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return with_rehashed({**entries, "fold0.safetensors": struct.pack("<Q", len(header)) + header + b"\x00" * 4})


PACKAGE_CASES: dict[str, Case] = {
    "zip_valid.zip": Case("package", _zipped_valid, OK),
    "zip_nested_top_folder.zip": Case("package", _zipped_nested, OK),
    "zip_dotdot.zip": Case("package", _pkg_zip(lambda e: _files(e) + [("../evil.txt", b"x", "file")]), "unsafe entry"),
    "zip_dotdot_inside.zip": Case("package", _pkg_zip(lambda e: _files(e) + [("a/../../evil", b"x", "file")]),
                                  "unsafe entry"),
    "zip_absolute_path.zip": Case("package", _pkg_zip(lambda e: _files(e) + [("/tmp/evil.txt", b"x", "file")]),
                                  "unsafe entry"),
    "zip_drive_letter.zip": Case("package", _pkg_zip(lambda e: _files(e) + [("C:evil.txt", b"x", "file")]),
                                 "unsafe entry"),
    "zip_backslash.zip": Case("package", _pkg_zip(lambda e: _files(e) + [("..\\evil.txt", b"x", "file")]),
                              "unsafe entry"),
    "zip_empty_name.zip": Case("package", _pkg_zip(lambda e: _files(e) + [("", b"x", "file")]), "unsafe entry"),
    "zip_symlink.zip": Case("package", _pkg_zip(lambda e: _files(e) + [("link", b"/etc/passwd", "symlink")]),
                            "symbolic link"),
    "zip_duplicate_entry.zip": Case("package", _pkg_zip(lambda e: _files(e) + [(MANIFEST, e[MANIFEST], "file")]),
                                    "twice"),
    "zip_huge_declared_size.zip": Case("package", _pkg_zip(_files, huge=True), "zip"),
    "zip_file_and_folder_clash.zip": Case("package", _pkg_zip(lambda e: _files(e) + [("a", b"x", "file"),
                                                                                     ("a/b", b"y", "file")]),
                                          "could not extract"),
    "zip_truncated.zip": Case("package", lambda p: _bytes(_zipped_valid(p).read_bytes()[:700])(p), "not a readable zip"),
    "zip_not_a_zip.zip": Case("package", _bytes(b"PK\x03\x04 this is not really a zip" * 3), "not a readable zip"),
    "zip_empty.zip": Case("package", _bytes(b""), "not a readable zip"),
    "zip_no_manifest.zip": Case("package", _pkg_zip(lambda e: [r for r in _files(e) if r[0] != MANIFEST]),
                                "manifest.json"),
    "manifest_sha_mismatch/": Case("package", _pkg_folder(lambda e: {**e, "fold0.safetensors": e["fold0.safetensors"]
                                                                     + b"\x00"}), "sha256"),
    "manifest_missing_file/": Case("package", _pkg_folder(lambda e: {k: v for k, v in e.items()
                                                                     if k != "fold0.safetensors"}), "missing"),
    "manifest_unlisted_file/": Case("package", _pkg_folder(lambda e: {**e, "extra.bin": b"x"}), "does not list"),
    "manifest_not_json/": Case("package", _pkg_folder(lambda e: {**e, MANIFEST: b"{not json"}), "not valid JSON"),
    "manifest_nan_constant/": Case("package", _pkg_folder(lambda e: {**e, MANIFEST: e[MANIFEST].replace(
        b'"version"', b'"x": NaN, "version"', 1)}), "not valid JSON"),
    "manifest_deep_nesting/": Case("package", _pkg_folder(lambda e: {**e, MANIFEST: b"[" * 50000 + b"]" * 50000}),
                                   "not valid JSON"),
    "manifest_json_array/": Case("package", _pkg_folder(lambda e: {**e, MANIFEST: b"[1, 2]"}), "JSON object"),
    "manifest_not_utf8/": Case("package", _pkg_folder(lambda e: {**e, MANIFEST: b"\xff\xfe{}"}), "not valid JSON"),
    "manifest_empty_file/": Case("package", _pkg_folder(lambda e: {**e, MANIFEST: b""}), "not valid JSON"),
    "manifest_over_1mb/": Case("package", _pkg_folder(lambda e: {**e, MANIFEST: b" " * (1024 * 1024 + 10)}), "1 MB"),
    "manifest_unknown_architecture/": Case("package", _pkg_folder(_manifest_edit(_set("architecture", "evil.os"))),
                                           "architecture"),
    "manifest_path_in_files/": Case("package", _pkg_folder(_manifest_edit(
        lambda m: m["files"].__setitem__("../x.safetensors", "0" * 64))), "invalid file name"),
    "manifest_spacing_negative/": Case("package", _pkg_folder(_manifest_edit(_set("spacing", [-1, 1, 1]))),
                                       "spacing"),
    "safetensors_truncated/": Case("package", _pkg_folder(_weights_edit(lambda b: b[:len(b) // 2])),
                                   "not a valid safetensors"),
    "safetensors_header_length_huge/": Case("package", _pkg_folder(_weights_edit(
        lambda b: struct.pack("<Q", 2**63) + b[8:])), "not a valid safetensors"),
    "safetensors_empty/": Case("package", _pkg_folder(_weights_edit(lambda b: b"")), "not a valid safetensors"),
    "safetensors_wrong_shapes/": Case("package", _pkg_folder(_other_weights), "do not match the architecture"),
}

CASES: dict[str, Case] = {**IMAGE_CASES, **PACKAGE_CASES}


def build(name: str, folder: Path) -> Path:
    """Write case ``name`` into ``folder``; returns its path (a file or a folder)."""
    return CASES[name].build(Path(folder) / name.rstrip("/"))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: make_corpus.py OUT_FOLDER\n")
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        build(name, out)
    sys.stdout.write(f"wrote {len(CASES)} cases into {out}\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # model_factory
    raise SystemExit(main(sys.argv[1:]))
