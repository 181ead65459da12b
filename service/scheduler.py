"""The interface between the request path and model execution.

`grpc_api` only ever calls `Scheduler.submit`; the dynamic batcher (batcher.py) and the
direct, unbatched scheduler below both implement it, so the servicer does not change when
batching is switched on or off. Execution always happens in an executor thread owned by
the scheduler: the event loop never blocks on onnxruntime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.errors import DeadlineExceeded

Arrays = dict[str, npt.NDArray[np.generic]]


class Runner(Protocol):
    """What a scheduler needs from a model: run feeds, return outputs in the given order."""

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], output_names: Sequence[str]
    ) -> list[npt.NDArray[np.generic]]: ...


class Scheduler(Protocol):
    async def start(self) -> None: ...

    async def submit(
        self,
        inputs: Mapping[str, npt.NDArray[np.generic]],
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


class DirectScheduler:
    """Runs each request on its own, as sent: for unbatched models and batching=off."""

    def __init__(self, runner: Runner, *, instances: int = 1, name: str = "model") -> None:
        self._runner = runner
        self._instances = instances
        self._name = name
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=self._instances, thread_name_prefix=f"cnnserve-{self._name}"
        )

    async def submit(
        self,
        inputs: Mapping[str, npt.NDArray[np.generic]],
        output_names: Sequence[str],
        *,
        batch_size: int,
        deadline: float | None,
    ) -> Arrays:
        if self._executor is None:
            raise RuntimeError("scheduler used before start()")
        loop = asyncio.get_running_loop()
        if deadline is not None and loop.time() >= deadline:
            raise DeadlineExceeded("deadline passed before the request was run")
        results = await loop.run_in_executor(
            self._executor, self._runner.run, inputs, list(output_names)
        )
        return dict(zip(output_names, results, strict=True))

    async def aclose(self) -> None:
        if self._executor is not None:
            # wait=True: requests already handed to a thread complete before we return.
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None
