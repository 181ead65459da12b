"""Running a formed batch on an instance and answering its requests.

The batcher (batcher.py) decides what runs and when; this module hands a batch to an
instance, gives each request its rows of the outputs (or its error), and tells the observer
about every execution as it really happened.

Failure isolation: a batch is several clients' requests, and one request's values can make
the runtime fail the whole run (a Gather index out of range). So a batch of more than one
request that fails is run again one request at a time, once, on the same instance, before
it takes new work; only the requests that fail alone get an error (the runtime's: the
runner raises INVALID_ARGUMENT where onnxruntime blamed the input, INTERNAL otherwise). A
request split over several batches fails as a whole: its rows still queued are withdrawn.
Every run, the failed batch and each rerun, is one execution in the statistics; a request's
queue wait is counted once, in the batch that failed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from functools import partial

from service.batching.batch_queue import BatchObserver, BatchRecord, PendingRequest, Slice, hand_out
from service.batching.instances import InstanceThread, Outputs
from service.tensors.errors import CnnserveError, InternalError

log = logging.getLogger(__name__)


class BatchExecution:
    """Runs batches on instances for one batcher; `instance_free(instance)` is called on the
    loop once an instance has answered its batch (and any reruns of it)."""

    def __init__(
        self,
        *,
        name: str,
        merge: bool,
        observer: BatchObserver | None,
        forget: Callable[[PendingRequest], None],
        instance_free: Callable[[InstanceThread], None],
    ) -> None:
        self._name = name
        self._merge = merge
        self._observer = observer
        self._forget = forget  # withdraw a failed request's rows from the queue
        self._instance_free = instance_free

    def run(self, instance: InstanceThread, batch: list[Slice], started: float) -> None:
        """`started`: the loop time the batch was formed (its requests' queue waits end)."""
        names = tuple(dict.fromkeys(n for s in batch for n in s.request.output_names))
        instance.run(batch, names, partial(self._finished, batch, names, started))

    def _finished(
        self,
        batch: list[Slice],
        names: tuple[str, ...],
        started: float,
        instance: InstanceThread,
        outputs: Outputs | None,
        error: BaseException | None,
        compute_s: float,
    ) -> None:
        """On the loop, when an instance has run a batch: hand each request its rows."""
        if error is not None and len(batch) > 1:
            self._isolate(batch, names, started, instance, compute_s, error)
            return
        failed = self._answer(batch, names, outputs, error)
        try:
            self._record(batch, compute_s, failed, waits_since=started)
        finally:  # whatever the observer does, the free instance takes the next batch
            self._instance_free(instance)

    def _answer(
        self,
        batch: list[Slice],
        names: tuple[str, ...],
        outputs: Outputs | None,
        error: BaseException | None,
    ) -> bool:
        """Hand out the rows, or fail every part; True when the batch failed."""
        try:
            if error is not None:
                raise error
            assert outputs is not None
            hand_out(batch, dict(zip(names, outputs, strict=True)), merge=self._merge)
            return False
        except CnnserveError as exc:
            self._fail_parts(batch, exc)
        except Exception as exc:  # a fault in our code or the runner: every part learns why
            log.exception("batch of %d rows failed on model %s", len(batch), self._name)
            self._fail_parts(batch, InternalError(f"batch failed: {exc}"))
        return True

    def _fail_parts(self, batch: list[Slice], error: CnnserveError) -> None:
        """Every request in the batch gets the error as raised (the same instance: no
        rebuilding by constructor), and its rows still queued are withdrawn."""
        for part in batch:
            part.request.fail(error)
            self._forget(part.request)

    def _record(
        self, batch: list[Slice], compute_s: float, failed: bool, waits_since: float | None
    ) -> None:
        """Tell the observer about one execution; a rerun (`waits_since` None) adds no
        queue wait: its request waited once, in the batch that failed."""
        if self._observer is None:
            return
        self._observer.batch(
            BatchRecord(
                rows=sum(p.rows if self._merge else p.request.batch_size for p in batch),
                requests=len(batch),
                queue_waits_s=()
                if waits_since is None
                else tuple(waits_since - p.request.enqueued_at for p in batch),
                compute_s=compute_s,
                failed=failed,
            )
        )

    # -- failure isolation -------------------------------------------------------------

    def _isolate(
        self,
        batch: list[Slice],
        names: tuple[str, ...],
        started: float,
        instance: InstanceThread,
        compute_s: float,
        error: BaseException,
    ) -> None:
        log.warning(
            "a batch of %d requests failed on model %s (%s); running each alone",
            len(batch), self._name, error,
        )  # fmt: skip
        try:
            self._record(batch, compute_s, True, waits_since=started)
            if self._observer is not None:
                self._observer.batch_failed()
        finally:
            self._rerun_next(instance, deque(batch), names)

    def _rerun_next(
        self, instance: InstanceThread, parts: deque[Slice], names: tuple[str, ...]
    ) -> None:
        while parts:
            part = parts.popleft()
            if not part.request.future.done():  # not cancelled, expired or failed since
                instance.run([part], names, partial(self._rerun_finished, part, parts, names))
                return
        self._instance_free(instance)

    def _rerun_finished(
        self,
        part: Slice,
        parts: deque[Slice],
        names: tuple[str, ...],
        instance: InstanceThread,
        outputs: Outputs | None,
        error: BaseException | None,
        compute_s: float,
    ) -> None:
        try:
            failed = self._answer([part], names, outputs, error)
            self._record([part], compute_s, failed, waits_since=None)
            if self._observer is not None:
                self._observer.rerun(rescued=not failed)
        finally:
            self._rerun_next(instance, parts, names)
