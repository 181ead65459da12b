"""Batches cheaper than the thread hand-off run on the event loop (service/batching/instances.py).

Where a batch ran is read from the thread that called the runner; the threshold is set to
its extremes so the outcome does not depend on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from service.batching.batcher import BatchPolicy, DynamicBatcher
from service.runtime.scheduler import Feeds
from service.tensors.errors import InternalError

POISON = -1.0


class ThreadRecordingRunner:
    """y = 2x; remembers the thread of every run; a POISON row fails the batch."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        self.threads.append(threading.current_thread().name)
        x = np.asarray(feeds["x"], dtype=np.float32)
        if (x == POISON).any():
            raise RuntimeError("poisoned batch")
        return [2 * x for _ in output_names]


async def one_at_a_time(inline_below_s: float, values: Sequence[float]) -> list[object]:
    runner = ThreadRecordingRunner()
    batcher = DynamicBatcher(
        [runner],
        BatchPolicy(max_batch_size=4, max_queue_size=100),
        name="inline",
        inline_below_s=inline_below_s,
    )
    await batcher.start()
    answers: list[object] = []
    try:
        for value in values:
            x = np.full((1, 3), value, np.float32)
            try:
                answers.append(await batcher.submit({"x": x}, ("y",), batch_size=1, deadline=None))
            except InternalError as exc:
                answers.append(exc)
    finally:
        await batcher.aclose()
    return [runner.threads, *answers]


async def test_after_the_first_measured_batch_a_cheap_model_runs_on_the_loop() -> None:
    threads, *answers = await one_at_a_time(float("inf"), [1.0, 2.0, 3.0])
    loop_thread = threading.current_thread().name
    # The first batch has no estimate yet: the instance's thread measures it.
    assert threads == ["cnnserve-inline_0", loop_thread, loop_thread]
    for value, answer in zip([1.0, 2.0, 3.0], answers, strict=True):
        assert isinstance(answer, dict)
        np.testing.assert_array_equal(answer["y"], np.full((1, 3), 2 * value, np.float32))


async def test_a_model_slower_than_the_threshold_never_runs_on_the_loop() -> None:
    threads, *_ = await one_at_a_time(0.0, [1.0, 2.0, 3.0])
    assert threads == ["cnnserve-inline_0"] * 3


async def test_a_batch_failing_on_the_loop_fails_only_itself() -> None:
    threads, *answers = await one_at_a_time(float("inf"), [1.0, POISON, 3.0])
    assert isinstance(threads, list) and threads[1] == threading.current_thread().name
    assert isinstance(answers[0], dict)
    assert isinstance(answers[1], InternalError) and "poisoned batch" in answers[1].message
    assert isinstance(answers[2], dict)


async def test_requests_batched_on_the_loop_get_their_own_rows() -> None:
    runner = ThreadRecordingRunner()
    batcher = DynamicBatcher(
        [runner], BatchPolicy(max_batch_size=2, max_queue_size=100), inline_below_s=float("inf")
    )
    await batcher.start()
    try:
        x = np.ones((1, 3), np.float32)
        await batcher.submit({"x": x}, ("y",), batch_size=1, deadline=None)  # measured
        results = await asyncio.gather(
            *(batcher.submit({"x": x * i}, ("y",), batch_size=1, deadline=None) for i in range(5))
        )
    finally:
        await batcher.aclose()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], 2 * x * i)
