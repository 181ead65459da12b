"""The threads that run onnxruntime: one per instance, each owning its runner.

A batch is handed over with one queue put; its result comes back to the event loop with
one `call_soon_threadsafe`. That is the whole hand-off: no concurrent.futures.Future, no
chained asyncio future, no task per batch (bench/README.md, "Serving cost per request"). The
inputs are gathered (one concatenation per input) on the instance's thread, off the loop.

A batch that is cheaper than the hand-off runs on the caller's thread (the event loop)
instead: waking a sleeping thread and then the loop costs this VM 130-190 us of CPU per
round trip, while a compute-free model runs a batch in about 10 us (bench/README.md). The
instance keeps a running estimate of its seconds per row, measured on every batch wherever
it ran, and runs a batch in place only when the estimate for its rows is under
`inline_below_s`; until it has measured a batch, everything goes to the thread. A slow
model therefore never runs on the loop, and a fast one never pays for a thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from service.batching.batch_queue import Slice, gather_inputs
from service.runtime.scheduler import Runner
from service.runtime.threads import name_os_thread

Outputs = list[npt.NDArray[np.generic]]
# Called on the event loop: (instance, outputs or None, error or None, seconds computing).
Done = Callable[["InstanceThread", Outputs | None, BaseException | None, float], None]

# A batch predicted to take less than this runs on the event loop (see the module doc):
# well under the hand-off it saves, and short enough not to hold other requests back.
INLINE_BELOW_S = 100e-6
# Weight of the newest batch in the seconds-per-row estimate.
ESTIMATE_WEIGHT = 0.2


class InstanceThread:
    """One instance: a thread that runs its batches in order, owned by the batcher."""

    def __init__(
        self,
        runner: Runner,
        loop: asyncio.AbstractEventLoop,
        name: str,
        *,
        inline_below_s: float = INLINE_BELOW_S,
    ) -> None:
        self.runner = runner
        self._loop = loop
        self._inline_below_s = inline_below_s
        self._per_row_s: float | None = None  # measured; None until a batch has run
        self._jobs: queue.SimpleQueue[tuple[list[Slice], Sequence[str], Done] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self, batch: list[Slice], output_names: Sequence[str], done: Done) -> None:
        """Run a batch; `done` is called on the loop, in a later callback, when it has run
        (or failed): in place when it is predicted cheaper than the hand-off, else on the
        instance's thread."""
        per_row = self._per_row_s
        if per_row is not None and per_row * _rows(batch) < self._inline_below_s:
            outputs, error, seconds = self._execute(batch, output_names)
            self._loop.call_soon(done, self, outputs, error, seconds)
            return
        self._jobs.put((batch, output_names, done))

    def stop(self) -> None:
        """Blocking: the queued batches run, then the thread ends (call from a thread)."""
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        name_os_thread("instance")
        while (job := self._jobs.get()) is not None:
            batch, names, done = job
            outputs, error, seconds = self._execute(batch, names)
            try:
                self._loop.call_soon_threadsafe(done, self, outputs, error, seconds)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _execute(
        self, batch: list[Slice], names: Sequence[str]
    ) -> tuple[Outputs | None, BaseException | None, float]:
        """Gather and run one batch; the error is handed to the loop, which answers the
        requests. The time includes the gathering: on the loop, that copy is paid too."""
        outputs: Outputs | None = None
        error: BaseException | None = None
        started = time.monotonic()  # not loop.time(): uvloop's is the loop's cached time
        try:
            outputs = self.runner.run(gather_inputs(batch), names)
        except BaseException as exc:
            error = exc
        seconds = time.monotonic() - started
        per_row = seconds / _rows(batch)
        previous = self._per_row_s
        self._per_row_s = (
            per_row if previous is None else previous + ESTIMATE_WEIGHT * (per_row - previous)
        )
        return outputs, error, seconds


def _rows(batch: list[Slice]) -> int:
    return sum(part.stop - part.start for part in batch) or 1
