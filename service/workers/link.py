"""What a `--workers N` supervisor tells each worker (through the environment), and how a
worker dies with its supervisor. Imports nothing of the server: the supervisor uses it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from service.configuration.settings import ServerSettings

LINK_ENV = "CNNSERVE_WORKER_LINK"
# The supervisor's control server answers only requests that carry this run's secret.
SECRET_HEADER = "cnnserve-supervisor-secret"
_PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclass(frozen=True)
class WorkerLink:
    """What a supervisor hands its worker: which slot it fills, the ports every worker
    binds (resolved by the supervisor, so `--port 0` means one port for all) and where to
    report."""

    slot: int
    supervisor_pid: int
    control_url: str
    secret: str
    grpc_port: int
    http_port: int | None

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerLink | None:
        text = environ.get(LINK_ENV)
        return cls(**json.loads(text)) if text else None


def die_with_supervisor(link: WorkerLink) -> None:
    """A worker never outlives its supervisor: the kernel sends it SIGTERM (a drain) when
    the supervisor dies; a supervisor already gone before this ran ends the worker now."""
    name = ctypes.util.find_library("c")
    if name is not None:
        ctypes.CDLL(name).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != link.supervisor_pid:
        raise SystemExit("cnnserve worker: the supervisor is gone")


def worker_settings(settings: ServerSettings, link: WorkerLink) -> ServerSettings:
    """A worker's settings: the supervisor's ports, shared (SO_REUSEPORT); its metrics on
    a free loopback port (the supervisor serves the real one)."""
    return replace(
        settings,
        port=link.grpc_port,
        http_port=link.http_port,
        reuse_port=True,
        metrics_port=None if settings.metrics_port is None else 0,
        workers=1,
    )
