"""ModelStreamInfer (Triton's bidirectional streaming) through tritonclient's start_stream /
async_stream_infer and through our own stubs: ordered ids, an error mid-stream that the
stream survives, a cancelled stream, and a stream open across SIGTERM."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.digits import served_session
from tests.serving import GatedRunner, gated_scheduler, running_server
from tests.waiting import until_queued

Answer = tuple[triton.InferResult | None, InferenceServerException | None]


def pixels(seed: int, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (rows, 8, 8, 1), dtype=np.uint8)


def image(seed: int, rows: int = 1, datatype: str = "UINT8") -> triton.InferInput:
    data = pixels(seed, rows)
    tensor = triton.InferInput("image", list(data.shape), datatype)
    tensor.set_data_from_numpy(data if datatype == "UINT8" else data.astype(np.float32))
    return tensor


def expected(seed: int) -> np.ndarray:
    return np.asarray(served_session().run(["probabilities"], {"image": pixels(seed)})[0])


def collect(client: triton.InferenceServerClient) -> queue.Queue[Answer]:
    answers: queue.Queue[Answer] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    return answers


def test_answers_come_in_request_order_with_their_ids() -> None:
    with running_server() as server:
        client = triton.InferenceServerClient(server.address)
        answers = collect(client)
        for seed in range(40):
            client.async_stream_infer("digits", [image(seed)], request_id=f"r{seed}")
        got = [answers.get(timeout=60) for _ in range(40)]
        client.stop_stream()
        for seed, (result, error) in enumerate(got):
            assert error is None and result is not None
            assert result.get_response().id == f"r{seed}"
            np.testing.assert_array_equal(result.as_numpy("probabilities"), expected(seed))
        client.close()


def test_a_bad_request_answers_an_error_and_the_stream_goes_on() -> None:
    with running_server() as server:
        client = triton.InferenceServerClient(server.address)
        answers = collect(client)
        client.async_stream_infer("digits", [image(1)], request_id="good-1")
        client.async_stream_infer("digits", [image(2, datatype="FP32")], request_id="bad-type")
        client.async_stream_infer("nosuch", [image(3)], request_id="bad-model")
        client.async_stream_infer("digits", [image(4)], request_id="late", timeout=1)  # 1 us
        client.async_stream_infer("digits", [image(5)], request_id="good-5")
        got = [answers.get(timeout=60) for _ in range(5)]
        client.stop_stream()
        (ok1, e1), (_, bad_type), (_, bad_model), (_, late), (ok5, e5) = got
        assert e1 is None and ok1 is not None and ok1.get_response().id == "good-1"
        assert bad_type is not None and "INVALID_ARGUMENT" in bad_type.message()
        assert "input 'image'" in bad_type.message()
        assert bad_model is not None and "NOT_FOUND" in bad_model.message()
        assert late is not None and "DEADLINE_EXCEEDED" in late.message()
        assert e5 is None and ok5 is not None
        np.testing.assert_array_equal(ok5.as_numpy("probabilities"), expected(5))
        stats = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == "2"  # counted as unary ones
        client.close()


def test_a_cancelled_stream_leaves_the_server_serving() -> None:
    gates: list[GatedRunner] = []
    with running_server(make_scheduler=gated_scheduler(gates), grace_period_s=5) as server:
        client = triton.InferenceServerClient(server.address)
        answers = collect(client)
        for seed in range(4):
            client.async_stream_infer("digits", [image(seed)], request_id=str(seed))
        assert gates[0].entered.wait(timeout=60)  # a batch of the stream is computing
        client.stop_stream(cancel_requests=True)  # the client goes away mid-batch
        for gate in gates:
            gate.release()
        other = triton.InferenceServerClient(server.address)
        result = other.infer("digits", [image(9)])
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected(9))
        servicer = server.server._servicer
        assert servicer is not None
        for _ in range(10_000):  # real round trips until the cancelled requests are gone
            if not servicer._streams and server.server.core._in_flight == 0:
                break
            other.is_server_live()
        assert not servicer._streams and server.server.core._in_flight == 0
        assert answers.qsize() <= 4
        other.close()
        client.close()


def test_a_stream_open_across_sigterm_gets_its_answers_then_ends_cleanly(
    held_server: tuple[subprocess.Popen[str], str, str],
) -> None:
    process, address, metrics = held_server
    assert process.stdout is not None and process.stdin is not None
    sent: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (request := sent.get()) is not None:
            yield request

    received: list[pb.ModelStreamInferResponse] = []
    outcome: list[object] = []

    def read() -> None:
        with grpc.insecure_channel(address) as channel:
            stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests())
            try:
                received.extend(stream)
                outcome.append(stream.code())
            except grpc.RpcError as exc:
                outcome.append(exc.code())

    reader = threading.Thread(target=read)
    reader.start()
    for seed in range(3):
        request = pb.ModelInferRequest(model_name="digits", id=f"s{seed}")
        request.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 1])
        request.raw_input_contents.append(pixels(seed).tobytes())
        sent.put(request)
    held_rows = 0
    for line in process.stdout:  # a batch of the stream is inside the runner...
        if line.startswith("held "):
            held_rows = int(line.split()[1])
            break
    until_queued(metrics, 3 - held_rows)  # ... and the rest were accepted (queued)
    process.send_signal(signal.SIGTERM)
    process.stdin.write("release\n")
    process.stdin.flush()
    reader.join(timeout=120)
    sent.put(None)
    assert process.wait(timeout=60) == 0
    assert outcome == [grpc.StatusCode.OK]  # the server ended the stream, cleanly
    assert [r.infer_response.id for r in received] == ["s0", "s1", "s2"]
    for seed, response in enumerate(received):
        assert response.error_message == ""
        got = np.frombuffer(response.infer_response.raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(got, expected(seed).reshape(-1))


def test_a_stream_opened_during_a_drain_ends_at_once() -> None:
    with running_server() as server:
        servicer = server.server._servicer
        assert servicer is not None
        assert server.call(servicer.drain(5.0))  # nothing in flight: drained at once
        request = pb.ModelInferRequest(model_name="digits", id="late")
        request.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 1])
        request.raw_input_contents.append(pixels(1).tobytes())
        with grpc.insecure_channel(server.address) as channel:
            stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                iter([request]), timeout=60
            )
            answers = list(stream)  # ends without waiting for the client's side
            assert stream.code() == grpc.StatusCode.OK
        assert answers == []
