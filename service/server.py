"""Wiring: repository, gRPC server (v2 + health + reflection), shutdown order.

Start: load models, then bind and start the gRPC server, then mark health SERVING.
Stop (reverse dependency order): health NOT_SERVING, stop accepting RPCs and let
in-flight ones finish within the grace period, drain schedulers, release runtimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from service.configuration.settings import ControlMode, ServerSettings, SharedMemory
from service.frontends.grpc_api import InferenceServicer, add_to_server
from service.frontends.http_api import HttpFrontEnd
from service.frontends.security import BearerTokenInterceptor, server_credentials
from service.serving.fleet import Fleet
from service.serving.inference import InferenceCore
from service.serving.loader import SchedulerFactory, VersionLoader, scheduler_factory
from service.serving.poller import RepositoryPoller
from service.serving.repository import ModelRepository
from service.serving.shared_memory import SharedMemoryRegistry
from service.telemetry.gpu_memory import register_gpu_memory
from service.telemetry.metrics import Metrics
from service.v2 import POOL
from service.v2 import grpc_service_pb2 as pb

log = logging.getLogger(__name__)

# After the drain: stop gRPC once no inference has arrived for QUIET_S, or after
# MAX_LINGER_S of clients still sending. Lingering lets clients that give up on UNAVAILABLE
# leave before grpc-core's stop cancels calls no handler has picked up (CANCELLED, not
# retryable; bench/README.md, drain). Clients that keep sending (a proxy still routing
# here, retry policies) only spend attempts on it: behind nginx, a 2 s limit had requests
# need up to 8 attempts, 0.2 s none over 5 (`python -m bench.reliability proxy-stop`).
QUIET_S = 0.1
MAX_LINGER_S = 0.2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Our protocol lives in a private pool (see service.v2); reflection describes health
    from the same pool, so add its file there (adding an identical file again is a no-op)."""
    POOL.AddSerializedFile(health_pb2.DESCRIPTOR.serialized_pb)  # type: ignore[no-untyped-call]
    return POOL


