"""Test harness: a real CnnserveServer on an ephemeral loopback port, in its own thread.

The server runs on its own event loop so that synchronous clients (tritonclient.grpc,
plain grpc stubs) can drive it from the test thread. Start-up and shutdown are awaited
through futures, never sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import subprocess
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from service.batching.batcher import BatchObserver, DynamicBatcher
from service.configuration.model_config import ModelConfig
from service.configuration.settings import ServerSettings
from service.eventloop import loop_factory
from service.runtime.onnx_runner import OnnxRunner
from service.runtime.scheduler import Feeds, Runner, Scheduler
from service.server import CnnserveServer
from service.serving.loader import SchedulerFactory, batch_policy
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODELS = REPO_ROOT / "models"


class ServerThread:
    def __init__(self, server: CnnserveServer) -> None:
        self.server = server
        self.loop = loop_factory()()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return self.server.address

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.call(self.server.start())

    def stop(self) -> None:
        try:
            self.call(self.server.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()


@contextmanager
def running_server(
    repository: Path = EXAMPLE_MODELS,
    make_scheduler: SchedulerFactory | None = None,
    grace_period_s: float = 5.0,
    **overrides: Any,
) -> Iterator[ServerThread]:
    """`overrides`: any other ServerSettings field (control mode, TLS, token, limits)."""
    settings = ServerSettings(
        model_repository=repository,
        host="127.0.0.1",
        port=0,
        grace_period_s=grace_period_s,
        metrics_port=0,
        **{"http_port": 0, **overrides},
    )
    handle = ServerThread(CnnserveServer(settings, make_scheduler))
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


class GatedRunner:
    """Wraps a real runner; holds every run until `release()` (to fill a queue in tests)."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.rows_seen: list[int] = []

    def release(self) -> None:
        self.gate.set()

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        self.rows_seen.append(len(next(iter(feeds.values()))))
        self.entered.set()
        self.gate.wait(timeout=120)
        return self.inner.run(feeds, output_names)


def gated_scheduler(gates: list[GatedRunner], *, every_instance: bool = False) -> SchedulerFactory:
    """A scheduler factory whose runners are gated; the gates are appended to `gates`.
    One instance per model (whatever instances: auto chose, a test holds one gate), or
    with `every_instance` one gate per instance."""

    def make(
        config: ModelConfig, runners: Sequence[OnnxRunner], observer: BatchObserver | None
    ) -> Scheduler:
        wrapped = [GatedRunner(runner) for runner in (runners if every_instance else runners[:1])]
        gates.extend(wrapped)
        return DynamicBatcher(wrapped, batch_policy(config), name=config.name, observer=observer)

    return make


def free_port() -> int:
    """A loopback port that was free a moment ago (for processes that need a fixed one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def spawn_server(
    command: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start `cnnserve serve` as its own process; return it and the address it printed."""
    process = subprocess.Popen(
        list(command),
        cwd=REPO_ROOT,
        env=None if env is None else dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # blocks until the server prints; no sleeps
        if line.startswith("cnnserve listening on "):
            return process, line.split()[-1]
    process.wait()
    raise AssertionError(f"the server exited ({process.returncode}) before listening")


def model_parameters(address: str, model: str) -> dict[str, str | int]:
    """ModelMetadata's parameters (tritonclient's proto has none: our own stub)."""
    with grpc.insecure_channel(address) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            pb.ModelMetadataRequest(name=model)
        )
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
        for key, value in answer.parameters.items()
    }
