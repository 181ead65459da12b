"""Each metric moves as it should for a known sequence (batcher + fake runner)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from service.batching.batcher import BatchPolicy, DynamicBatcher
from service.telemetry.gpu_memory import register_gpu_memory
from service.telemetry.metrics import Metrics
from service.tensors.errors import ResourceExhausted
from tests.unit.batching.test_batcher import FakeRunner, rows, submit
from tests.waiting import until


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"model": "m", "version": "1", **labels})
    return 0.0 if value is None else value


async def start(
    registry: CollectorRegistry, runner: FakeRunner, max_queue_size: int = 100
) -> DynamicBatcher:
    runner.bind(asyncio.get_running_loop())
    model_metrics = Metrics(registry, process=False).for_model("m", "1")
    policy = BatchPolicy(max_batch_size=8, max_queue_size=max_queue_size)
    batcher = DynamicBatcher([runner], policy, observer=model_metrics)
    model_metrics.activate(batcher, load_seconds=0.5)
    await batcher.start()
    return batcher


async def test_one_request_one_batch_of_one() -> None:
    registry = CollectorRegistry()
    batcher = await start(registry, FakeRunner())
    await submit(batcher, rows(1))
    await batcher.aclose()
    assert sample(registry, "cnnserve_batch_size_count") == 1
    assert sample(registry, "cnnserve_batch_size_bucket", le="1.0") == 1
    assert sample(registry, "cnnserve_compute_duration_seconds_count") == 1
    assert sample(registry, "cnnserve_queue_duration_seconds_count") == 1
    assert sample(registry, "cnnserve_queue_capacity") == 100


async def test_batch_of_four_lands_in_bucket_four_and_queue_wait_is_measured() -> None:
    registry = CollectorRegistry()
    runner = FakeRunner(gated=True)
    batcher = await start(registry, runner)
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    enqueued = loop.time()
    queued = [asyncio.create_task(submit(batcher, rows(1))) for _ in range(4)]
    await until(lambda: batcher.queued_rows == 4)
    assert sample(registry, "cnnserve_queue_depth") == 4  # read at scrape time
    assert sample(registry, "cnnserve_inflight_batches") == 1
    runner.release()
    await asyncio.gather(first, *queued)
    released_bound = loop.time() - enqueued
    await batcher.aclose()
    assert sample(registry, "cnnserve_batch_size_count") == 2
    assert sample(registry, "cnnserve_batch_size_bucket", le="2.0") == 1  # the first batch
    assert sample(registry, "cnnserve_batch_size_bucket", le="4.0") == 2  # ... and the four
    assert sample(registry, "cnnserve_batch_size_sum") == 5
    # Five waits: the first (~0) and four from enqueue to the start of their batch.
    assert sample(registry, "cnnserve_queue_duration_seconds_count") == 5
    total_wait = sample(registry, "cnnserve_queue_duration_seconds_sum")
    assert 0 < total_wait <= 4 * released_bound
    assert sample(registry, "cnnserve_queue_depth") == 0


async def test_rejections_count_their_reason() -> None:
    registry = CollectorRegistry()
    runner = FakeRunner(gated=True)
    batcher = await start(registry, runner, max_queue_size=2)
    first = asyncio.create_task(submit(batcher, rows(1)))
    await runner.started.wait()
    queued = asyncio.create_task(submit(batcher, rows(2)))
    await until(lambda: batcher.queued_rows == 2)
    with pytest.raises(ResourceExhausted):
        await submit(batcher, rows(1))
    doomed = asyncio.create_task(submit(batcher, rows(1)))  # refused too: queue full
    with pytest.raises(ResourceExhausted):
        await doomed
    runner.release()
    await asyncio.gather(first, queued)
    loop = asyncio.get_running_loop()
    with pytest.raises(Exception, match="deadline"):
        await submit(batcher, rows(1), deadline=loop.time() - 1)
    await batcher.aclose()
    assert sample(registry, "cnnserve_rejections_total", reason="queue_full") == 2
    assert sample(registry, "cnnserve_rejections_total", reason="deadline") == 1
    assert sample(registry, "cnnserve_rejections_total", reason="cancelled") == 0


def test_no_gpu_means_no_gpu_collector() -> None:
    registry = CollectorRegistry()
    if register_gpu_memory(registry):
        pytest.skip("this machine has an NVML GPU")
    assert registry.get_sample_value("cnnserve_gpu_memory_used_bytes", {"gpu": "0"}) is None


def test_batch_failures_and_reruns_are_counted_and_leave_with_their_version() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, process=False)
    bound = metrics.for_model("m", "1")
    metrics.activate(bound)
    bound.batch_failed()
    for rescued in (True, True, False):
        bound.rerun(rescued)
    assert sample(registry, "cnnserve_batch_failures_total") == 1
    assert sample(registry, "cnnserve_batch_reruns_total", outcome="rescued") == 2
    assert sample(registry, "cnnserve_batch_reruns_total", outcome="failed") == 1
    bound.release()
    assert (
        registry.get_sample_value("cnnserve_batch_failures_total", {"model": "m", "version": "1"})
        is None
    )
    assert (
        registry.get_sample_value(
            "cnnserve_batch_reruns_total", {"model": "m", "version": "1", "outcome": "rescued"}
        )
        is None
    )
