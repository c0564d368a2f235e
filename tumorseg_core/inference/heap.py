"""Give the C heap's free pages back to the operating system (glibc ``malloc_trim``).

glibc serves allocations below its mmap threshold (which grows up to 32 MiB as large
blocks are freed) from the heap, and a freed block in the middle of the heap stays
resident. A network run slab by slab allocates and frees many slab-sized tensors, so
without trimming its resident memory keeps the high-water mark of every layer before it
(measured on nnU-Net's default plan: 1.33 GiB peak for one case instead of 1.18 GiB).
``malloc_trim(0)`` returns those pages; the next allocation faults them back in.

Elsewhere (macOS, Windows, musl) there is no ``malloc_trim`` and :func:`trim` does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Optional


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Any]:
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


def trim() -> bool:
    """Return the heap's free pages to the OS; True where the C library can (glibc)."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True
