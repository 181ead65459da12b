"""The supervisor's two HTTP servers (aiohttp, on its own event loop):

- control, on 127.0.0.1 at a free port, for its workers only (a per-run secret): workers
  register here, and hand over the repository calls that span the fleet. Each call goes to
  every live worker's own loopback REST port at once and answers when all have answered.
- metrics, on the server's metrics port: one scrape reads every worker's /metrics and
  merges them (service/workers/merge.py).

Why the supervisor merges the workers' registries rather than prometheus_client's
multiprocess mode: that mode does not run custom collectors (our loop histograms and the GPU
memory collector are collectors), cannot remove a series (an unloaded version's labels), has
no per-process gauges for a replaced process without files piling up in its directory, and
needs an environment variable set before prometheus_client is imported. Scraping each
worker's own registry keeps every metric exactly as one process exposes it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from service.frontends.http_status import CODE_HEADER, error_response
from service.tensors.errors import Code
from service.workers.link import SECRET_HEADER
from service.workers.merge import (
    SampleKey,
    agree_index,
    countable_samples,
    merge_metrics,
    requests_per_worker,
    sum_statistics,
)

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Worker:
    """A registered (serving) worker: where the supervisor reaches it."""

    slot: int
    pid: int
    url: str  # its own loopback REST port
    metrics_url: str | None
    banner: list[str]
    last_scrape: list[Metric] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    slot: int
    status: int
    code: str
    document: Any


class Fleet:
    """The workers that serve now, and what the supervisor keeps across their replacement:
    the loads and unloads done so far (a new worker repeats them) and the counts of
    workers gone (so merged counters never go down)."""

    def __init__(self, secret: str, auth_token: str | None) -> None:
        self.secret = secret
        self.workers: dict[int, Worker] = {}
        self.registered = asyncio.Condition()
        self.steps: dict[str, str] = {}  # model -> "load" | "unload", latest last
        self.carried: dict[SampleKey, float] = {}
        self.restarts = 0
        headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=None)
        )

    async def aclose(self) -> None:
        await self._session.close()

    def gone(self, slot: int) -> None:
        """A worker exited: keep what it had counted, stop asking it."""
        worker = self.workers.pop(slot, None)
        if worker is not None:
            for key, value in countable_samples(worker.last_scrape).items():
                self.carried[key] = self.carried.get(key, 0.0) + value

    async def ask_all(self, method: str, path: str, **kwargs: Any) -> list[Answer]:
        workers = list(self.workers.values())
        return list(await asyncio.gather(*(self._ask(w, method, path, **kwargs) for w in workers)))

    async def _ask(self, worker: Worker, method: str, path: str, **kwargs: Any) -> Answer:
        try:
            async with self._session.request(method, worker.url + path, **kwargs) as answer:
                document = await answer.json(content_type=None)
                # aiohttp's own answers (404 path, 405) carry no code: not an OK
                fallback = Code.OK if answer.status == 200 else Code.INTERNAL
                code = answer.headers.get(CODE_HEADER, fallback.value)
                return Answer(worker.slot, answer.status, code, document)
        except (aiohttp.ClientError, ValueError) as exc:  # it died while asked
            message = f"not reachable ({exc})"
            return Answer(worker.slot, 503, Code.UNAVAILABLE.value, {"error": message})

    async def scrape(self) -> tuple[list[Metric], dict[int, float]]:
        async def read(worker: Worker) -> None:
            if worker.metrics_url is None:
                return
            try:
                async with self._session.get(worker.metrics_url) as answer:
                    text = await answer.text()
            except aiohttp.ClientError:
                return  # gone between the list and the read: its last scrape is carried
            worker.last_scrape = list(text_string_to_metric_families(text))

        await asyncio.gather(*(read(worker) for worker in list(self.workers.values())))
        per_worker = {slot: worker.last_scrape for slot, worker in self.workers.items()}
        return merge_metrics(per_worker, self.carried), requests_per_worker(per_worker)


def _failed(what: str, answers: list[Answer]) -> web.Response | None:
    """None when every worker answered 200; else the first failure's status, naming all."""
    if not answers:
        return error_response(Code.UNAVAILABLE, f"{what}: no worker is serving")
    failures = [a for a in answers if a.status != 200]
    if not failures:
        return None
    detail = "; ".join(
        f"worker {a.slot}: {a.document.get('error', a.document)}"
        for a in sorted(failures, key=lambda a: a.slot)
    )
    message = f"{what} failed on {len(failures)} of {len(answers)} workers: {detail}"
    return error_response(Code(failures[0].code), message)


