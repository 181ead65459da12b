"""A `cnnserve serve --workers N` supervisor as a child process, and what a test reads of
it: the banner's ports, the merged metrics, per-connection tritonclient clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.serving import REPO_ROOT

# Without it, grpc-core shares one TCP connection among channels to the same address:
# eight clients in one process would be one connection, on one worker.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Supervisor:
    process: subprocess.Popen[str]
    address: str
    metrics_url: str
    banner: list[str]

    def client(self) -> triton_grpc.InferenceServerClient:
        """A client with a TCP connection of its own."""
        return triton_grpc.InferenceServerClient(self.address, channel_args=OWN_CONNECTION)

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        with urllib.request.urlopen(self.metrics_url, timeout=30) as answer:
            text = answer.read().decode()
        return {
            tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        }

    def value(self, name: str, **labels: str) -> float:
        return sum(
            value
            for key, value in self.samples(name).items()
            if all((k, v) in key for k, v in labels.items())
        )

    def worker_pids(self) -> list[int]:
        line = next(line for line in self.banner if line.startswith("  workers:"))
        inside = line.split("(pids ", 1)[1].split(")", 1)[0]
        return [int(pid) for pid in inside.split(", ")]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=120)
        return status


def start(repository: Path, *extra: str, workers: int = 2) -> Supervisor:
    command = [
        sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
        "--port", "0", "--http-port", "0", "--metrics-port", "0", "--workers", str(workers),
        "--autotune-budget", "0.2", *extra,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )  # fmt: skip
    assert process.stdout is not None
    banner: list[str] = []
    for line in process.stdout:  # blocks until the supervisor prints; no sleeps
        banner.append(line.rstrip("\n"))
        if line.startswith("  try:"):
            break
    else:
        process.wait()
        raise AssertionError(f"the supervisor exited ({process.returncode}) before serving")
    address = banner[0].split()[-1]
    metrics = next(line for line in banner if line.startswith("  metrics on")).split()[-1]
    return Supervisor(process, address, metrics, banner)


def digits_input() -> list[triton_grpc.InferInput]:
    image = np.zeros((1, 8, 8, 1), np.uint8)
    tensor = triton_grpc.InferInput("image", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image)
    return [tensor]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def lines(process: subprocess.Popen[str]) -> Iterator[str]:
    assert process.stdout is not None
    yield from process.stdout
