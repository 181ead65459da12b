"""Give freed heap memory back to the operating system after a model version is retired.

A session's weights and arenas are freed when the version is released, but glibc keeps
freed chunks in its arenas: large blocks freed once raise malloc's dynamic mmap threshold,
so the next version's weights come from the heap, and every reload left ~one model's size
of RSS behind (measured: +20 MiB a reload of a 20 MiB model, bench/README.md "memory").
`malloc_trim(0)` returns the free pages of every arena, and `cnnserve serve` caps the arenas
at 2 before it starts threads (`limit_malloc_arenas`). Elsewhere (musl, macOS) both are
no-ops that say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from functools import cache


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    library = _libc()
    trim = getattr(library, "malloc_trim", None) if library is not None else None
    if trim is None:  # not glibc
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


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
SERVING_ARENAS = 2


def limit_malloc_arenas(count: int = SERVING_ARENAS) -> bool:
    """Cap glibc's malloc arenas, unless MALLOC_ARENA_MAX already says how many: call it
    before the server starts its threads. By default glibc gives threads up to 8 arenas per
    core; every thread that loads, warms or runs a version parks freed pages in its own, and
    `malloc_trim` returned them unevenly: with 100 reloads of a 24 MiB CNN the RSS with
    nothing loaded wandered between 115 and 193 MiB over the run (fitted slope +0.236 MiB
    per reload); with the cap here it stayed at 106-108 MiB (+0.009), and the served median
    fell from 232 to 160 MiB (bench/README.md, "memory"). False where the C library
    has no such setting or the environment set it."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _mallopt()
    return mallopt is not None and mallopt(M_ARENA_MAX, count) == 1


@cache
def _mallopt() -> Callable[[int, int], int] | None:
    library = _libc()
    function = getattr(library, "mallopt", None) if library is not None else None
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    typed: Callable[[int, int], int] = function
    return typed
