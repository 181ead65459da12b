"""The dynamic batcher with a fake runner (no onnxruntime): deterministic, no sleeps.

The fake runner computes y = 2x + 1 and s = row sums, records every batch it sees, and can
be held closed by a gate, so a test can fill the queue while an instance is busy and then
release it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from service import batcher as batcher_module
from service.batcher import BatchPolicy, BatchRecord, DynamicBatcher
from service.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from service.scheduler import Feeds
from tests.waiting import until

POISON = -999.0  # a row holding this value makes the fake runner fail its whole batch


class FakeRunner:
    def __init__(self, *, gated: bool = False) -> None:
        self.batches: list[npt.NDArray[np.float32]] = []
        self._gate = threading.Event()
        if not gated:
            self._gate.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = asyncio.Event()  # set (on the loop) whenever a batch enters run()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def release(self) -> None:
        self._gate.set()

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        x = np.asarray(feeds["x"], dtype=np.float32)
        self.batches.append(x.copy())
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.started.set)
        self._gate.wait(timeout=60)
        if (x == POISON).any():
            raise RuntimeError("poisoned batch")
        outputs = {"y": 2 * x + 1, "s": x.sum(axis=1, keepdims=True)}
        return [outputs[name] for name in output_names]

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def rows(n: int, start: float = 0.0) -> dict[str, npt.NDArray[np.generic]]:
    return {"x": (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + start)}


class Recorder:
    """A BatchObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.records: list[BatchRecord] = []
        self.rejections: list[str] = []

    def batch(self, record: BatchRecord) -> None:
        self.records.append(record)

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


async def make(
    runners: Sequence[FakeRunner], recorder: Recorder | None = None, **policy: object
) -> DynamicBatcher:
    loop = asyncio.get_running_loop()
    for runner in runners:
        runner.bind(loop)
    settings: dict[str, object] = {"max_batch_size": 4, "max_queue_size": 1000, **policy}
    batcher = DynamicBatcher(
        runners,
        BatchPolicy(**settings),  # type: ignore[arg-type]
        observer=recorder,
    )
    await batcher.start()
    return batcher


@pytest.fixture()
async def gated() -> AsyncIterator[tuple[FakeRunner, DynamicBatcher]]:
    runner = FakeRunner(gated=True)
    batcher = await make([runner])
    yield runner, batcher
    runner.release()
    await batcher.aclose()


async def submit(
    batcher: DynamicBatcher,
    inputs: Mapping[str, npt.NDArray[np.generic]],
    deadline: float | None = None,
) -> dict[str, npt.NDArray[np.generic]]:
    return await batcher.submit(inputs, ("y", "s"), batch_size=len(inputs["x"]), deadline=deadline)


def expected(inputs: Mapping[str, npt.NDArray[np.generic]]) -> tuple[np.ndarray, np.ndarray]:
    x = inputs["x"].astype(np.float32)
    return 2 * x + 1, x.sum(axis=1, keepdims=True)


async def test_idle_request_runs_at_once_alone() -> None:
    runner = FakeRunner()
    batcher = await make([runner], max_queue_delay_s=0.0)
    result = await submit(batcher, rows(1))
    np.testing.assert_array_equal(result["y"], expected(rows(1))[0])
    assert runner.sizes == [1]
    await batcher.aclose()


async def test_requests_queued_while_busy_leave_together_up_to_max(
    gated: tuple[FakeRunner, DynamicBatcher],
) -> None:
    runner, batcher = gated
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()  # the only instance is now busy
    waiting = [asyncio.create_task(submit(batcher, rows(1, start=10 * i))) for i in range(10)]
    await until(lambda: batcher.queued_rows == 10)
    runner.release()
    results = await asyncio.gather(first, *waiting)
    assert runner.sizes == [1, 4, 4, 2]
    for i, result in enumerate(results[1:]):
        np.testing.assert_array_equal(result["y"], expected(rows(1, start=10 * i))[0])


