"""The dynamic batcher with a fake runner (no onnxruntime): deterministic, no sleeps.

The fake runner computes y = 2x + 1 and s = row sums, records every batch it sees, and can
be held closed by a gate, so a test can fill the queue while an instance is busy and then
release it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from service.batching import batcher as batcher_module
from service.batching.batch_queue import shape_key
from service.batching.batcher import BatchPolicy, BatchRecord, DynamicBatcher
from service.runtime.device_rows import DeviceRows
from service.runtime.scheduler import Feeds
from service.tensors.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
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
        self.batch_failures = 0
        self.reruns: list[bool] = []  # rescued?

    def batch(self, record: BatchRecord) -> None:
        self.records.append(record)

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)

    def batch_failed(self) -> None:
        self.batch_failures += 1

    def rerun(self, rescued: bool) -> None:
        self.reruns.append(rescued)


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


async def test_a_poisoned_request_fails_alone_and_its_batch_neighbours_answer() -> None:
    runner = FakeRunner(gated=True)
    recorder = Recorder()
    batcher = await make([runner], recorder, max_batch_size=8)
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    inputs = [rows(1, start=POISON if i == 3 else 10 * i) for i in range(8)]
    queued = [asyncio.create_task(submit(batcher, x)) for x in inputs]
    await until(lambda: batcher.queued_rows == 8)
    runner.release()
    await first
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    for index, (x, outcome) in enumerate(zip(inputs, outcomes, strict=True)):
        if index == 3:
            assert isinstance(outcome, InternalError)
            assert "poisoned batch" in outcome.message
        else:
            assert isinstance(outcome, dict)
            np.testing.assert_array_equal(outcome["y"], expected(x)[0])
    # Executions as they happened: the lone first, the batch of 8 that failed, 8 reruns.
    assert runner.sizes == [1, 8] + [1] * 8
    assert [(r.rows, r.failed) for r in recorder.records] == (
        [(1, False), (8, True)] + [(1, i == 3) for i in range(8)]
    )
    assert sum(len(r.queue_waits_s) for r in recorder.records) == 9  # one wait per request
    assert recorder.batch_failures == 1
    assert recorder.reruns == [i != 3 for i in range(8)]
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


def wide_rows(n: int, width: int, start: float = 0.0, dtype: type = np.float32) -> dict[str, Any]:
    return {"x": (np.arange(n * width).reshape(n, width) + start).astype(dtype)}


async def test_requests_of_other_shapes_never_share_a_batch_and_keep_their_place() -> None:
    runner = FakeRunner(gated=True)
    batcher = await make([runner], max_batch_size=8)
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    # Widths 3 and 5, and width 3 in float64: three shapes, interleaved.
    inputs = [
        wide_rows(1, 3, 0), wide_rows(2, 5, 10), wide_rows(1, 3, 20),
        wide_rows(1, 3, 25, np.float64), wide_rows(1, 5, 30), wide_rows(2, 3, 40),
    ]  # fmt: skip
    queued = [asyncio.create_task(submit(batcher, x)) for x in inputs]
    await until(lambda: batcher.queued_rows == 8)
    runner.release()
    results = await asyncio.gather(first, *queued)
    for x, result in zip(inputs, results[1:], strict=True):
        np.testing.assert_array_equal(result["y"], 2 * x["x"].astype(np.float32) + 1)
        np.testing.assert_array_equal(result["s"], x["x"].astype(np.float32).sum(1, keepdims=True))
    # The head (width 3) sets the first batch; width 5 leads the next, then float64.
    assert [(len(b), b.shape[1]) for b in runner.batches] == [(1, 3), (4, 3), (3, 5), (1, 3)]
    assert runner.batches[3][0, 0] == 25
    assert batcher.queued_rows == 0
    await batcher.aclose()


async def test_preferred_sizes_count_only_rows_of_the_heads_shape() -> None:
    runner = FakeRunner(gated=True)
    batcher = await make([runner], max_batch_size=8, preferred_batch_sizes=(2,))
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    widths = [3, 5, 3, 3, 5]
    queued = [
        asyncio.create_task(submit(batcher, wide_rows(1, w, i))) for i, w in enumerate(widths)
    ]
    await until(lambda: batcher.queued_rows == 5)
    runner.release()
    await asyncio.gather(first, *queued)
    # A3 A3 | B5 B5 (the older width-5 request leads once the head's batch has gone) | A3
    assert [(len(b), b.shape[1]) for b in runner.batches] == [(1, 3), (2, 3), (2, 5), (1, 3)]
    await batcher.aclose()


async def test_a_split_request_of_another_shape_is_reassembled_in_order() -> None:
    runner = FakeRunner(gated=True)
    batcher = await make([runner], max_batch_size=4)
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    big = wide_rows(10, 5, 100)
    inputs = [wide_rows(1, 3, 0), big, wide_rows(2, 3, 50)]
    queued = [asyncio.create_task(submit(batcher, x)) for x in inputs]
    await until(lambda: batcher.queued_rows == 13)
    runner.release()
    results = await asyncio.gather(first, *queued)
    np.testing.assert_array_equal(results[2]["y"], 2 * big["x"] + 1)
    assert [(len(b), b.shape[1]) for b in runner.batches] == [
        (1, 3), (3, 3), (4, 5), (4, 5), (2, 5),
    ]  # fmt: skip
    await batcher.aclose()


class StepRunner(FakeRunner):
    """Runs one batch per `allow()`ed step; `calls` counts the runs that have begun."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self._steps = threading.Semaphore(0)

    def allow(self, steps: int) -> None:
        for _ in range(steps):
            self._steps.release()

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        self.calls += 1
        assert self._steps.acquire(timeout=60)
        return super().run(feeds, output_names)


