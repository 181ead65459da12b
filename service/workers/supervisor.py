"""`cnnserve serve --workers N`: one supervisor process, N worker processes, one server to
the outside.

The supervisor never serves inferences and creates no gRPC object: it reserves the gRPC and
REST ports (bound with SO_REUSEPORT, never listening, so `--port 0` resolves to one port
every worker shares and a port taken by another program is an error before any worker
starts), then runs `python -m service serve` N times with the same arguments and a
WorkerLink in the environment. Each worker binds the reserved ports with SO_REUSEPORT (the
kernel spreads new connections among the listening workers), loads the whole repository
with its own sessions and batchers, and sizes itself to its share of the cores
(CNNSERVE_CORES = cores // N). The supervisor serves the metrics port (every worker's
metrics merged) and a loopback control port (service/workers/control.py).

Faults: a worker that exits is logged and replaced after a backoff (0.5 s doubling to
30 s; back to 0.5 s after a worker served 30 s); the others keep serving. A worker that
exits before it first served fails the start (its error is on stderr above). SIGTERM or
SIGINT: every worker drains (answers what it accepted) and the supervisor exits with the
worst status; a second signal kills the workers (a worker ignores a second SIGTERM, since a
group-wide `kill` sends it one beside the supervisor's). Workers are in their
own process group, so a terminal's Ctrl-C reaches only the supervisor, which passes it on
once; they die with the supervisor (PR_SET_PDEATHSIG, service/workers/link.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence

from aiohttp import web

from service.configuration.settings import ServerSettings, available_cores
from service.workers.control import ControlApp, Fleet, MetricsApp
from service.workers.link import LINK_ENV, WorkerLink

log = logging.getLogger("cnnserve.workers")

RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
STABLE_S = 30.0  # a worker that served this long restarts its backoff from the first delay


class StartFailed(Exception):
    """A worker exited before it served: the server does not start."""


def reserve_port(host: str, port: int, what: str, hint: str) -> socket.socket:
    """Bind (never listen) `host:port` with SO_REUSEPORT, so workers can bind it too and
    nothing else can; raises OSError naming the port when it is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    reserved = socket.socket(family, kind, proto)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind(address)
    except OSError as exc:
        reserved.close()
        raise OSError(
            f"cannot serve {what} on {host}:{port}: {exc.strerror or exc} ({hint})"
        ) from None
    return reserved


