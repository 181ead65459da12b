"""Waiting on the event loop for a condition, without wall-clock sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Yield to the loop until `condition()` holds; fail once `limit_s` seconds have passed
    on the monotonic clock (a bound on a hang, never a synchronisation)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition never held within {limit_s:g} s")
        await asyncio.sleep(0)