class CnnserveServer:
    def __init__(
        self,
        settings: ServerSettings,
        make_scheduler: SchedulerFactory | None = None,
        registry: CollectorRegistry | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet  # a worker of `--workers N` (service/workers/)
        # Metrics are off only when asked (--no-metrics); the registry is injected so tests
        # and embedders can read it without a process-wide global.
        self.metrics: Metrics | None = None
        if settings.metrics_port is not None:
            self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
            register_gpu_memory(self.metrics.registry)
        loader = VersionLoader(
            make_scheduler or scheduler_factory(batching=settings.batching),
            self.metrics,
            ort_spinning=settings.ort_spinning,
            autotune_budget_s=settings.autotune_budget_s,
            max_decode_pixels=settings.max_decode_pixels,
        )
        self.repository = ModelRepository(
            settings.model_repository,
            loader.load,
            self.metrics,
            control_mode=ControlMode(settings.model_control_mode),
            on_change=self._model_changed,
        )
        self.poller = RepositoryPoller(self.repository)
        # The request path both front ends share (lease, drain, deadline, metrics).
        shared = SharedMemoryRegistry(enabled=settings.shared_memory is SharedMemory.SYSTEM)
        self.core = InferenceCore(self.repository, self.metrics, fleet, shared)
        self._poller: asyncio.Task[None] | None = None
        self._servicer: InferenceServicer | None = None
        self.http: HttpFrontEnd | None = None
        self._metrics_http: WSGIServer | None = None
        self._metrics_thread: threading.Thread | None = None
        self.metrics_port: int | None = None
        self.health = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._ready = False
        self.port: int = 0

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def is_ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        await self.repository.load_all()
        try:
            if self.fleet is not None:  # serve what the other workers serve
                await self.fleet.join(self.repository)
            await self._start_http()
            await self._start_serving()
        except BaseException:
            if self.http is not None:
                await self.http.stop()
            await self.repository.aclose()  # what start acquired, a failed start releases
            raise

    async def _start_http(self) -> None:
        """The KServe v2 REST front end on the same loop and core (--http-port)."""
        settings = self.settings
        if settings.http_port is None and self.fleet is None:
            return  # a worker always has its own loopback REST port: its supervisor's way in
        self.http = HttpFrontEnd(
            self.core,
            is_ready=self.is_ready,
            metrics=self.metrics,
            max_body_bytes=settings.max_message_bytes,
            tls=settings.tls,
            auth_token=settings.auth_token,
            reuse_port=settings.reuse_port,
        )
        try:
            await self.http.start(settings.host, settings.http_port)
        except OSError as exc:
            raise OSError(
                f"cannot serve HTTP on {settings.host}:{settings.http_port}: {exc} "
                '(use --http-port or --no-http; from a checkout: make run ARGS="--http-port 0")'
            ) from exc

    @property
    def http_url(self) -> str:
        scheme = "https" if self.settings.tls is not None else "http"
        port = self.http.port if self.http is not None else 0
        return f"{scheme}://{self.settings.host}:{port}"

    def _bind(self, server: grpc.aio.Server) -> int:
        settings = self.settings
        bind = f"{settings.host}:{settings.port}"
        port = 0
        try:
            if settings.tls is not None:
                port = server.add_secure_port(bind, server_credentials(settings.tls))
            else:
                port = server.add_insecure_port(bind)
        except RuntimeError:  # grpc.aio: "Failed to bind to address ..."
            pass
        if port == 0:
            raise OSError(
                f"cannot serve gRPC on {bind}: the address is in use or not available (use "
                "--port; from a checkout: make run PORT=8011)"
            )
        return port

    async def _start_serving(self) -> None:
        settings = self.settings
        limit = settings.max_message_bytes
        server = grpc.aio.server(
            interceptors=(
                [BearerTokenInterceptor(settings.auth_token)] if settings.auth_token else []
            ),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # One server per port unless asked: grpc-core sets SO_REUSEPORT by default
                # on Linux, so a second server on a taken port bound it silently and took a
                # share of the connections (seen: a second `make run` beside the first).
                ("grpc.so_reuseport", int(settings.reuse_port)),
            ],
        )
        self._servicer = InferenceServicer(self.core, is_ready=self.is_ready)
        add_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
            pool=_reflection_pool(),
        )
        self.port = self._bind(server)
        await server.start()
        self._server = server
        if self.metrics is not None and self.settings.metrics_port is not None:
            try:
                http, thread = start_http_server(
                    self.settings.metrics_port,
                    # a worker's metrics are read by its supervisor, which serves the port
                    "127.0.0.1" if self.fleet is not None else self.settings.host,
                    registry=self.metrics.registry,
                )
            except OSError as exc:
                await server.stop(None)
                raise OSError(
                    f"cannot serve metrics on {self.settings.host}:{self.settings.metrics_port}: "
                    f"{exc} (use --metrics-port or --no-metrics; from a checkout: "
                    'make run ARGS="--metrics-port 0")'
                ) from exc
            self._metrics_http, self._metrics_thread = http, thread
            self.metrics_port = http.server_port
        await self._publish_health()
        self._ready = True
        if self.repository.control_mode is ControlMode.POLL:
            self._poller = asyncio.create_task(
                self.poller.run(settings.poll_interval_s), name="repository-poll"
            )
        log.info("cnnserve listening on %s", self.address)

    async def _publish_health(self) -> None:
        await self.health.set("", SERVING)
        for entry in self.repository.entries():
            status = SERVING if entry.served is not None else NOT_SERVING
            await self.health.set(entry.name, status)

    async def _model_changed(self, name: str, ready: bool) -> None:
        if self._ready:  # at start-up, _publish_health sets every model at once
            await self.health.set(name, SERVING if ready else NOT_SERVING)

    async def aclose(self) -> bool:
        """Graceful: NOT_SERVING, refuse new inferences (UNAVAILABLE), finish the accepted
        ones within the grace period, then stop gRPC, drain the batchers, free the models.
        True when every accepted inference was answered (False: the grace period ran out)."""
        self._ready = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self.health.enter_graceful_shutdown()  # every service reports NOT_SERVING
        deadline = time.monotonic() + self.settings.grace_period_s
        drained = True
        if self._servicer is not None:
            drained = await self._servicer.drain(self.settings.grace_period_s)
            if not drained:
                log.warning("grace period over with inferences still running")
            remaining = max(0.0, deadline - time.monotonic())
            await self.core.quiesce(QUIET_S, min(MAX_LINGER_S, remaining))
        if self.http is not None:  # after the drain: every accepted request was answered
            await self.http.stop()
            self.http = None
        if self._server is not None:
            await self._server.stop(max(0.0, deadline - time.monotonic()))
            self._server = None
        await self.repository.aclose()
        self.core.shared_memory.close()  # unmaps every region still registered
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            if self._metrics_thread is not None:
                self._metrics_thread.join(timeout=5)
            self._metrics_http = None
        return drained
