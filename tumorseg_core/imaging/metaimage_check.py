"""Check that a compressed MetaImage (``.mha``) file's voxels inflate to what its header declares.

ITK's MetaImage reader does not notice a damaged zlib stream: garbage, or a header without
``CompressedDataSize``, gives an image of uninitialised or partly decoded memory, with no
error (only "Uncompress failed" on stdout, which would corrupt the worker's protocol).
The check therefore runs before ITK reads the voxels. Here the
stream is inflated once, in chunks (no voxel array is held), and its length compared with
``DimSize`` x ``ElementNumberOfChannels`` x the element size. Uncompressed files, and
``.mhd`` headers whose voxels are in another file, are left to ITK (which reports a short
uncompressed file itself). No torch import here.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional

import numpy as np

# Bytes per element of the MetaImage element types.
_ELEMENT_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4,
    "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}
_MAX_HEADER_BYTES = 64 * 1024
_CHUNK = 4 * 1024 * 1024


def _header(path: Path) -> Optional[tuple[dict, int]]:
    """(header fields, byte offset of the voxels) of a ``.mha`` file with LOCAL data, else None."""
    with open(path, "rb") as stream:
        head = stream.read(_MAX_HEADER_BYTES)
    fields: dict = {}
    offset = 0
    for raw_line in head.split(b"\n"):
        offset += len(raw_line) + 1
        key, _, value = raw_line.decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return (fields, offset) if value.strip() == "LOCAL" else None
    return None


def compressed_problem(path: Path) -> Optional[str]:
    """Why a compressed ``.mha`` file's voxels are damaged (one phrase), or None if they are whole.

    None for other files, and for headers this check does not understand (ITK decides).
    """
    if not str(path).lower().endswith(".mha"):
        return None
    found = _header(Path(path))
    if found is None:
        return None
    fields, offset = found
    if fields.get("CompressedData", "False").lower() != "true":
        return None
    if "CompressedDataSize" not in fields:
        # ITK's reader then inflates past the stream ("Uncompress failed" on stdout) into garbage.
        return "its header has CompressedData but no CompressedDataSize, which ITK needs; re-save the file"
    try:
        sizes = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        element = _ELEMENT_BYTES[fields.get("ElementType", "")]
    except (ValueError, KeyError):
        return None
    expected = int(np.prod(sizes, dtype=object)) * channels * element if sizes else 0
    inflater = zlib.decompressobj()
    total = 0
    with open(path, "rb") as stream:
        stream.seek(offset)
        try:
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                total += len(inflater.decompress(chunk, max(0, expected - total) + 1))
                while inflater.unconsumed_tail and total <= expected:
                    total += len(inflater.decompress(inflater.unconsumed_tail, max(0, expected - total) + 1))
                if total > expected or inflater.eof:
                    break
        except zlib.error as exc:
            return f"its compressed voxels are damaged ({exc})"
    if total != expected or not inflater.eof:
        return f"its compressed voxels give {total} bytes, the header declares {expected} (truncated or damaged file?)"
    return None
