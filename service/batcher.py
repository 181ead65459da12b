"""The dynamic batcher: one per model version, in front of its onnxruntime instances.

Policy (DESIGN.md, "The request path"):
- A batch leaves as soon as an instance is free; whatever queued while every instance was
  busy leaves together, up to `max_batch_size` rows. An idle server adds no delay.
- `max_queue_delay_us` > 0 lets a partial batch wait up to that long for more rows;
  `preferred_batch_sizes` cut a batch at the largest preferred size that the queue fills.
- Requests are split at row granularity: one request's rows may span several batches (a
  request larger than `max_batch_size` is split and reassembled), and one batch may carry
  rows of many requests. Each response gets exactly its own rows, in order.
- Admission is bounded in rows (`max_queue_size`): a full queue answers RESOURCE_EXHAUSTED
  at once. Expired and cancelled requests are dropped before compute.
- Models that cannot batch (`merge=False`) go through the same queue, one request a run.

Execution happens in a thread pool owned here (one thread per instance); the event loop
only moves references. Copies: one `np.concatenate` per input per batch (none when a batch
is a single whole request), outputs are sliced as views.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.errors import (
    CnnserveError,
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from service.scheduler import Arrays, Runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int  # rows per run; with merge=False only bounds the queue accounting
    max_queue_size: int  # rows waiting (not yet handed to an instance)
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    merge: bool = True  # False: each request runs alone, as sent (unbatched models)


@dataclass(frozen=True)
class BatchRecord:
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


# Rejection reasons (the `reason` label of cnnserve_rejections_total).
QUEUE_FULL = "queue_full"
TOO_LARGE = "too_large"
DEADLINE = "deadline"
CANCELLED = "cancelled"
SHUTTING_DOWN = "shutting_down"
FAILED = "failed"  # the version's dispatcher died: it refuses until it is replaced


@dataclass(eq=False)
class _Pending:
    """One submitted request: its rows are handed out to batches in order."""

    inputs: Mapping[str, npt.NDArray[np.generic]]
    output_names: tuple[str, ...]
    rows: int  # in the queue's accounting: the batch size, or 1 when requests never merge
    batch_size: int  # rows as sent (what one run computes when requests never merge)
    deadline: float | None
    enqueued_at: float
    future: asyncio.Future[Arrays]
    next_row: int = 0  # rows already handed to batches
    done_rows: int = 0
    parts: dict[int, Arrays] = field(default_factory=dict)  # start row -> outputs

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


@dataclass(frozen=True)
class _Slice:
    request: _Pending
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class DynamicBatcher:
    """Implements `scheduler.Scheduler`."""

    def __init__(
        self,
        runners: Sequence[Runner],
        policy: BatchPolicy,
        *,
        name: str = "model",
        observer: BatchObserver | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.policy = policy
        self._name = name
        self._runners = list(runners)
        self._idle: list[Runner] = []
        self._observer = observer
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._failure: str | None = None
        self._failure_listeners: list[Callable[[str], None]] = []

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=len(self._runners), thread_name_prefix=f"cnnserve-{self._name}"
        )
        self._idle = list(self._runners)
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name=f"batcher-{self._name}")
        self._dispatcher.add_done_callback(self._supervise)

    async def aclose(self) -> None:
        """Stop admitting, finish every accepted request, then release the threads."""
        self._closing = True
        self._wakeup.set()
        if self._dispatcher is not None:
            # wait (not await): a dispatcher that died has already failed its requests.
            await asyncio.wait([self._dispatcher])
            self._dispatcher = None
        if self._running:
            await asyncio.gather(*self._running)
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None

    # -- introspection (metrics, tests) ------------------------------------------------

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def busy_instances(self) -> int:
        return len(self._runners) - len(self._idle)

    @property
    def queue_capacity(self) -> int:
        return self.policy.max_queue_size

    @property
    def failure(self) -> str | None:
        """Why this batcher stopped serving (its dispatcher died), or None."""
        return self._failure

    def add_failure_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(reason)` runs once, on the event loop, if the dispatcher dies."""
        self._failure_listeners.append(listener)

    # -- supervision -------------------------------------------------------------------

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """The dispatcher ended. After `aclose` that is the plan. Cancelled (the event loop
        is being torn down): nothing will serve, so waiting requests are answered
        UNAVAILABLE. Raised: a bug, and nothing will ever take a request out of the queue:
        fail every waiting request now (one without a deadline would wait forever), refuse
        new ones, and tell the listeners (the repository takes the version out of service)."""
        if task.cancelled():
            self._closing = True
            self._fail_waiting(Unavailable(f"model '{self._name}' is shutting down"))
            return
        error = task.exception()
        if error is None:
            if self._closing:
                return
            error = RuntimeError("the dispatcher returned while serving")
        reason = f"the batcher of model '{self._name}' stopped: {error!r}"
        self._failure = reason
        log.error("%s; failing its queued requests", reason, exc_info=error)
        self._fail_waiting(InternalError(reason))
        for listener in self._failure_listeners:
            listener(reason)

    def _fail_waiting(self, error: CnnserveError) -> None:
        waiting = list(self._queue)
        self._queue.clear()
        self._queued_rows = 0
        for pending in waiting:
            pending.fail(error)

    # -- admission ---------------------------------------------------------------------

    def check_admission(self, batch_size: int, deadline: float | None) -> None:
        """Raise now what `submit` would answer, before the caller spends work (decoding
        images) on a request that would be refused: under overload the refusals stay cheap.
        Advisory only: `submit` checks again."""
        self._admit(batch_size, deadline, asyncio.get_running_loop().time())

    def _admit(self, batch_size: int, deadline: float | None, now: float) -> int:
        """The rows a request takes in the queue, or the error that refuses it."""
        if self._failure is not None:
            self._reject(FAILED)
            raise Unavailable(f"model '{self._name}' is not ready: {self._failure}")
        if self._dispatcher is None or self._closing:
            self._reject(SHUTTING_DOWN)
            raise Unavailable(f"model '{self._name}' is not accepting requests (shutting down)")
        if deadline is not None and now >= deadline:
            self._reject(DEADLINE)
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        rows = batch_size if self.policy.merge else 1
        if rows > self.policy.max_queue_size:
            self._reject(TOO_LARGE)
            raise InvalidArgument(
                f"request has {rows} rows, more than model '{self._name}' can ever queue "
                f"(max_queue_size {self.policy.max_queue_size} rows)"
            )
        if self._queued_rows + rows > self.policy.max_queue_size:
            self._reject(QUEUE_FULL)
            raise ResourceExhausted(
                f"model '{self._name}' queue is full ({self._queued_rows} of "
                f"{self.policy.max_queue_size} rows waiting); retry later"
            )
        return rows

    async def submit(
        self,
        inputs: Mapping[str, npt.NDArray[np.generic]],
        output_names: Sequence[str],
        *,
        batch_size: int,
        deadline: float | None,
    ) -> Arrays:
        loop = asyncio.get_running_loop()
        now = loop.time()
        rows = self._admit(batch_size, deadline, now)
        pending = _Pending(
            inputs=inputs,
            output_names=tuple(output_names),
            rows=rows,
            batch_size=batch_size,
            deadline=deadline,
            enqueued_at=now,
            future=loop.create_future(),
        )
        self._queue.append(pending)
        self._queued_rows += rows
        self._wakeup.set()
        # One timer per request with a deadline, and a plain await: resolving the future
        # wakes this coroutine directly (wait_for + shield would cost three loop hops).
        timer = None if deadline is None else loop.call_at(deadline, self._expire, pending)
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._abandon(pending)  # the client went away (awaiting cancelled the future)
            self._reject(CANCELLED)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, pending: _Pending) -> None:
        """The deadline passed before the request finished: answer now, compute no more."""
        if pending.future.done():
            return
        pending.fail(DeadlineExceeded("the request's deadline passed while it waited in the queue"))
        self._forget(pending)
        self._reject(DEADLINE)

    def _reject(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.rejected(reason)

    def _abandon(self, pending: _Pending) -> None:
        """The client is gone: rows not yet handed out are never computed."""
        if not pending.future.done():
            pending.future.cancel()
        self._forget(pending)

    def _forget(self, pending: _Pending) -> None:
        if pending in self._queue:
            # Rows already in a running batch finish and are discarded; the rest never run.
            self._queue.remove(pending)
            self._queued_rows -= pending.rows - pending.next_row

    # -- batch formation ---------------------------------------------------------------

    def _drop_dead_heads(self, now: float) -> None:
        while self._queue:
            head = self._queue[0]
            if head.started:
                return  # part of it is computing already: finish it
            if head.future.done():  # cancelled by its client
                pass
            elif head.deadline is not None and now >= head.deadline:
                head.fail(DeadlineExceeded("the request's deadline passed before compute"))
                self._reject(DEADLINE)
            else:
                return
            self._queue.popleft()
            self._queued_rows -= head.rows

    def _target_rows(self) -> int:
        policy = self.policy
        target = min(self._queued_rows, policy.max_batch_size)
        fitting = [p for p in policy.preferred_batch_sizes if p <= target]
        return max(fitting) if fitting else target

    def _form_batch(self, now: float) -> list[_Slice]:
        self._drop_dead_heads(now)
        if not self._queue:
            return []
        if not self.policy.merge:
            head = self._queue.popleft()
            self._queued_rows -= head.rows
            head.next_row = head.rows
            return [_Slice(head, 0, head.rows)]
        budget = self._target_rows()
        batch: list[_Slice] = []
        while budget > 0 and self._queue:
            head = self._queue[0]
            if not head.started and (
                head.future.done() or (head.deadline is not None and now >= head.deadline)
            ):
                self._drop_dead_heads(now)
                continue
            take = min(budget, head.rows - head.next_row)
            batch.append(_Slice(head, head.next_row, head.next_row + take))
            head.next_row += take
            budget -= take
            self._queued_rows -= take
            if head.next_row == head.rows:
                self._queue.popleft()
        return batch

    def _should_wait_for_more(self, now: float) -> float:
        """Seconds to hold a partial batch for more rows (0: send it now)."""
        policy = self.policy
        if policy.max_queue_delay_s <= 0 or not policy.merge or self._closing:
            return 0.0
        if self._queued_rows >= policy.max_batch_size:
            return 0.0
        if policy.preferred_batch_sizes and self._queued_rows in policy.preferred_batch_sizes:
            return 0.0
        return max(0.0, self._queue[0].enqueued_at + policy.max_queue_delay_s - now)

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not (self._queue and self._idle):
                if self._closing and not self._queue:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            now = loop.time()
            wait = self._should_wait_for_more(now)
            if wait > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    pass
                else:
                    continue  # something arrived: re-evaluate before the delay is over
                now = loop.time()
            batch = self._form_batch(now)
            if not batch:
                continue
            runner = self._idle.pop()
            task = asyncio.create_task(self._execute(runner, batch, now))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    # -- execution ---------------------------------------------------------------------

    async def _execute(self, runner: Runner, batch: list[_Slice], started: float) -> None:
        loop = asyncio.get_running_loop()
        names = tuple(dict.fromkeys(n for s in batch for n in s.request.output_names))
        failed = False
        compute_s = 0.0
        try:
            assert self._executor is not None
            feeds = _gather_inputs(batch)
            outputs = await loop.run_in_executor(self._executor, runner.run, feeds, list(names))
            compute_s = loop.time() - started
            results = dict(zip(names, outputs, strict=True))
            offset = 0
            for part in batch:
                if self.policy.merge:
                    own = {
                        n: results[n][offset : offset + part.rows]
                        for n in part.request.output_names
                    }
                else:
                    own = {n: results[n] for n in part.request.output_names}
                part.request.finish_part(part.start, own, part.rows)
                offset += part.rows
        except CnnserveError as exc:
            failed = True
            self._fail_parts(batch, exc)
        except Exception as exc:  # a fault in our code or the runner: every part learns why
            failed = True
            log.exception("batch of %d rows failed on model %s", len(batch), self._name)
            self._fail_parts(batch, InternalError(f"batch failed: {exc}"))
        finally:
            self._idle.append(runner)
            self._wakeup.set()
        if self._observer is not None:
            self._observer.batch(
                BatchRecord(
                    rows=sum(p.rows if self.policy.merge else p.request.batch_size for p in batch),
                    requests=len(batch),
                    queue_waits_s=tuple(started - p.request.enqueued_at for p in batch),
                    compute_s=compute_s,
                    failed=failed,
                )
            )

    def _fail_parts(self, batch: list[_Slice], error: CnnserveError) -> None:
        """Every request in a failed batch gets the error as raised (the same instance: no
        rebuilding by constructor). A request split over several batches has failed as a
        whole, so its rows that are still queued are withdrawn and never computed."""
        for part in batch:
            part.request.fail(error)
            self._forget(part.request)


def _gather_inputs(batch: list[_Slice]) -> dict[str, npt.NDArray[np.generic]]:
    """One concatenation per input; a batch that is one whole request is passed as is."""
    first = batch[0]
    if len(batch) == 1 and first.start == 0 and first.stop == first.request.rows:
        return dict(first.request.inputs)
    return {
        name: np.concatenate([part.request.inputs[name][part.start : part.stop] for part in batch])
        for name in first.request.inputs
    }
