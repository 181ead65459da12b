"""Give freed heap memory back to the operating system after a model version is retired.

A session's weights and arenas are freed when the version is released, but glibc keeps
freed chunks in its arenas: large blocks freed once raise malloc's dynamic mmap threshold,
so the next version's weights come from the heap, and every reload left ~one model's size
of RSS behind (measured: +20 MiB a reload of a 20 MiB model, bench/README.md "memory").
`malloc_trim(0)` returns the free pages of every arena. Elsewhere (musl, macOS) it is a
no-op that says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


def release_free_heap() -> bool:
    """Return free heap pages to the OS; False where the C library cannot. Blocking (a few
    milliseconds): call it from a thread."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