async def test_a_request_cancelled_before_its_rerun_is_not_run_again() -> None:
    runner = StepRunner()
    recorder = Recorder()
    # Never inline: a run that waits for its step must not hold the event loop.
    batcher = DynamicBatcher(
        [runner], BatchPolicy(max_batch_size=4, max_queue_size=100), observer=recorder,
        inline_below_s=0.0,
    )  # fmt: skip
    await batcher.start()
    first = asyncio.create_task(submit(batcher, rows(1)))
    await until(lambda: runner.calls == 1)
    poisoned = asyncio.create_task(submit(batcher, rows(1, start=POISON)))
    doomed = asyncio.create_task(submit(batcher, rows(1, start=7000)))
    fine = asyncio.create_task(submit(batcher, rows(1, start=5)))
    await until(lambda: batcher.queued_rows == 3)
    runner.allow(2)  # the first request, then the batch of three (which fails)
    await until(lambda: runner.calls == 3)  # the poisoned request's rerun is waiting
    doomed.cancel()
    runner.allow(10)
    await first
    outcomes = await asyncio.gather(poisoned, doomed, fine, return_exceptions=True)
    assert isinstance(outcomes[0], InternalError)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    answer = outcomes[2]
    assert isinstance(answer, dict)
    np.testing.assert_array_equal(answer["y"], expected(rows(1, start=5))[0])
    assert runner.sizes == [1, 3, 1, 1]  # the cancelled request did not run alone
    assert recorder.reruns == [False, True]
    await batcher.aclose()


def test_the_shape_key_ignores_input_order_and_where_pixels_live() -> None:
    a, b = np.zeros((2, 4), np.float32), np.zeros((3, 5), np.int64)
    assert shape_key({"a": a, "b": b}) == shape_key({"b": b[:1], "a": a[:1]})  # rows differ
    assert shape_key({"a": a}) != shape_key({"a": a.astype(np.float64)})
    assert shape_key({"a": a}) != shape_key({"a": np.zeros((2, 5), np.float32)})
    # Rows decoded on the device batch with host uint8 pixels of the same size.
    device = DeviceRows.allocate((1, 8, 8, 3), "cpu", 0)
    assert shape_key({"image": device}) == shape_key({"image": np.zeros((4, 8, 8, 3), np.uint8)})


async def test_a_queue_delay_ends_when_the_heads_shape_fills_a_batch_not_another() -> None:
    runner = FakeRunner()
    # A delay far longer than the test's timeout: only a full batch of one shape leaves.
    batcher = await make([runner], max_batch_size=2, max_queue_delay_s=3600.0)
    a1 = asyncio.create_task(submit(batcher, wide_rows(1, 3, 0)))
    b1 = asyncio.create_task(submit(batcher, wide_rows(1, 5, 10)))
    await until(lambda: batcher.queued_rows == 2)
    assert runner.sizes == []  # one row of each shape: neither batch is full
    a2 = asyncio.create_task(submit(batcher, wide_rows(1, 3, 20)))
    await asyncio.wait_for(asyncio.gather(a1, a2), timeout=60)
    assert [(len(b), b.shape[1]) for b in runner.batches] == [(2, 3)]
    assert not b1.done() and batcher.queued_rows == 1
    b2 = asyncio.create_task(submit(batcher, wide_rows(1, 5, 30)))
    await asyncio.wait_for(asyncio.gather(b1, b2), timeout=60)
    assert [(len(b), b.shape[1]) for b in runner.batches] == [(2, 3), (2, 5)]
    await batcher.aclose()
