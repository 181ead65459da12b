"""The batcher's queue: pending requests, handed out to batches row by row.

Rows are accounted per request (`rows`: its batch size, or 1 when requests never merge);
a request larger than a batch is sliced over several, and one batch may carry rows of many
requests. A batch holds one shape: requests share it only when every input has the same
datatype and non-batch dims (`shape_key`). The head of the queue sets the shape; requests
of other shapes keep their place in line and lead the batches after it, so the oldest
request always leaves next. Expired and cancelled requests are dropped at the head before
compute. Pure bookkeeping on the event loop: no threads, no awaits (service/batching/batcher.py
drives it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from service.runtime.device_rows import DeviceRows
from service.runtime.scheduler import Arrays, Feed, Feeds
from service.tensors.errors import CnnserveError, DeadlineExceeded


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int  # rows per run; with merge=False only bounds the queue accounting
    max_queue_size: int  # rows waiting (not yet handed to an instance)
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    merge: bool = True  # False: each request runs alone, as sent (unbatched models)
    # The last runner is a solo instance (every core in one session; autotune.py): it runs
    # a batch that is all the queued work while every instance is idle, and never beside
    # the others.
    solo_instance: bool = False


class BatchRecord(NamedTuple):
    """What one executed batch looked like; handed to the observer (metrics, tests)."""

    rows: int
    requests: int
    queue_waits_s: tuple[float, ...]  # per request part: enqueue -> batch start
    compute_s: float
    failed: bool


class BatchObserver(Protocol):
    """Told about every executed batch and every request refused or dropped before compute
    (metrics.ModelMetrics implements it)."""

    def batch(self, record: BatchRecord) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def batch_failed(self) -> None:
        """A batch of several requests failed: each of them is run alone once."""
        ...

    def rerun(self, rescued: bool) -> None:
        """One request of a failed batch ran alone: it answered (rescued) or failed again."""
        ...


# Rejection reasons (the `reason` label of cnnserve_rejections_total).
QUEUE_FULL = "queue_full"
TOO_LARGE = "too_large"
DEADLINE = "deadline"
CANCELLED = "cancelled"
SHUTTING_DOWN = "shutting_down"
FAILED = "failed"  # the version's dispatch failed: it refuses until it is replaced


# What requests must agree on to share a batch: per input (sorted by name), its name,
# datatype and dims after the batch dim. None for models whose requests never merge.
ShapeKey = tuple[tuple[str, np.dtype[np.generic], tuple[int, ...]], ...] | None


def shape_key(inputs: Feeds) -> ShapeKey:
    """The batch-sharing key of a request's inputs (device rows are uint8 pixels)."""
    if len(inputs) == 1:  # most models: one image input (a tuple, no generator: hot path)
        ((name, value),) = inputs.items()
        return ((name, _dtype(value), value.shape[1:]),)
    return tuple((name, _dtype(inputs[name]), inputs[name].shape[1:]) for name in sorted(inputs))


UINT8: np.dtype[np.generic] = np.dtype(np.uint8)


def _dtype(value: Feed) -> np.dtype[np.generic]:
    # Device rows are uint8 pixels: they batch with host uint8 pixels of the same size.
    return UINT8 if isinstance(value, DeviceRows) else value.dtype


