from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests import onnx_models
from tests.serving import EXAMPLE_MODELS, REPO_ROOT, ServerThread, running_server


@pytest.fixture(scope="module")
def example_server() -> Iterator[ServerThread]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def awkward_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Config-less third-party-style files, plus one corrupt model."""
    root = tmp_path_factory.mktemp("awkward")
    onnx_models.save(onnx_models.two_in_two_out("N"), root / "two_io" / "1" / "model.onnx")
    onnx_models.save(onnx_models.doubler([1, 3]), root / "fixed_batch" / "1" / "model.onnx")
    onnx_models.save(
        onnx_models.doubler([None, "?", 5]), root / "unknown_dims" / "1" / "model.onnx"
    )
    onnx_models.save(onnx_models.doubler([-1, 3]), root / "minus_one" / "1" / "model.onnx")
    # Two versions: the highest is served.
    onnx_models.save(onnx_models.doubler(["b", 2]), root / "versioned" / "1" / "model.onnx")
    onnx_models.save(onnx_models.two_in_two_out("b"), root / "versioned" / "3" / "model.onnx")
    broken = root / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not an onnx file")
    (root / "empty_model").mkdir()
    return root


@pytest.fixture(scope="module")
def awkward_server(awkward_repository: Path) -> Iterator[ServerThread]:
    with running_server(awkward_repository) as server:
        yield server


@pytest.fixture()
def stub(example_server: ServerThread) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(example_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def start_held_server(grace_s: float = 60.0) -> tuple[subprocess.Popen[str], str, str, str]:
    """`cnnserve serve` as a process whose runs are held until a line on stdin
    (tests/held_server.py): (process, gRPC address, metrics URL, REST URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.held_server", str(EXAMPLE_MODELS), str(grace_s)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    address = metrics = rest = ""
    for line in process.stdout:
        if line.startswith("cnnserve listening on "):
            address = line.split()[-1]
        elif line.strip().startswith("KServe v2 REST on "):
            rest = line.split()[-1]
        elif line.strip().startswith("metrics on "):
            metrics = line.split()[-1]
            break
    assert address and metrics and rest, f"the server exited ({process.wait()}) before listening"
    return process, address, metrics, rest


def _stopped(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture()
def held_server() -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    process, address, metrics, _ = start_held_server()
    try:
        yield process, address, metrics
    finally:
        _stopped(process)


@pytest.fixture()
def held_rest_server() -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """The held server, for REST: (process, REST URL, metrics URL)."""
    process, _, metrics, rest = start_held_server()
    try:
        yield process, rest, metrics
    finally:
        _stopped(process)