async def test_preferred_batch_size_cuts_the_batch() -> None:
    runner = FakeRunner(gated=True)
    batcher = await make([runner], max_batch_size=8, preferred_batch_sizes=(4,))
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    waiting = [asyncio.create_task(submit(batcher, rows(1))) for _ in range(7)]
    await until(lambda: batcher.queued_rows == 7)
    runner.release()
    await asyncio.gather(first, *waiting)
    assert runner.sizes == [1, 4, 3]
    await batcher.aclose()


async def test_queue_delay_is_cut_short_by_a_full_batch() -> None:
    runner = FakeRunner()
    # A delay far longer than the test's timeout: only a full batch can release it.
    batcher = await make([runner], max_batch_size=4, max_queue_delay_s=3600.0)
    results = await asyncio.wait_for(
        asyncio.gather(*(submit(batcher, rows(1, start=i)) for i in range(4))), timeout=60
    )
    assert runner.sizes == [4]
    assert len(results) == 4
    await batcher.aclose()


async def test_thousand_mixed_requests_get_exactly_their_rows() -> None:
    runners = [FakeRunner(), FakeRunner()]
    recorder = Recorder()
    batcher = await make(runners, recorder, max_batch_size=8, max_queue_size=100_000)
    rng = np.random.default_rng(7)
    sizes = [int(n) for n in rng.integers(1, 4, size=1000)]
    for index in range(0, 1000, 97):
        sizes[index] = 8 + 1 + index % 20  # larger than max_batch_size: split and reassembled
    requests = [{"x": rng.standard_normal((n, 3)).astype(np.float32)} for n in sizes]
    results = await asyncio.gather(*(submit(batcher, r) for r in requests))
    for request, result in zip(requests, results, strict=True):
        y, s = expected(request)
        np.testing.assert_array_equal(result["y"], y)
        np.testing.assert_array_equal(result["s"], s)
    seen = [size for runner in runners for size in runner.sizes]
    assert max(seen) <= 8
    assert sum(seen) == sum(sizes)
    assert max(seen) > 1, "no batch ever formed under concurrency"
    assert sum(record.rows for record in recorder.records) == sum(sizes)
    await batcher.aclose()


async def test_queue_full_is_resource_exhausted_at_once(
    gated: tuple[FakeRunner, DynamicBatcher],
) -> None:
    runner, batcher = gated
    batcher.policy = BatchPolicy(max_batch_size=4, max_queue_size=3)
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    queued = [asyncio.create_task(submit(batcher, rows(1))) for _ in range(3)]
    await until(lambda: batcher.queued_rows == 3)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await submit(batcher, rows(1))
    with pytest.raises(InvalidArgument, match="more than model"):
        await submit(batcher, rows(5))
    # The advisory check (run before decoding images) gives the same answer, queues nothing.
    with pytest.raises(ResourceExhausted, match="queue is full"):
        batcher.check_admission(1, None)
    assert batcher.queued_rows == 3
    runner.release()
    await asyncio.gather(first, *queued)  # nothing accepted is lost
    batcher.check_admission(1, None)  # room again


async def test_expired_deadline_is_refused_before_queueing(
    gated: tuple[FakeRunner, DynamicBatcher],
) -> None:
    runner, batcher = gated
    loop = asyncio.get_running_loop()
    with pytest.raises(DeadlineExceeded):
        await submit(batcher, rows(1, start=POISON), deadline=loop.time() - 1)
    assert runner.batches == []


async def test_deadline_passing_in_the_queue_drops_the_request(
    gated: tuple[FakeRunner, DynamicBatcher],
) -> None:
    runner, batcher = gated
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    marked = rows(1, start=5000)
    with pytest.raises(DeadlineExceeded, match="waited in the queue"):
        await submit(batcher, marked, deadline=loop.time() + 0.01)
    assert batcher.queued_rows == 0
    after = asyncio.create_task(submit(batcher, rows(1)))
    runner.release()
    await asyncio.gather(first, after)
    assert not any((batch >= 5000).any() for batch in runner.batches)


