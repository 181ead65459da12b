"""Retiring versions taken out of service: each is closed once its last request is done,
and everything it acquired is released: onnxruntime sessions, instance and decode threads,
metric series, and the freed heap pages (a reload leaves memory where it was)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from service.runtime.heap import release_free_heap
from service.serving.model import ServedModel


class Retirement:
    """Owns the background work of retiring versions (awaited by `wait`)."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[object]] = set()

    def track(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def later(self, served: ServedModel, *, out_of_service: bool) -> None:
        self.track(retire(served, out_of_service=out_of_service))

    def release_heap_later(self) -> None:
        """After a first load (no version retires): its file reading and instances: auto
        trials freed heap that glibc keeps; measured 120-180 MiB at start-up with a 24 MiB
        CNN (bench/README.md, "memory")."""
        self.track(asyncio.to_thread(release_free_heap))

    async def wait(self) -> None:
        """Until every version handed over so far has been closed and released."""
        while self._pending:
            await asyncio.gather(*self._pending)


async def retire(served: ServedModel, *, out_of_service: bool) -> None:
    """Close `served` once its last lease is released, then release what it held.
    `out_of_service`: no version replaces it (unload, failure), so its ready gauge stays,
    reading 0, for the alerts."""
    metrics = served.metrics
    if metrics is not None:
        metrics.not_ready()
    await served.retire()  # closes its sessions (their memory is freed) and threads
    await asyncio.to_thread(release_free_heap)
    if metrics is not None:  # last: its series leaving /metrics says retirement is done
        metrics.release(keep_ready_zero=out_of_service)
