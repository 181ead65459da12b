"""Triton's system shared memory extension, end to end with tritonclient's own utilities
(issue 30): inputs read from and outputs written to registered regions over gRPC and REST,
answers equal to in-process onnxruntime; each bad use is a clear error with the right status,
the server stays up, and another client's request is unaffected."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from service.configuration.settings import SharedMemory
from tests.digits import served_session
from tests.perf_analyzer import perf_analyzer
from tests.serving import ServerThread, running_server

PIXELS = np.random.default_rng(5).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
OUT_BYTES = 3 * 10 * 4  # probabilities: FP32 [3, 10]


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with running_server(shared_memory=SharedMemory.SYSTEM) as handle:
        yield handle


@pytest.fixture
def regions() -> Iterator[dict[str, shm.SharedMemoryRegion]]:
    made = {
        "in": shm.create_shared_memory_region("in", "/cnnserve_test_in", PIXELS.nbytes),
        "out": shm.create_shared_memory_region("out", "/cnnserve_test_out", OUT_BYTES),
    }
    shm.set_shared_memory_region(made["in"], [PIXELS])
    yield made
    for handle in made.values():
        shm.destroy_shared_memory_region(handle)


def mappings(key: str) -> int:
    """How many times /dev/shm<key> is mapped into this process (the client's own mapping
    is one: the server runs in this process, in its own thread)."""
    return Path("/proc/self/maps").read_text().count(f"/dev/shm{key}\n")


def expected() -> np.ndarray:
    (want,) = served_session().run(["probabilities"], {"image": PIXELS})
    return np.asarray(want)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tensors_through_shared_memory(
    server: ServerThread, regions: dict[str, shm.SharedMemoryRegion], protocol: str
) -> None:
    module = grpc_client if protocol == "grpc" else http_client
    url = server.address if protocol == "grpc" else server.server.http_url.removeprefix("http://")
    client = module.InferenceServerClient(url)
    client.unregister_system_shared_memory()  # as Triton's examples start: no error
    client.register_system_shared_memory("in", "/cnnserve_test_in", PIXELS.nbytes)
    client.register_system_shared_memory("out", "/cnnserve_test_out", OUT_BYTES)
    status = client.get_system_shared_memory_status(
        **({"as_json": True} if protocol == "grpc" else {})
    )
    names = sorted(status["regions"]) if protocol == "grpc" else sorted(r["name"] for r in status)
    assert names == ["in", "out"] and mappings("/cnnserve_test_in") == 2
    image = module.InferInput("image", list(PIXELS.shape), "UINT8")
    image.set_shared_memory("in", PIXELS.nbytes)
    output = module.InferRequestedOutput("probabilities")
    output.set_shared_memory("out", OUT_BYTES)
    answer = client.infer("digits", [image], outputs=[output])
    shape = (
        answer.get_output("probabilities")["shape"]
        if protocol == "http"
        else list(answer.get_output("probabilities").shape)
    )
    got = shm.get_contents_as_numpy(regions["out"], np.float32, [int(d) for d in shape])
    np.testing.assert_allclose(got, expected(), rtol=1e-6)
    client.unregister_system_shared_memory("in")
    assert mappings("/cnnserve_test_in") == 1 and mappings("/cnnserve_test_out") == 2
    client.unregister_system_shared_memory()
    assert mappings("/cnnserve_test_out") == 1  # unmapped on unregister
    client.close()


def grpc_error(call) -> InferenceServerException:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_bad_uses_are_clear_errors_and_the_server_serves_on(
    server: ServerThread, regions: dict[str, shm.SharedMemoryRegion]
) -> None:
    client = grpc_client.InferenceServerClient(server.address)
    size = PIXELS.nbytes

    def infer(region: str, byte_size: int, offset: int = 0, out: tuple[str, int] | None = None):  # type: ignore[no-untyped-def]
        image = grpc_client.InferInput("image", list(PIXELS.shape), "UINT8")
        image.set_shared_memory(region, byte_size, offset)
        outputs = None
        if out is not None:
            outputs = [grpc_client.InferRequestedOutput("probabilities")]
            outputs[0].set_shared_memory(*out)
        return client.infer("digits", [image], outputs=outputs)

    cases = [
        (lambda: infer("nowhere", size), "INVALID_ARGUMENT", "'nowhere' is not registered"),
        (
            lambda: client.register_system_shared_memory("big", "/cnnserve_test_in", size, 1),
            "INVALID_ARGUMENT",
            "past the end",
        ),
        (
            lambda: client.register_system_shared_memory("slash", "/a/b", 16),
            "INVALID_ARGUMENT",
            "not a POSIX shared memory name",
        ),
        (
            lambda: client.register_system_shared_memory("missing", "/cnnserve_none", 16),
            "INVALID_ARGUMENT",
            "cannot open shared memory",
        ),
    ]
    client.register_system_shared_memory("in", "/cnnserve_test_in", size)
    client.register_system_shared_memory("out", "/cnnserve_test_out", OUT_BYTES)
    cases += [
        (lambda: client.register_system_shared_memory("in", "/cnnserve_test_in", size),
         "ALREADY_EXISTS", "already registered"),
        (lambda: infer("in", size - 1), "INVALID_ARGUMENT", f"is {size} bytes"),
        (lambda: infer("in", size, 1), "INVALID_ARGUMENT", "past its end"),
        (lambda: infer("in", size, out=("out", OUT_BYTES - 4)), "INVALID_ARGUMENT",
         f"is {OUT_BYTES} bytes, more than"),
    ]  # fmt: skip
    for call, status, words in cases:
        error = grpc_error(call)
        assert error.status() == f"StatusCode.{status}", (words, error)
        assert words in error.message(), error.message()
    client.unregister_system_shared_memory("in")
    error = grpc_error(lambda: infer("in", size))  # a region used after it was unregistered
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "not registered" in error.message()
    image = grpc_client.InferInput("image", list(PIXELS.shape), "UINT8")  # another client
    image.set_data_from_numpy(PIXELS)
    got = client.infer("digits", [image]).as_numpy("probabilities")
    np.testing.assert_allclose(got, expected(), rtol=1e-6)
    client.close()


def test_shared_memory_when_off_says_how_to_turn_it_on() -> None:
    with running_server() as server:
        client = grpc_client.InferenceServerClient(server.address)
        error = grpc_error(lambda: client.register_system_shared_memory("in", "/x", 16))
        assert error.status() == "StatusCode.FAILED_PRECONDITION"
        assert "--shared-memory system" in error.message()
        image = grpc_client.InferInput("image", list(PIXELS.shape), "UINT8")
        image.set_shared_memory("in", PIXELS.nbytes)
        error = grpc_error(lambda: client.infer("digits", [image]))
        assert error.status() == "StatusCode.FAILED_PRECONDITION"
        assert client.is_server_live()
        client.close()


def test_perf_analyzer_with_system_shared_memory() -> None:
    """Triton's own load generator, its inputs and outputs in system shared memory, at
    concurrency 1 and 2 (2: requests share batches, and the statistics it checks agree)."""
    binary, env = perf_analyzer()
    with running_server(shared_memory=SharedMemory.SYSTEM) as server:
        run = subprocess.run(
            [str(binary), "-m", "digits", "-i", "grpc", "-u", server.address,
             "--shared-memory", "system", "--output-shared-memory-size", "1024",
             "--measurement-interval", "1000", "--concurrency-range", "1:2"],
            env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        client = grpc_client.InferenceServerClient(server.address)
        left = client.get_system_shared_memory_status(as_json=True).get("regions", {})
        client.close()
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for concurrency in (1, 2):
        assert f"Concurrency: {concurrency}, throughput:" in run.stdout
    assert left == {}  # perf_analyzer unregistered its regions: none left mapped
