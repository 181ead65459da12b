"""Batching, deadlines, cancellation and backpressure through the real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from export.data import digits_split
from service.batching.batcher import DynamicBatcher
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.digits import MODEL_FILE, served_session
from tests.serving import GatedRunner, ServerThread, gated_scheduler, running_server
from tests.waiting import until


def _input(array: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("image", list(array.shape), "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(array))
    return tensor


def _scores(client: triton.InferenceServerClient, array: np.ndarray) -> np.ndarray:
    result = client.infer("digits", [_input(array)])
    scores: np.ndarray | None = result.as_numpy("probabilities")
    assert scores is not None
    return scores


def test_concurrent_requests_each_get_their_own_rows(example_server: ServerThread) -> None:
    split = digits_split()
    reference = served_session().run(["probabilities"], {"image": split.test_x})[0]
    client = triton.InferenceServerClient(example_server.address)
    # 1..3 rows per request, plus requests larger than max_batch_size (64): split + reassembled.
    bounds = []
    start = 0
    for size in [1, 2, 3, 70, 1, 3, 2, 100, 1, 2] * 3:
        if start + size > len(split.test_x):
            break
        bounds.append((start, start + size))
        start += size
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda b: _scores(client, split.test_x[b[0] : b[1]]), bounds))
    for (lo, hi), scores in zip(bounds, results, strict=True):
        assert scores.shape == (hi - lo, 10)
        # Batch composition changes onnxruntime's kernel blocking: equal to float tolerance.
        np.testing.assert_allclose(scores, reference[lo:hi], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(scores.argmax(1), reference[lo:hi].argmax(1))


def test_one_bad_request_in_a_burst_fails_alone(example_server: ServerThread) -> None:
    client = triton.InferenceServerClient(example_server.address)
    good = np.ascontiguousarray(digits_split().test_x[:2])
    bad = np.zeros((2, 8, 9, 1), np.uint8)

    def send(array: np.ndarray) -> object:
        try:
            return _scores(client, array)
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(send, [good] * 20 + [bad] + [good] * 20))
    failures = [o for o in outcomes if isinstance(o, InferenceServerException)]
    assert len(failures) == 1
    assert "INVALID_ARGUMENT" in str(failures[0].status())
    assert all(
        isinstance(o, np.ndarray) and o.shape == (2, 10) for o in outcomes if o is not failures[0]
    )


def test_model_config_rpc_for_tritonclient(example_server: ServerThread) -> None:
    client = triton.InferenceServerClient(example_server.address)
    config = client.get_model_config("digits", as_json=True)["config"]
    assert config["name"] == "digits"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert config["input"][0]["name"] == "image"
    assert config["input"][0]["data_type"] == "TYPE_UINT8"
    assert config["input"][0]["dims"] == ["8", "8", "1"]
    assert config["output"][0]["dims"] == ["10"]
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert "model_configuration" in client.get_server_metadata(as_json=True)["extensions"]


@pytest.fixture()
def gated_server(tmp_path: Path) -> Iterator[tuple[ServerThread, list[GatedRunner]]]:
    repo = tmp_path / "models"
    (repo / "digits" / "1").mkdir(parents=True)
    (repo / "digits" / "1" / "model.onnx").write_bytes(MODEL_FILE.read_bytes())
    config = (MODEL_FILE.parent.parent / "config.yaml").read_text()
    config = config.replace("max_batch_size: 64", "max_batch_size: 8")
    config = config.replace("max_queue_size: 1024", "max_queue_size: 4")
    (repo / "digits" / "config.yaml").write_text(config)
    gates: list[GatedRunner] = []
    with running_server(repo, make_scheduler=gated_scheduler(gates)) as server:
        # Warm-up ran on the real runners; the gates only see live traffic.
        yield server, gates
        for gate in gates:
            gate.release()


def _batcher(server: ServerThread) -> DynamicBatcher:
    scheduler = server.server.repository.get("digits").scheduler
    assert isinstance(scheduler, DynamicBatcher)
    return scheduler


def _raw_request(rows: int, value: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="UINT8", shape=[rows, 8, 8, 1])
    request.raw_input_contents.append(np.full((rows, 8, 8, 1), value, np.uint8).tobytes())
    return request


def test_timeout_queue_full_and_cancel_through_grpc(
    gated_server: tuple[ServerThread, list[GatedRunner]],
) -> None:
    server, gates = gated_server
    (gate,) = gates
    batcher = _batcher(server)

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            holder = asyncio.ensure_future(stub.ModelInfer(_raw_request(1, 0)))
            await asyncio.to_thread(gate.entered.wait, 60)  # the only instance is busy

            # Triton's per-request `timeout` parameter (microseconds): expires in the queue.
            timed = _raw_request(1, 128)
            timed.parameters["timeout"].int64_param = 20_000
            with pytest.raises(grpc.aio.AioRpcError) as expired:
                await stub.ModelInfer(timed)
            assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            # A cancelled RPC is dropped before compute.
            doomed = asyncio.ensure_future(stub.ModelInfer(_raw_request(2, 64)))
            await until(lambda: batcher.queued_rows == 2)
            doomed.cancel()
            await until(lambda: batcher.queued_rows == 0)

            # Queue full (4 rows): RESOURCE_EXHAUSTED at once; what was accepted completes.
            accepted = [
                asyncio.ensure_future(stub.ModelInfer(_raw_request(2, 25))) for _ in range(2)
            ]
            await until(lambda: batcher.queued_rows == 4)
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await stub.ModelInfer(_raw_request(1, 25))
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            gate.release()
            answers = await asyncio.gather(holder, *accepted)
            assert [list(a.outputs[0].shape) for a in answers] == [[1, 10], [2, 10], [2, 10]]

    server.call(scenario())
    # The model ran the holder and the two accepted requests (one batch of 4): never the
    # timed-out or the cancelled one.
    assert gate.rows_seen == [1, 4]


def test_bad_timeout_parameter_is_invalid_argument(example_server: ServerThread) -> None:
    with grpc.insecure_channel(example_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = _raw_request(1, 0)
        request.parameters["timeout"].string_param = "soon"
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "timeout" in str(caught.value.details())


def test_grpc_deadline_in_the_past_is_deadline_exceeded(example_server: ServerThread) -> None:
    # A 1 us deadline usually passes before the request is read; but grpc-core can also
    # deliver an answer that came back faster than its own deadline timer fired (measured:
    # 1 call in 3 on a warm channel, the code before issue 24 alike). So: 20 calls, at
    # least one refused, every refusal DEADLINE_EXCEEDED (all 20 answered: p < 1e-9).
    with grpc.insecure_channel(example_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        codes = []
        for _ in range(20):
            try:
                stub.ModelInfer(_raw_request(1, 0), timeout=0.000001)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert grpc.StatusCode.DEADLINE_EXCEEDED in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
        assert stub.ModelInfer(_raw_request(1, 0)).outputs[0].name == "probabilities"
