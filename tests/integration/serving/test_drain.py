"""SIGTERM while requests are in progress, on the real `cnnserve serve` path (a process, a
real signal): health turns NOT_SERVING, new requests get UNAVAILABLE, every accepted one
completes with its correct answer, then the process exits 0. Exit status 1 when the grace
period ends with inferences still running; a second signal exits at once.

Runs are held in the runner (tests/held_server.py) so that "in progress" is a fact, not a
timing: the server prints "held" once a batch is inside onnxruntime's runner."""

from __future__ import annotations

import signal
import subprocess
import threading

import grpc
import numpy as np
import pytest

from service.cli.client import health_check
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.digits import served_session
from tests.integration.conftest import start_held_server
from tests.waiting import until_queued

HELD = 4  # requests in progress when the signal arrives


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 8, 8, 1), dtype=np.uint8)


def request(seed: int) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="digits")
    message.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 1])
    message.raw_input_contents.append(pixels(seed).tobytes())
    return message


def start_held_requests(address: str) -> tuple[list[object], list[threading.Thread]]:
    answers: list[object] = [None] * HELD

    def send(i: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            try:
                answers[i] = stub.ModelInfer(request(i), timeout=120)
            except grpc.RpcError as exc:
                answers[i] = exc.code()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(HELD)]
    for thread in threads:
        thread.start()
    return answers, threads


def wait_for_line(process: subprocess.Popen[str], prefix: str) -> str:
    assert process.stdout is not None
    for line in process.stdout:  # blocks until the server prints it
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"the server exited before printing {prefix!r}")


def release(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("release\n")
    process.stdin.flush()


def release_and_exit(process: subprocess.Popen[str], threads: list[threading.Thread]) -> None:
    """Let the held runs go; every sender finishes, then the server exits 0."""
    release(process)
    for thread in threads:
        thread.join(timeout=120)
    assert wait_for_line(process, "cnnserve stopped: ") == (
        "cnnserve stopped: every accepted inference was answered"
    )
    assert process.wait(timeout=60) == 0


def until_not_serving(address: str) -> None:
    """The signal is handled asynchronously: ask until health says so (each ask is a real
    round trip; bounded)."""
    for _ in range(1000):
        if health_check(address, "", 5) == "NOT_SERVING":
            return
    raise AssertionError("health never reported NOT_SERVING after SIGTERM")


def late_request_code(address: str) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request(99), timeout=30)
    return refused.value.code(), str(refused.value.details())


def test_sigterm_drains_accepted_requests_and_refuses_later_ones(
    held_server: tuple[subprocess.Popen[str], str, str],
) -> None:
    process, address, metrics = held_server
    answers, threads = start_held_requests(address)
    held_rows = int(wait_for_line(process, "held ").split()[1])  # a batch is in the runner...
    until_queued(metrics, HELD - held_rows)  # ... and every other request waits in the queue
    process.send_signal(signal.SIGTERM)
    until_not_serving(address)
    code, details = late_request_code(address)
    assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details
    assert process.poll() is None  # still draining: the held batch has not finished
    release_and_exit(process, threads)

    reference = served_session()
    for i, answer in enumerate(answers):  # the held one and every queued one completed
        assert isinstance(answer, pb.ModelInferResponse), f"request {i}: {answer}"
        got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
        (want,) = reference.run(["probabilities"], {"image": pixels(i)})
        np.testing.assert_array_equal(got, np.asarray(want).reshape(-1))


def test_a_second_signal_exits_at_once(
    held_server: tuple[subprocess.Popen[str], str, str],
) -> None:
    process, address, _ = held_server
    _, threads = start_held_requests(address)
    wait_for_line(process, "held ")
    process.send_signal(signal.SIGTERM)
    until_not_serving(address)
    process.send_signal(signal.SIGINT)  # the held batch would block a drain for 60 s
    assert process.wait(timeout=30) == 1
    for thread in threads:
        thread.join(timeout=60)


def test_a_grace_period_that_ends_with_inferences_running_exits_1() -> None:
    """What the Pod's last state tells an operator: work was cut off by the grace period."""
    process, address, _, _ = start_held_server(grace_s=1.0)
    try:
        answers, threads = start_held_requests(address)
        wait_for_line(process, "held ")
        process.send_signal(signal.SIGTERM)
        for thread in threads:  # the grace period ends: gRPC stops and cancels the calls
            thread.join(timeout=120)
        # grpc-core ends them with a GOAWAY ("Cancelling all calls"), which clients read as
        # UNAVAILABLE although they were accepted: the exit status is what says so.
        assert all(answer == grpc.StatusCode.UNAVAILABLE for answer in answers), answers
        release(process)  # the held batch returns; its answers have no one to go to
        assert wait_for_line(process, "cnnserve stopped: ") == (
            "cnnserve stopped: the grace period ended with inferences running"
        )
        assert process.wait(timeout=60) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
