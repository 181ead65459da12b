"""OS-level names for the server's threads, so `top -H`, /proc/<pid>/task/*/comm and
per-thread CPU readings (bench/overhead.py) tell the instances and decoders apart from the
event loop and gRPC's poller (Python's own thread names stay inside Python)."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from functools import cache
from typing import Any

_PR_SET_NAME = 15  # prctl(2); Linux only, 15 bytes + NUL


@cache
def _prctl() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).prctl
    except (OSError, AttributeError):
        return None


def name_os_thread(prefix: str) -> None:
    """Give the calling thread the OS name `<prefix>-<n>` (a ThreadPoolExecutor initializer);
    a no-op where prctl is missing."""
    prctl = _prctl()
    if prctl is None:
        return
    suffix = threading.current_thread().name.rsplit("_", 1)[-1]
    label = f"{prefix}-{suffix}"[:15].encode()
    prctl(_PR_SET_NAME, ctypes.c_char_p(label), 0, 0, 0)
