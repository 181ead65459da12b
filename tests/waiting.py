"""Waiting on the event loop for a condition, without wall-clock sleeps."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families


async def until(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Yield to the loop until `condition()` holds; fail once `limit_s` seconds have passed
    on the monotonic clock (a bound on a hang, never a synchronisation)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition never held within {limit_s:g} s")
        await asyncio.sleep(0)


def until_queued(metrics_url: str, rows: int, model: str = "digits") -> None:
    """Until the batcher holds `rows` rows in its queue, read from /metrics (real scrapes,
    bounded)."""
    depth = -1.0
    for _ in range(2000):
        with urllib.request.urlopen(metrics_url, timeout=10) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cnnserve_queue_depth" and sample.labels["model"] == model:
                    depth = sample.value
        if depth == rows:
            return
        time.sleep(0.005)  # poll interval
    raise AssertionError(f"the queue never held {rows} rows (last read {depth})")
