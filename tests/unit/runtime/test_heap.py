"""service/runtime/heap.py's arena cap, observed in glibc's own report (malloc_stats), in a fresh
process so that the cap comes before its threads, as in `cnnserve serve`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.serving import REPO_ROOT

# Eight threads allocate at once (held together by a barrier, so each needs an arena while
# the others hold theirs); then glibc prints one "Arena N:" block per arena on stderr.
PROBE = """
import ctypes, ctypes.util, sys, threading
from service.runtime.heap import limit_malloc_arenas
print(limit_malloc_arenas(int(sys.argv[1])) if sys.argv[1] != "none" else None, flush=True)
barrier = threading.Barrier(8)
def work():
    held = [bytearray(4096) for _ in range(200)]
    barrier.wait()
    barrier.wait()
    del held
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


def arenas(limit: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, limit], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr.count("Arena ")


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX") is not None,
    reason="glibc's mallopt, with no MALLOC_ARENA_MAX set around the tests",
)


def test_without_the_cap_threads_take_arenas_of_their_own() -> None:
    assert arenas("none")[1] > 2


def test_the_cap_holds_every_thread_to_two_arenas() -> None:
    said, count = arenas("2")
    assert said == "True" and 1 <= count <= 2


def test_a_malloc_arena_max_in_the_environment_wins() -> None:
    said, count = arenas("1", {"MALLOC_ARENA_MAX": "3"})
    assert said == "False" and 1 < count <= 3
