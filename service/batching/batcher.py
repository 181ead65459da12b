"""The dynamic batcher: one per model version, in front of its onnxruntime instances.

Policy (docs/architecture.md, "The request path"):
- A batch leaves as soon as an instance is free; whatever queued while every instance was
  busy leaves together, up to `max_batch_size` rows. An idle server adds no delay.
- `max_queue_delay_us` > 0 lets a partial batch wait up to that long for more rows;
  `preferred_batch_sizes` cut a batch at the largest preferred size that the queue fills.
- Requests are split at row granularity: one request's rows may span several batches (a
  request larger than `max_batch_size` is split and reassembled), and one batch may carry
  rows of many requests of one shape (batch_queue.py). Each response gets its own rows.
- A batch of several requests that fails is run again one request at a time, once: only
  the requests that fail alone get an error (service/batching/batch_execution.py).
- Admission is bounded in rows (`max_queue_size`): a full queue answers RESOURCE_EXHAUSTED
  at once. Expired and cancelled requests are dropped before compute.
- Models that cannot batch (`merge=False`) go through the same queue, one request a run.

Dispatch is event-driven, without a dispatcher task: a new request, a finished batch or
the end of a queue delay schedules one dispatch (`loop.call_soon`), so requests that
arrive in the same loop turn leave together, and a batch is handed to an idle instance's
thread (service/batching/instances.py) with one queue put. A fault in dispatch is supervised: the
waiting requests fail INTERNAL, the batcher refuses new ones and tells its listeners.
Copies: one `np.concatenate` per input per batch, on the instance's thread (none when a
batch is a single whole request); outputs are sliced as views. Answering the requests of
an executed batch, and the reruns of a failed one, live in service/batching/batch_execution.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from service.batching.batch_execution import BatchExecution
from service.batching.batch_queue import (
    CANCELLED,
    DEADLINE,
    FAILED,
    QUEUE_FULL,
    SHUTTING_DOWN,
    TOO_LARGE,
    BatchObserver,
    BatchPolicy,
    BatchRecord,
    PendingRequest,
    RequestQueue,
    Slice,
    shape_key,
)
from service.batching.instances import INLINE_BELOW_S, InstanceThread
from service.runtime.scheduler import Arrays, Feeds, Runner
from service.tensors.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

# Re-exported: the batcher's public types live with its queue.
__all__ = ["BatchObserver", "BatchPolicy", "BatchRecord", "DynamicBatcher"]

log = logging.getLogger(__name__)

# "Under load": an instance finished a batch this recently (see _hold_one_turn).
HOLD_AFTER_BUSY_S = 0.001
# Weight of the newest batch in the recent rows-per-batch average (see _free_instance):
# after a burst it falls below 2 within about five lone batches.
RECENT_ROWS_WEIGHT = 0.5


class DynamicBatcher:
    """Implements `scheduler.Scheduler`."""

    def __init__(
        self,
        runners: Sequence[Runner],
        policy: BatchPolicy,
        *,
        name: str = "model",
        observer: BatchObserver | None = None,
        inline_below_s: float = INLINE_BELOW_S,
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.policy = policy
        self._name = name
        self._runners = list(runners)
        self._instances: list[InstanceThread] = []
        self._idle: list[InstanceThread] = []
        self._solo: InstanceThread | None = None  # see _free_instance
        self._recent_rows = 1.0  # rows per dispatched batch, recent average
        self._observer = observer
        self._inline_below_s = inline_below_s  # see service/batching/instances.py
        self._queue = RequestQueue(on_expired=lambda: self._reject(DEADLINE))
        self._execution = BatchExecution(
            name=name,
            merge=policy.merge,
            observer=observer,
            forget=self._forget,
            instance_free=self._instance_free,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False  # a dispatch is pending in the loop's ready queue
        self._held_turn = False  # this partial batch already waited one loop turn
        self._last_done = float("-inf")  # loop time an instance last finished a batch
        self._delay: asyncio.TimerHandle | None = None  # the end of a queue delay
        self._started = False
        self._closing = False
        self._drained = asyncio.Event()  # closing, nothing queued, every instance idle
        self._failure: str | None = None
        self._failure_listeners: list[Callable[[str], None]] = []

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._instances = [
            InstanceThread(
                runner, loop, f"cnnserve-{self._name}_{index}", inline_below_s=self._inline_below_s
            )
            for index, runner in enumerate(self._runners)
        ]
        for instance in self._instances:
            instance.start()
        self._idle = list(self._instances)
        solo = self.policy.solo_instance and len(self._instances) > 1
        self._solo = self._instances[-1] if solo else None
        self._started = True

    async def aclose(self) -> None:
        """Stop admitting, finish every accepted request, then stop the instance threads."""
        self._closing = True
        if self._started:
            self._schedule()
            await self._drained.wait()
            self._started = False
        if self._delay is not None:
            self._delay.cancel()
        for instance in self._instances:
            await asyncio.to_thread(instance.stop)
        self._instances, self._idle, self._solo = [], [], None

    # -- introspection (metrics, tests) ------------------------------------------------

    @property
    def queued_rows(self) -> int:
        return self._queue.rows

    @property
    def busy_instances(self) -> int:
        return len(self._instances) - len(self._idle)

    @property
    def queue_capacity(self) -> int:
        return self.policy.max_queue_size

    @property
    def failure(self) -> str | None:
        """Why this batcher stopped serving (its dispatch failed), or None."""
        return self._failure

    def add_failure_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(reason)` runs once, on the event loop, if dispatch fails."""
        self._failure_listeners.append(listener)

    # -- supervision -------------------------------------------------------------------

    def _die(self, error: BaseException) -> None:
        """Dispatch raised: a bug, after which nothing would take a request out of the
        queue. Fail every waiting request now (one without a deadline would wait forever),
        refuse new ones, and tell the listeners (the registry takes the version out of
        service). Batches already on an instance finish and answer."""
        reason = f"the batcher of model '{self._name}' stopped: {error!r}"
        self._failure = reason
        log.error("%s; failing its queued requests", reason, exc_info=error)
        self._queue.fail_all(InternalError(reason))
        for listener in self._failure_listeners:
            listener(reason)
        self._check_drained()

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
        if not self._started or self._closing:
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
        if self._queue.rows + rows > self.policy.max_queue_size:
            self._reject(QUEUE_FULL)
            raise ResourceExhausted(
                f"model '{self._name}' queue is full ({self._queue.rows} of "
                f"{self.policy.max_queue_size} rows waiting); retry later"
            )
        return rows

    async def submit(
        self,
        inputs: Feeds,
        output_names: Sequence[str],
        *,
        batch_size: int,
        deadline: float | None,
    ) -> Arrays:
        loop = asyncio.get_running_loop()
        now = loop.time()
        rows = self._admit(batch_size, deadline, now)
        pending = PendingRequest(
            inputs=inputs,
            output_names=tuple(output_names),
            rows=rows,
            batch_size=batch_size,
            deadline=deadline,
            enqueued_at=now,
            future=loop.create_future(),
            shape=shape_key(inputs) if self.policy.merge else None,
        )
        self._queue.append(pending)
        self._schedule()
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

    def _expire(self, pending: PendingRequest) -> None:
        """The deadline passed before the request finished: answer now, compute no more."""
        if pending.future.done():
            return
        pending.fail(DeadlineExceeded("the request's deadline passed while it waited in the queue"))
        self._forget(pending)
        self._reject(DEADLINE)

    def _reject(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.rejected(reason)

    def _abandon(self, pending: PendingRequest) -> None:
        """The client is gone: rows not yet handed out are never computed."""
        if not pending.future.done():
            pending.future.cancel()
        self._forget(pending)

    def _forget(self, pending: PendingRequest) -> None:
        self._queue.forget(pending)

    # -- dispatch ----------------------------------------------------------------------

    def _schedule(self) -> None:
        """One dispatch at the end of this loop turn, however many events asked for it."""
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        if self._hold_one_turn():
            return
        if self._failure is not None:
            self._check_drained()
            return
        try:
            self._launch()
        except Exception as exc:  # supervised: see _die
            self._die(exc)
            return
        self._check_drained()

    def _hold_one_turn(self) -> bool:
        """Under load (an instance finished a batch within the last millisecond), a partial
        batch waits one more loop turn: the requests whose events are already in that turn
        join it. Measured at c=32 on compute-free models: 8-10 % less server CPU per request
        at 12 and 110 KB, none at 150 KB (bench/README.md); when idle, nothing waits."""
        loop = self._loop
        if self._held_turn or loop is None or not (self._queue and self._idle):
            self._held_turn = False
            return False
        if not self.policy.merge or self._closing:
            return False  # requests that never merge gain nothing from waiting
        if self._queue.head_shape_rows >= self.policy.max_batch_size:
            return False
        if loop.time() - self._last_done >= HOLD_AFTER_BUSY_S:
            return False
        self._held_turn = self._scheduled = True
        loop.call_soon(self._dispatch)
        return True

    def _launch(self) -> None:
        """Hand batches to idle instances while there are both."""
        assert self._loop is not None
        while self._queue and (instance := self._free_instance()) is not None:
            now = self._loop.time()
            wait = self._should_wait_for_more(now)
            if wait > 0:
                if self._delay is None:
                    self._delay = self._loop.call_at(now + wait, self._delay_over)
                return
            batch = self._form_batch(now)
            if not batch:
                continue  # only expired or cancelled requests were at the head
            self._idle.remove(instance)
            if self._solo is not None:  # only the solo instance's choice reads it
                rows = sum(part.rows for part in batch)
                self._recent_rows += RECENT_ROWS_WEIGHT * (rows - self._recent_rows)
            self._execution.run(instance, batch, now)

    def _free_instance(self) -> InstanceThread | None:
        """The instance for the next batch (the one freed last), or None. With a solo
        instance (every core in one session, kept by instances: auto for a quiet service):
        it takes the batch when the service is quiet, so a lone client is answered at the
        speed of all the cores; otherwise the others take the batches. Quiet: every
        instance idle, the queue one batch, and recent batches smaller than the number of
        other instances (they could not all be kept busy). Without that last test, at c=32
        the first request back after a batch took the solo instance alone and the burst
        behind it waited. Solo and the others never run at once: each holds every core."""
        idle, solo = self._idle, self._solo
        if solo is None or not idle:
            return idle[-1] if idle else None
        if solo not in idle:
            return None
        others = len(self._instances) - 1
        quiet = len(idle) == len(self._instances) and self._recent_rows < others
        if quiet and self._queue.is_one_batch(self.policy):
            return solo
        if len(idle) == 1:  # only the solo instance is idle: the others are running
            return None
        return idle[-1] if idle[-1] is not solo else idle[-2]

    def _delay_over(self) -> None:
        self._delay = None
        self._dispatch()

    def _check_drained(self) -> None:
        if self._closing and not self._queue and len(self._idle) == len(self._instances):
            self._drained.set()

    # -- batch formation ---------------------------------------------------------------

    def _form_batch(self, now: float) -> list[Slice]:
        return self._queue.form_batch(now, self.policy)

    def _should_wait_for_more(self, now: float) -> float:
        """Seconds to hold a partial batch for more rows (0: send it now)."""
        policy = self.policy
        if policy.max_queue_delay_s <= 0 or not policy.merge or self._closing:
            return 0.0
        queued = self._queue.head_shape_rows  # what the next batch (the head's shape) can take
        if queued >= policy.max_batch_size:
            return 0.0
        if policy.preferred_batch_sizes and queued in policy.preferred_batch_sizes:
            return 0.0
        return max(0.0, self._queue.head.enqueued_at + policy.max_queue_delay_s - now)

    # -- execution (service/batching/batch_execution.py) ----------------------------------------

    def _instance_free(self, instance: InstanceThread) -> None:
        """An instance has answered its batch (and any reruns): it takes the next one."""
        assert self._loop is not None
        self._idle.append(instance)
        self._last_done = self._loop.time()
        self._dispatch()
