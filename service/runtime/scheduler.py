"""The interface between the request path and model execution.

`grpc_api` only ever calls `Scheduler.submit`; the dynamic batcher (batcher.py) implements
it, for batched and unbatched models alike, so the servicer never knows which. Execution
happens in threads owned by the scheduler: the event loop never blocks on
onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.runtime.device_rows import DeviceRows

Arrays = dict[str, npt.NDArray[np.generic]]
# An input as a scheduler takes it: host arrays, or rows already on the model's device
# (images decoded there, service/images/device_decode.py).
Feed = npt.NDArray[np.generic] | DeviceRows
Feeds = Mapping[str, Feed]


class Runner(Protocol):
    """What a scheduler needs from a model: run feeds, return outputs in the given order."""

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]: ...


class Scheduler(Protocol):
    async def start(self) -> None: ...

    # Queue statistics, read by the metrics at scrape time.
    @property
    def queued_rows(self) -> int: ...

    @property
    def busy_instances(self) -> int: ...

    @property
    def queue_capacity(self) -> int: ...

    @property
    def failure(self) -> str | None:
        """Why the scheduler can no longer serve (it refuses every request), or None."""
        ...

    def add_failure_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(reason)` on the event loop when the scheduler stops serving."""
        ...

    def check_admission(self, batch_size: int, deadline: float | None) -> None:
        """Raise the error `submit` would raise for lack of room, without queueing."""
        ...

    async def submit(
        self,
        inputs: Feeds,
        output_names: Sequence[str],
        *,
        batch_size: int,
        deadline: float | None,
    ) -> Arrays:
        """Run one request; `deadline` is on the loop's monotonic clock (`loop.time()`)."""
        ...

    async def aclose(self) -> None:
        """Finish what was accepted, then release threads."""
        ...
