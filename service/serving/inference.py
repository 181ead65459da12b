"""The request path every front end shares: lease, drain, decode, deadline, run, encode,
count. Protocol-free: the gRPC servicer and the HTTP front end pass in how to decode
their request and encode the answer, and map the errors this raises at their own boundary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from service.batching.deadlines import TIMEOUT_PARAMETER, request_deadline
from service.serving.fleet import Fleet
from service.serving.model import ServedModel
from service.serving.repository import ModelRepository
from service.serving.shared_memory import SharedMemoryRegistry
from service.telemetry.metrics import UNKNOWN_MODEL, Metrics
from service.tensors.errors import CnnserveError, Code, Unavailable
from service.tensors.records import DecodedRequest, NamedOutputs

Answer = TypeVar("Answer")
Decode = Callable[[ServedModel], DecodedRequest]
Encode = Callable[[ServedModel, DecodedRequest, NamedOutputs], Answer]


class InferenceCore:
    """One per server: the front ends call `infer`; the server calls `drain`/`quiesce`."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: Metrics | None = None,
        fleet: Fleet | None = None,
        shared_memory: SharedMemoryRegistry | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        # Triton's system shared memory regions (off unless --shared-memory system).
        self.shared_memory = shared_memory or SharedMemoryRegistry()
        # A worker of `--workers N`: repository control and statistics span every worker.
        self.fleet = fleet
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_arrival = 0.0  # time.monotonic() of the latest inference

    async def infer(
        self,
        model_name: str,
        model_version: str,
        decode: Decode,
        encode: Encode[Answer],
        time_remaining: float | None,
        protocol: str,
    ) -> Answer:
        """One inference: the lease (a swap or unload of this version waits for it), the
        drain check, the front end's decode, the deadline, the run and the encode."""
        started = self._last_arrival = time.monotonic()
        model: ServedModel | None = None
        rows = 0
        code = Code.INTERNAL
        self._in_flight += 1
        self._idle.clear()
        try:
            model = self.repository.get(model_name, model_version)
            model.acquire()
            try:
                if self.draining:  # counted like any other answer (code UNAVAILABLE)
                    raise Unavailable(
                        "the server is shutting down; send the request to another replica"
                    )
                decoded = decode(model)
                rows = decoded.batch_size
                deadline = request_deadline(
                    time_remaining,
                    decoded.parameters.get(TIMEOUT_PARAMETER),
                    model.config.dynamic_batching.default_timeout_us,
                )
                answer = encode(model, decoded, await model.infer(decoded, deadline=deadline))
            finally:
                model.release()
            code = Code.OK
            return answer
        except CnnserveError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = Code.CANCELLED
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
            self._record(model, code, protocol, rows, time.monotonic() - started)

    def _record(
        self, model: ServedModel | None, code: Code, protocol: str, rows: int, seconds: float
    ) -> None:
        if self.metrics is None:
            return
        # Unknown model names are not labels (a client could grow the series without bound).
        name, version = (model.name, str(model.version)) if model else (UNKNOWN_MODEL, "")
        self.metrics.request_finished(name, version, code.value, protocol, seconds)
        if model is not None and model.metrics is not None:
            model.metrics.finished(code is Code.OK, rows, seconds)

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new inferences with UNAVAILABLE (retryable: they never ran) and wait for
        the accepted ones to finish; False if some were still running after `timeout_s`."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def quiesce(self, quiet_s: float, limit_s: float) -> None:
        """While draining: keep answering UNAVAILABLE until no inference has arrived for
        `quiet_s` (at most `limit_s`). Stopping a server cancels calls that arrived but
        that no handler has picked up yet (CANCELLED, not the retryable UNAVAILABLE);
        waiting for the clients to go elsewhere first avoids that race."""
        end = time.monotonic() + limit_s
        while (now := time.monotonic()) < end:
            quiet_for = now - self._last_arrival
            if quiet_for >= quiet_s:
                return
            await asyncio.sleep(min(quiet_s - quiet_for, end - now))  # a timer, by design