async def test_cancelled_request_is_not_run_and_neighbours_are_unaffected(
    gated: tuple[FakeRunner, DynamicBatcher],
) -> None:
    runner, batcher = gated
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    doomed = asyncio.create_task(submit(batcher, rows(2, start=7000)))
    neighbour = asyncio.create_task(submit(batcher, rows(2, start=100)))
    await until(lambda: batcher.queued_rows == 4)
    doomed.cancel()
    await until(lambda: batcher.queued_rows == 2)
    runner.release()
    result = await neighbour
    await first
    np.testing.assert_array_equal(result["y"], expected(rows(2, start=100))[0])
    assert doomed.cancelled()
    assert not any((batch >= 7000).any() for batch in runner.batches)


async def test_runner_failure_fails_only_its_batch(
    gated: tuple[FakeRunner, DynamicBatcher],
) -> None:
    runner, batcher = gated
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    poisoned = [
        asyncio.create_task(submit(batcher, rows(1, start=POISON))),
        asyncio.create_task(submit(batcher, rows(1))),
    ]
    await until(lambda: batcher.queued_rows == 2)
    runner.release()
    await first
    outcomes = await asyncio.gather(*poisoned, return_exceptions=True)
    for outcome in outcomes:  # both shared the poisoned batch
        assert isinstance(outcome, InternalError)
        assert "poisoned batch" in outcome.message
    # The batcher keeps running.
    result = await submit(batcher, rows(2))
    np.testing.assert_array_equal(result["y"], expected(rows(2))[0])


async def test_unbatched_model_runs_each_request_alone() -> None:
    runner = FakeRunner(gated=True)
    batcher = await make([runner], merge=False, max_batch_size=1)
    first = asyncio.create_task(submit(batcher, rows(3)))
    await runner.started.wait()
    others = [asyncio.create_task(submit(batcher, rows(2, start=i))) for i in range(3)]
    await until(lambda: batcher.queued_rows == 3)
    runner.release()
    results = await asyncio.gather(first, *others)
    assert runner.sizes == [3, 2, 2, 2]
    np.testing.assert_array_equal(results[2]["y"], expected(rows(2, start=1))[0])
    await batcher.aclose()


async def test_instances_run_concurrently() -> None:
    runners = [FakeRunner(gated=True), FakeRunner(gated=True)]
    batcher = await make(runners)
    # Submitted together they would share one batch: submit the second once the first runs.
    tasks = [asyncio.create_task(submit(batcher, rows(1)))]
    await until(lambda: batcher.busy_instances == 1)
    tasks.append(asyncio.create_task(submit(batcher, rows(1))))
    await runners[0].started.wait()
    await runners[1].started.wait()
    assert batcher.busy_instances == 2
    for runner in runners:
        runner.release()
    await asyncio.gather(*tasks)
    assert batcher.busy_instances == 0
    await batcher.aclose()


async def test_close_drains_accepted_requests_then_refuses(
    gated: tuple[FakeRunner, DynamicBatcher],
) -> None:
    runner, batcher = gated
    tasks = [asyncio.create_task(submit(batcher, rows(1, start=i))) for i in range(6)]
    await runner.started.wait()
    closing = asyncio.create_task(batcher.aclose())
    await until(lambda: batcher._closing)
    with pytest.raises(Unavailable, match="shutting down"):
        await submit(batcher, rows(1))
    runner.release()
    results = await asyncio.gather(*tasks)
    await closing
    assert len(results) == 6
    assert sum(runner.sizes) == 6


async def test_observer_sees_batch_sizes_and_queue_waits(
    gated: tuple[FakeRunner, DynamicBatcher],
) -> None:
    runner = FakeRunner(gated=True)
    recorder = Recorder()
    batcher = await make([runner], recorder)
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    queued = [asyncio.create_task(submit(batcher, rows(1))) for _ in range(4)]
    await until(lambda: batcher.queued_rows == 4)
    runner.release()
    await asyncio.gather(first, *queued)
    await batcher.aclose()
    assert [r.rows for r in recorder.records] == [1, 4]
    assert [r.requests for r in recorder.records] == [1, 4]
    assert all(wait >= 0 for r in recorder.records for wait in r.queue_waits_s)
    assert not any(r.failed for r in recorder.records)