class ControlApp:
    """Routes of the control server (workers only)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.app = web.Application(middlewares=[self._secret])
        post, get = self.app.router.add_post, self.app.router.add_get
        post("/fleet/workers", self.register)
        get("/fleet/state", self.state)
        post("/fleet/models/{model}/load", self.load)
        post("/fleet/models/{model}/unload", self.unload)
        post("/fleet/index", self.index)
        get("/fleet/stats", self.statistics)

    @web.middleware
    async def _secret(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.fleet.secret.encode()):
            return error_response(Code.UNAUTHENTICATED, "not a worker of this supervisor")
        return await handler(request)

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        metrics_port = body["metrics_port"]
        worker = Worker(
            slot=body["slot"],
            pid=body["pid"],
            url=f"http://127.0.0.1:{body['worker_port']}",
            metrics_url=None if metrics_port is None else f"http://127.0.0.1:{metrics_port}/",
            banner=body["banner"],
        )
        async with self.fleet.registered:
            self.fleet.workers[worker.slot] = worker
            self.fleet.registered.notify_all()
        log.info("worker %d (pid %d) serving", worker.slot, worker.pid)
        return web.json_response({})

    async def state(self, request: web.Request) -> web.Response:
        steps = [{"name": name, "op": op} for name, op in self.fleet.steps.items()]
        return web.json_response(steps)

    async def _control(self, request: web.Request, op: str) -> web.Response:
        name = request.match_info["model"]
        answers = await self.fleet.ask_all(
            "POST", f"/v2/repository/models/{quote(name, safe='')}/{op}"
        )
        if any(a.status == 200 for a in answers):  # a worker started later does it too
            self.fleet.steps.pop(name, None)
            self.fleet.steps[name] = op
        return _failed(f"{op} of model '{name}'", answers) or web.json_response({})

    async def load(self, request: web.Request) -> web.Response:
        return await self._control(request, "load")

    async def unload(self, request: web.Request) -> web.Response:
        return await self._control(request, "unload")

    async def index(self, request: web.Request) -> web.Response:
        body = await request.json()
        answers = await self.fleet.ask_all("POST", "/v2/repository/index", json=body)
        failed = _failed("the repository index", answers)
        if failed is not None:
            return failed
        return web.json_response(agree_index({a.slot: a.document for a in answers}))

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.query.get("model", ""), request.query.get("version", "")
        path = "/v2/models/stats"
        if name:
            path = f"/v2/models/{quote(name, safe='')}"
            path += f"/versions/{quote(version, safe='')}/stats" if version else "/stats"
        answers = await self.fleet.ask_all("GET", path)
        failed = _failed("statistics", answers)
        if failed is not None:
            return failed
        return web.json_response(sum_statistics([a.document for a in answers]))


class _Families:
    """A registry collector that yields families already built (generate_latest's input)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class MetricsApp:
    """GET /metrics: every worker's families merged, and the supervisor's own."""

    def __init__(self, fleet: Fleet, workers: int) -> None:
        self.fleet = fleet
        self.workers = workers
        self.app = web.Application()
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/", self.metrics)

    async def metrics(self, request: web.Request) -> web.Response:
        families, per_worker = await self.fleet.scrape()
        running = GaugeMetricFamily(
            "cnnserve_workers", "Worker processes serving, and configured", labels=["state"]
        )
        running.add_metric(["serving"], len(self.fleet.workers))
        running.add_metric(["configured"], self.workers)
        restarts = GaugeMetricFamily(
            "cnnserve_worker_restarts", "Worker processes replaced since the start"
        )
        restarts.add_metric([], self.fleet.restarts)
        answered = GaugeMetricFamily(
            "cnnserve_worker_requests",
            "Inferences each serving worker has answered (grpc spreads connections, not requests)",
            labels=["worker"],
        )
        for slot, count in sorted(per_worker.items()):
            answered.add_metric([str(slot)], count)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families([*families, running, restarts, answered]))
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
