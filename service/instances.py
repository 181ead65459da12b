"""The threads that run onnxruntime: one per instance, each owning its runner.

A batch is handed over with one queue put; its result comes back to the event loop with
one `call_soon_threadsafe`. That is the whole hand-off: no concurrent.futures.Future, no
chained asyncio future, no task per batch (bench/README.md, "Serving cost per request"). The
inputs are gathered (one concatenation per input) on the instance's thread, off the loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from service.batch_queue import Slice, gather_inputs
from service.scheduler import Runner
from service.threads import name_os_thread

Outputs = list[npt.NDArray[np.generic]]
# Called on the event loop: (instance, outputs or None, error or None, seconds computing).
Done = Callable[["InstanceThread", Outputs | None, BaseException | None, float], None]


class InstanceThread:
    """One instance: a thread that runs its batches in order, owned by the batcher."""

    def __init__(self, runner: Runner, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self.runner = runner
        self._loop = loop
        self._jobs: queue.SimpleQueue[tuple[list[Slice], Sequence[str], Done] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self, batch: list[Slice], output_names: Sequence[str], done: Done) -> None:
        """Queue a batch; `done` is called on the loop when it has run (or failed)."""
        self._jobs.put((batch, output_names, done))

    def stop(self) -> None:
        """Blocking: the queued batches run, then the thread ends (call from a thread)."""
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        name_os_thread("instance")
        clock = time.monotonic  # not loop.time(): uvloop's is the loop's cached time
        while (job := self._jobs.get()) is not None:
            batch, names, done = job
            outputs: Outputs | None = None
            error: BaseException | None = None
            started = clock()
            try:
                outputs = self.runner.run(gather_inputs(batch), names)
            except BaseException as exc:  # handed to the loop, which answers the requests
                error = exc
            seconds = clock() - started
            try:
                self._loop.call_soon_threadsafe(done, self, outputs, error, seconds)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