class PendingRequest:
    """One submitted request: its rows are handed out to batches in order. A plain class
    with slots: one is built per request, on the hot path."""

    __slots__ = (
        "batch_size", "deadline", "done_rows", "enqueued_at", "future", "inputs", "next_row",
        "output_names", "parts", "rows", "shape",
    )  # fmt: skip

    def __init__(
        self,
        inputs: Feeds,
        output_names: tuple[str, ...],
        rows: int,  # in the queue's accounting: the batch size, or 1 when never merged
        batch_size: int,  # rows as sent (what one run computes when requests never merge)
        deadline: float | None,
        enqueued_at: float,
        future: asyncio.Future[Arrays],
        shape: ShapeKey = None,  # requests share a batch only with their own shape
    ) -> None:
        self.inputs = inputs
        self.shape = shape
        self.output_names = output_names
        self.rows = rows
        self.batch_size = batch_size
        self.deadline = deadline
        self.enqueued_at = enqueued_at
        self.future = future
        self.next_row = 0  # rows already handed to batches
        self.done_rows = 0
        self.parts: dict[int, Arrays] = {}  # start row -> outputs

    @property
    def started(self) -> bool:
        return self.next_row > 0

    def finish_part(self, start: int, outputs: Arrays, rows: int) -> None:
        if self.future.done():
            return
        self.parts[start] = outputs
        self.done_rows += rows
        if self.done_rows < self.rows:
            return
        if len(self.parts) == 1:
            result = outputs  # the whole request in one batch: views, no copy
        else:
            order = sorted(self.parts)
            result = {
                name: np.concatenate([self.parts[s][name] for s in order])
                for name in self.output_names
            }
        self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Slice(NamedTuple):
    request: PendingRequest
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class RequestQueue:
    """FIFO of pending requests with their rows not yet handed to a batch."""

    def __init__(self, on_expired: Callable[[], None]) -> None:
        self._queue: deque[PendingRequest] = deque()
        self.rows = 0  # rows waiting (not yet handed to a batch)
        self._rows_by_shape: dict[ShapeKey, int] = {}  # the same rows, per shape
        self._on_expired = on_expired  # a request dropped at its deadline (counted)

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[PendingRequest]:
        return iter(self._queue)

    @property
    def head(self) -> PendingRequest:
        return self._queue[0]

    @property
    def head_shape_rows(self) -> int:
        """Rows waiting that may share a batch with the head (0 when the queue is empty):
        what the next batch can hold, for the queue delay and preferred sizes."""
        if not self._queue:
            return 0
        return self._rows_by_shape.get(self._queue[0].shape, 0)

    def is_one_batch(self, policy: BatchPolicy) -> bool:
        """Every queued row fits in the next batch: one shape, at most max_batch_size rows
        (unbatched models: one request)."""
        if not policy.merge:
            return len(self._queue) == 1
        return 0 < self.rows <= policy.max_batch_size and self.head_shape_rows == self.rows

    def append(self, pending: PendingRequest) -> None:
        self._queue.append(pending)
        self._count(pending.shape, pending.rows)

    def _count(self, shape: ShapeKey, rows: int) -> None:
        self.rows += rows
        left = self._rows_by_shape.get(shape, 0) + rows
        if left:
            self._rows_by_shape[shape] = left
        else:  # no key per shape ever seen: a client cycling sizes cannot grow this
            self._rows_by_shape.pop(shape, None)

    def forget(self, pending: PendingRequest) -> None:
        """Withdraw a request: rows already in a running batch finish and are discarded;
        the rest never run."""
        if pending in self._queue:
            self._queue.remove(pending)
            self._count(pending.shape, -(pending.rows - pending.next_row))

    def fail_all(self, error: CnnserveError) -> None:
        waiting = list(self._queue)
        self._queue.clear()
        self.rows = 0
        self._rows_by_shape.clear()
        for pending in waiting:
            pending.fail(error)

    def _drop_dead_heads(self, now: float) -> None:
        while self._queue and self._dead(self._queue[0], now):
            self._queue.popleft()

    def _dead(self, request: PendingRequest, now: float) -> bool:
        """A request that will never run (cancelled by its client, or its deadline passed
        before compute) is failed if need be and taken out of the accounting; the caller
        removes it from the queue. A request already partly computing is never dead."""
        if request.started:
            return False
        if request.future.done():  # cancelled by its client
            pass
        elif request.deadline is not None and now >= request.deadline:
            request.fail(DeadlineExceeded("the request's deadline passed before compute"))
            self._on_expired()
        else:
            return False
        self._count(request.shape, -request.rows)
        return True

    def _target_rows(self, policy: BatchPolicy) -> int:
        target = min(self.head_shape_rows, policy.max_batch_size)
        fitting = [p for p in policy.preferred_batch_sizes if p <= target]
        return max(fitting) if fitting else target

    def form_batch(self, now: float, policy: BatchPolicy) -> list[Slice]:
        """The next batch: live rows of the head's shape, in arrival order, up to the
        policy's target size. Requests of other shapes passed over keep their places."""
        self._drop_dead_heads(now)
        if not self._queue:
            return []
        if not policy.merge:
            head = self._queue.popleft()
            self._count(head.shape, -head.rows)
            head.next_row = head.rows
            return [Slice(head, 0, head.rows)]
        budget = self._target_rows(policy)
        shape = self._queue[0].shape
        batch: list[Slice] = []
        passed: list[PendingRequest] = []  # other shapes, ahead of where this batch stops
        while budget > 0 and self._queue:
            request = self._queue.popleft()
            if self._dead(request, now):
                continue
            if request.shape != shape:
                passed.append(request)
                continue
            take = min(budget, request.rows - request.next_row)
            batch.append(Slice(request, request.next_row, request.next_row + take))
            request.next_row += take
            budget -= take
            self._count(shape, -take)
            if request.next_row < request.rows:
                self._queue.appendleft(request)  # the rest of it leads the next batch
        self._queue.extendleft(reversed(passed))
        return batch


def gather_inputs(batch: list[Slice]) -> dict[str, Feed]:
    """One concatenation per input; a batch that is one whole request is passed as is.
    Rows decoded on the device are gathered there (device-to-device copies; host pixels
    batched with them are copied up)."""
    first = batch[0]
    if len(batch) == 1 and first.start == 0 and first.stop == first.request.rows:
        return dict(first.request.inputs)
    gathered: dict[str, Feed] = {}
    for name in first.request.inputs:
        parts = [(part.request.inputs[name], part.start, part.stop) for part in batch]
        if any(isinstance(value, DeviceRows) for value, _, _ in parts):
            gathered[name] = DeviceRows.gather(parts)
        else:
            gathered[name] = np.concatenate(
                [_host(value)[start:stop] for value, start, stop in parts]
            )
    return gathered


def _host(value: Feed) -> npt.NDArray[np.generic]:
    assert not isinstance(value, DeviceRows)
    return value


def hand_out(batch: list[Slice], results: Arrays, *, merge: bool) -> None:
    """Each request of an executed batch gets its rows of the outputs (views, no copy)."""
    if len(batch) == 1:  # one request (or one part of it): the outputs as they are
        part = batch[0]
        part.request.finish_part(part.start, results, part.rows)
        return
    offset = 0
    for part in batch:
        names = part.request.output_names
        if merge:
            own = {n: results[n][offset : offset + part.rows] for n in names}
        else:
            own = {n: results[n] for n in names}
        part.request.finish_part(part.start, own, part.rows)
        offset += part.rows
