"""Two or more `cnnserve serve` processes behind Debian's nginx, configured from
deploy/nginx/nginx.conf with its ports and paths substituted: what tests/integration/
test_nginx.py and `python -m bench.reliability proxy-stop` run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from tests.serving import EXAMPLE_MODELS, REPO_ROOT, free_port, spawn_server

# The replica ports and the front port written in deploy/nginx/nginx.conf.
CONFIG_REPLICAS = ("127.0.0.1:8101", "127.0.0.1:8102")
CONFIG_FRONT = "127.0.0.1:8001"
CONFIG_PID = "/tmp/cnnserve-nginx.pid"


@dataclass
class Fleet:
    address: str  # nginx's front port: what clients dial
    servers: list[tuple[int, subprocess.Popen[str]]]  # (port, process) per replica
    nginx: subprocess.Popen[str]
    config: Path


def start_replica(port: int, repository: Path) -> subprocess.Popen[str]:
    process, _ = spawn_server(
        [sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
         "--port", str(port), "--metrics-port", "0", "--no-http", "--grace-period", "30"]
    )  # fmt: skip
    return process


@contextmanager
def running_fleet(workdir: Path, repository: Path = EXAMPLE_MODELS) -> Iterator[Fleet]:
    """Two replicas and nginx in front; everything still running at exit is stopped."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise RuntimeError("nginx is not installed (make test installs Debian's nginx-light)")
    ports = [free_port() for _ in CONFIG_REPLICAS]
    servers = [(port, start_replica(port, repository)) for port in ports]
    front = free_port()
    config = (REPO_ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    for written, port in zip(CONFIG_REPLICAS, ports, strict=True):
        config = config.replace(written, f"127.0.0.1:{port}")
    config = config.replace(CONFIG_FRONT, f"127.0.0.1:{front}")
    config = config.replace(CONFIG_PID, str(workdir / "nginx.pid"))
    (workdir / "nginx.conf").write_text(config)
    workdir.chmod(0o777)  # nginx workers run as an unprivileged user
    nginx = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{front}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)  # nginx accepts connections
        yield Fleet(f"127.0.0.1:{front}", servers, nginx, workdir / "nginx.conf")
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
        for _, server in servers:
            if server.poll() is None:
                server.kill()
                server.wait()


def nginx_workers(master: int) -> set[int]:
    """The worker processes of an nginx master (children, read from /proc)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def take_out_of_rotation(fleet: Fleet, port: int) -> None:
    """What an operator does before stopping a replica behind nginx: mark it `down`, reload,
    and wait until the old workers (which may still route to it) have exited."""
    old = nginx_workers(fleet.nginx.pid)
    text = fleet.config.read_text()
    fleet.config.write_text(text.replace(f"127.0.0.1:{port};", f"127.0.0.1:{port} down;"))
    fleet.nginx.send_signal(signal.SIGHUP)
    for _ in range(600):
        current = nginx_workers(fleet.nginx.pid)
        if current and not current & old:
            return
        try:
            fleet.nginx.wait(timeout=0.1)  # a bounded wait on a process, not a sleep
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"nginx exited during reload: {fleet.nginx.returncode}")
    raise AssertionError("nginx's old workers never exited after the reload")
