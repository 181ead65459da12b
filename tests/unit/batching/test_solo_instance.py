"""The solo instance (issue 26): with `BatchPolicy.solo_instance` the batcher's last runner
holds every core. It takes a batch that is all the queued work while every instance is
idle; the other instances take the rest; the two sides never run at once. Fake runners
held by gates, no onnxruntime, no sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from service.batching.batcher import BatchPolicy, DynamicBatcher
from service.runtime.scheduler import Feeds
from tests.unit.batching.test_batcher import FakeRunner, expected, rows, submit
from tests.waiting import until


class Overlap:
    """Which runners were inside run() together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running: set[str] = set()
        self.seen_together: list[set[str]] = []


class ProbedRunner(FakeRunner):
    def __init__(self, name: str, overlap: Overlap, *, gated: bool = False) -> None:
        super().__init__(gated=gated)
        self.name, self.overlap = name, overlap

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        with self.overlap._lock:
            self.overlap.running.add(self.name)
            self.overlap.seen_together.append(set(self.overlap.running))
        try:
            return super().run(feeds, output_names)
        finally:
            with self.overlap._lock:
                self.overlap.running.discard(self.name)


async def make(runners: Sequence[FakeRunner], max_batch_size: int = 2) -> DynamicBatcher:
    loop = asyncio.get_running_loop()
    for runner in runners:
        runner.bind(loop)
    policy = BatchPolicy(max_batch_size=max_batch_size, max_queue_size=100, solo_instance=True)
    # inline_below_s=0: every batch goes to its instance's thread, as a real model's does
    batcher = DynamicBatcher(runners, policy, inline_below_s=0.0)
    await batcher.start()
    return batcher


async def test_a_lone_request_runs_on_the_solo_instance() -> None:
    overlap = Overlap()
    deep = [ProbedRunner("a", overlap), ProbedRunner("b", overlap)]
    solo = ProbedRunner("solo", overlap)
    batcher = await make([*deep, solo])
    for start in (0.0, 10.0, 20.0):  # one client, one request at a time
        result = await submit(batcher, rows(1, start))
        np.testing.assert_array_equal(result["y"], expected(rows(1, start))[0])
    assert solo.sizes == [1, 1, 1] and deep[0].sizes == deep[1].sizes == []
    await batcher.aclose()


async def test_work_queued_behind_the_solo_run_goes_to_the_others() -> None:
    overlap = Overlap()
    deep = [ProbedRunner("a", overlap), ProbedRunner("b", overlap)]
    solo = ProbedRunner("solo", overlap, gated=True)
    batcher = await make([*deep, solo])
    first = asyncio.ensure_future(submit(batcher, rows(1)))
    await solo.started.wait()
    later = [asyncio.ensure_future(submit(batcher, rows(1, 10.0 * k))) for k in (1, 2, 3)]
    await until(lambda: batcher.queued_rows == 3)
    assert batcher.busy_instances == 1  # the solo run holds every core: nothing else starts
    solo.release()
    await first
    results = await asyncio.gather(*later)
    for k, result in zip((1, 2, 3), results, strict=True):
        np.testing.assert_array_equal(result["y"], expected(rows(1, 10.0 * k))[0])
    # 3 rows are more than one batch (max 2): the two instances share them, solo waits
    assert solo.sizes == [1]
    assert sorted(deep[0].sizes + deep[1].sizes) == [1, 2]
    assert not any("solo" in together and len(together) > 1 for together in overlap.seen_together)
    await batcher.aclose()


async def test_the_solo_instance_never_starts_while_another_runs() -> None:
    overlap = Overlap()
    deep = [ProbedRunner("a", overlap, gated=True), ProbedRunner("b", overlap, gated=True)]
    solo = ProbedRunner("solo", overlap)
    batcher = await make([*deep, solo])
    busy = asyncio.ensure_future(submit(batcher, rows(3)))  # two batches: both instances
    await until(lambda: batcher.busy_instances == 2)
    lone = asyncio.ensure_future(submit(batcher, rows(1, 50.0)))
    await until(lambda: batcher.queued_rows == 1)
    assert batcher.busy_instances == 2  # the lone request waits: solo needs every core
    for runner in deep:
        runner.release()
    np.testing.assert_array_equal((await busy)["y"], expected(rows(3))[0])
    np.testing.assert_array_equal((await lone)["y"], expected(rows(1, 50.0))[0])
    assert not any("solo" in together and len(together) > 1 for together in overlap.seen_together)
    await batcher.aclose()


async def test_without_the_policy_the_last_runner_is_an_ordinary_instance() -> None:
    runners = [FakeRunner(gated=True), FakeRunner(gated=True)]
    loop = asyncio.get_running_loop()
    for runner in runners:
        runner.bind(loop)
    batcher = DynamicBatcher(runners, BatchPolicy(max_batch_size=2, max_queue_size=100))
    await batcher.start()
    first = asyncio.ensure_future(submit(batcher, rows(1)))
    await until(lambda: batcher.busy_instances == 1)
    second = asyncio.ensure_future(submit(batcher, rows(1, 5.0)))
    await until(lambda: batcher.busy_instances == 2)  # side by side
    for runner in runners:
        runner.release()
    await asyncio.gather(first, second)
    await batcher.aclose()


async def test_after_large_batches_a_lone_request_goes_to_the_others_until_it_is_quiet() -> None:
    """Recent batches of several rows mean load: the next lone batch is not given the
    solo instance (at c=32 it would hold every core while the burst behind it waits)."""
    overlap = Overlap()
    deep = [ProbedRunner("a", overlap), ProbedRunner("b", overlap)]
    solo = ProbedRunner("solo", overlap)
    batcher = await make([*deep, solo], max_batch_size=4)
    await submit(batcher, rows(4))  # quiet so far: one batch, all of it on solo
    assert solo.sizes == [4]
    await submit(batcher, rows(1, 10.0))  # recent batches average 2.5 rows: load
    assert solo.sizes == [4] and deep[0].sizes + deep[1].sizes == [1]
    await submit(batcher, rows(1, 20.0))  # 1.75: quiet again
    assert solo.sizes == [4, 1]
    await batcher.aclose()