async def test_a_dead_dispatcher_fails_the_waiting_requests_and_refuses_new_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = FakeRunner(gated=True)
    batcher = await make([runner])
    failures: list[str] = []
    batcher.add_failure_listener(failures.append)
    running = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    waiting = [asyncio.create_task(submit(batcher, rows(1, start=i))) for i in range(3)]
    await until(lambda: batcher.queued_rows == 3)

    def broken(now: float) -> list[object]:
        raise RuntimeError("dispatcher bug")

    batcher._form_batch = broken  # type: ignore[assignment,method-assign]
    runner.release()  # the dispatcher wakes to form the next batch, and dies
    await running  # a batch already in onnxruntime still completes
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    for outcome in outcomes:  # none waits forever: no deadline was set
        assert isinstance(outcome, InternalError)
        assert "dispatcher bug" in outcome.message
    assert batcher.failure is not None and "dispatcher bug" in batcher.failure
    assert failures == [batcher.failure]
    with pytest.raises(Unavailable, match="not ready"):
        await submit(batcher, rows(1))
    logged = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with the traceback
    assert batcher.queued_rows == 0
    await batcher.aclose()  # closing a failed batcher does not raise


class OddError(InternalError):
    """An error whose constructor is not (message): rebuilding it would fail."""

    def __init__(self, device: str, detail: str) -> None:
        super().__init__(f"{device}: {detail}")


class OddRunner(FakeRunner):
    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        super().run(feeds, output_names)
        raise OddError("cuda:0", "device lost")


async def test_a_failed_part_of_a_split_request_withdraws_the_rest() -> None:
    runner = OddRunner(gated=True)
    batcher = await make([runner], max_batch_size=4)
    big = asyncio.create_task(submit(batcher, rows(10)))  # 4 + 4 + 2 rows
    neighbour = asyncio.create_task(submit(batcher, rows(1, start=100)))
    await runner.started.wait()
    await until(lambda: batcher.queued_rows == 7)
    runner.release()
    outcomes = await asyncio.gather(big, neighbour, return_exceptions=True)
    assert isinstance(outcomes[0], OddError) and outcomes[0].message == "cuda:0: device lost"
    # The first part (4 rows) failed; the big request's other 6 rows never ran, only the
    # neighbour's row did (and failed on its own: this runner always fails).
    assert runner.sizes == [4, 1]
    assert (runner.batches[1] >= 100).all()
    assert batcher.queued_rows == 0
    await batcher.aclose()


class FailingObserver(Recorder):
    def batch(self, record: BatchRecord) -> None:
        raise RuntimeError("observer bug")


async def test_a_failing_observer_does_not_stall_the_queue() -> None:
    runner = FakeRunner(gated=True)
    batcher = await make([runner], FailingObserver())
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    queued = [asyncio.create_task(submit(batcher, rows(1, start=i))) for i in range(3)]
    await until(lambda: batcher.queued_rows == 3)
    runner.release()  # the first batch's observer raises; the queued ones still leave
    results = await asyncio.gather(first, *queued)
    assert len(results) == 4 and runner.sizes == [1, 3]
    await batcher.aclose()


async def test_under_load_a_partial_batch_waits_one_loop_turn_and_never_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "Under load" = a batch finished within the window; an hour here, so the test does not
    # depend on how fast this machine runs the first batch.
    monkeypatch.setattr(batcher_module, "HOLD_AFTER_BUSY_S", 3600.0)
    runner = FakeRunner()
    batcher = await make([runner], max_batch_size=8)
    loop = asyncio.get_running_loop()

    async def b_then_c_one_turn_later() -> None:
        first = asyncio.create_task(submit(batcher, rows(1, start=10)))
        later: list[asyncio.Task[object]] = []
        loop.call_soon(lambda: later.append(asyncio.create_task(submit(batcher, rows(1)))))
        await first
        await asyncio.gather(*later)

    await b_then_c_one_turn_later()  # idle (no batch finished yet): B leaves alone at once
    assert runner.sizes == [1, 1]
    await b_then_c_one_turn_later()  # a batch finished just now: B waits one turn for C
    assert runner.sizes == [1, 1, 2]
    await batcher.aclose()
