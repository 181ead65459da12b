"""Waiting on the event loop for a condition, without wall-clock sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], limit: int = 100_000) -> None:
    """Yield to the loop until `condition()` holds; fail after `limit` turns."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")
