"""The event loop the server runs on: uvloop where it is installed, else asyncio's own.

`cnnserve serve --event-loop asyncio` picks the standard loop; bench/README.md compares the
two (`python -m bench.run --compare event-loop`). The test harness uses this same factory,
so the suite runs on the loop that ships.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """`auto`: uvloop when it is installed; `asyncio`: the standard loop."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