class Supervisor:
    def __init__(self, settings: ServerSettings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)  # `serve ...` as given: each worker runs the same
        self.count = settings.workers
        cores = available_cores()
        self.cores_each = max(1, cores // self.count)
        if self.count > cores:
            log.warning(
                "%d workers on %d cores: more workers than cores (they share them; each "
                "sizes itself to 1 core)",
                self.count,
                cores,
            )
        self.fleet = Fleet(secrets.token_hex(16), settings.auth_token)
        self._reserved: list[socket.socket] = []
        self._runners: list[web.AppRunner] = []
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._statuses: dict[int, int] = {}
        self._served: set[int] = set()  # slots whose worker has registered at least once
        self._stopping = asyncio.Event()
        self._start_failure = ""  # why a worker ended before it served, once one did
        self._start_failed = asyncio.Event()
        self._keepers: list[asyncio.Task[None]] = []
        self.grpc_port = 0
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._control_url = ""

    async def start(self) -> list[str]:
        """Reserve the ports, start the HTTP servers and every worker; return once all
        serve (the banner to print). Raises OSError (a port) or StartFailed."""
        try:
            await self._open_ports()
            self._keepers = [
                asyncio.create_task(self._keep(slot), name=f"worker-{slot}")
                for slot in range(self.count)
            ]
            await self._all_registered()
        except BaseException:
            await self.aclose()
            raise
        first = self.fleet.workers[0].banner
        head = 2 if len(first) > 1 and first[1].startswith("  KServe") else 1
        pids = ", ".join(str(self.fleet.workers[s].pid) for s in sorted(self.fleet.workers))
        mine = [f"  workers: {self.count} (pids {pids}), {self.cores_each} cores each"]
        if self.metrics_port is not None:
            host = self.settings.host
            mine.append(f"  metrics on http://{host}:{self.metrics_port}/metrics")
        return [*first[:head], *mine, *first[head:]]

    async def _open_ports(self) -> None:
        settings = self.settings
        grpc = reserve_port(
            settings.host, settings.port, "gRPC", "use --port; from a checkout: make run PORT=8011"
        )
        self._reserved.append(grpc)
        self.grpc_port = grpc.getsockname()[1]
        if settings.http_port is not None:
            http = reserve_port(
                settings.host, settings.http_port, "HTTP", "use --http-port or --no-http"
            )
            self._reserved.append(http)
            self.http_port = http.getsockname()[1]
        control = await self._site(ControlApp(self.fleet).app, "127.0.0.1", 0)
        self._control_url = f"http://127.0.0.1:{control}"
        if settings.metrics_port is not None:
            try:
                app = MetricsApp(self.fleet, self.count).app
                self.metrics_port = await self._site(app, settings.host, settings.metrics_port)
            except OSError as exc:
                raise OSError(
                    f"cannot serve metrics on {settings.host}:{settings.metrics_port}: "
                    f"{exc.strerror or exc} (use --metrics-port or --no-metrics)"
                ) from None

    async def _site(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        bound: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return bound

    async def _all_registered(self) -> None:
        async def registered() -> None:
            async with self.fleet.registered:
                await self.fleet.registered.wait_for(lambda: len(self.fleet.workers) == self.count)

        waiting = asyncio.ensure_future(registered())
        failed = asyncio.ensure_future(self._start_failed.wait())
        await asyncio.wait([waiting, failed], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        failed.cancel()
        if self._start_failed.is_set():
            raise StartFailed(self._start_failure)

    async def _spawn(self, slot: int) -> asyncio.subprocess.Process:
        link = WorkerLink(
            slot=slot,
            supervisor_pid=os.getpid(),
            control_url=self._control_url,
            secret=self.fleet.secret,
            grpc_port=self.grpc_port,
            http_port=self.http_port,
        )
        env = {**os.environ, LINK_ENV: link.to_env(), "CNNSERVE_CORES": str(self.cores_each)}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", *self.argv, env=env, process_group=0
        )

    async def _keep(self, slot: int) -> None:
        """Run slot's worker until the server stops, replacing it when it exits."""
        delay = RESTART_FIRST_S
        while True:
            began = time.monotonic()
            process = self._processes[slot] = await self._spawn(slot)
            if self._stopping.is_set():  # signalled while it was being started
                process.send_signal(signal.SIGTERM)
            status = await process.wait()
            if slot in self.fleet.workers:
                self._served.add(slot)
            self.fleet.gone(slot)
            if self._stopping.is_set():
                self._statuses[slot] = status
                return
            if slot not in self._served:
                if not self._start_failed.is_set():
                    self._start_failure = (
                        f"worker {slot} exited with status {status} before it served"
                    )
                    self._start_failed.set()
                return
            if time.monotonic() - began >= STABLE_S:
                delay = RESTART_FIRST_S
            log.error(
                "worker %d (pid %d) exited with status %d; replacing it in %.1f s",
                slot, process.pid, status, delay,
            )  # fmt: skip
            self.fleet.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
                return  # stopped during the backoff
            delay = min(2 * delay, RESTART_MAX_S)

    def signal_workers(self, *, drain: bool) -> None:
        """Stop replacing workers, and drain them (SIGTERM) or end them at once (SIGKILL:
        a worker ignores a second SIGTERM, which a group-wide `kill` also sends)."""
        self._stopping.set()
        for process in self._processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM if drain else signal.SIGKILL)

    async def wait(self) -> int:
        """Until every worker has exited (after signal_workers); the worst exit status:
        0 only when every worker drained cleanly."""
        await asyncio.gather(*self._keepers, return_exceptions=True)
        await self.aclose()
        statuses = list(self._statuses.values())
        return 0 if statuses and all(status == 0 for status in statuses) else 1

    async def aclose(self) -> None:
        for process in self._processes.values():  # a failed start: no worker is left
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._keepers:
            task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.fleet.aclose()
        for reserved in self._reserved:
            reserved.close()
        self._reserved.clear()


async def supervise(settings: ServerSettings, argv: Sequence[str]) -> int:
    """`cnnserve serve --workers N` until signalled: the exit status."""
    supervisor = Supervisor(settings, argv)
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("%s: draining every worker (a second signal exits at once)", sig.name)
        supervisor.signal_workers(drain=signals == 1)

    try:
        banner = await supervisor.start()
    except StartFailed as exc:
        print(f"cnnserve: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    for line in banner:
        print(line, flush=True)
    status = await supervisor.wait()
    if status == 0:
        print("cnnserve stopped: every worker answered every accepted inference", flush=True)
    else:
        print("cnnserve stopped: a worker did not drain cleanly (its status above)", flush=True)
    return status
