"""Requests of different shapes, and one request the runtime refuses, through the real server.

A variable-size model ([-1, 3, H, W], as OCR and detection models are) gets concurrent
requests of several widths from unmodified tritonclient (gRPC unary through grpc.aio, the
stream, REST): each batch holds one shape, and every answer equals onnxruntime's on that
request alone. A model that fails for some input values (Gather indices out of range) gets a
batch of 8 with one bad request: exactly that one fails, with INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import queue
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.http.aio as triton_http_aio
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from service.batching.batcher import DynamicBatcher
from tests.onnx_models import save
from tests.serving import GatedRunner, ServerThread, gated_scheduler, running_server

WIDTHS = (192, 160, 96)
HEIGHT = 8
REQUESTS = 24
TABLE = np.arange(20, dtype=np.float32).reshape(10, 2) * 1.5


def variable_size_model() -> onnx.ModelProto:
    """mean = GlobalAveragePool(x) [N, 3, 1, 1]; rowsum = ReduceSum(x, axis 3) [N, 3, H]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["mean"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["rowsum"], keepdims=0),
        ],
        "ocr_like",
        [x],
        [
            helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 3, 1, 1]),
            helper.make_tensor_value_info("rowsum", TensorProto.FLOAT, ["N", 3, "H"]),
        ],
        [numpy_helper.from_array(np.array([3], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def lookup_model() -> onnx.ModelProto:
    """y = TABLE[idx]: an index out of [-10, 9] makes onnxruntime refuse the whole run."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 2])],
        [numpy_helper.from_array(TABLE, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    save(variable_size_model(), root / "ocr" / "1" / "model.onnx")  # config-less
    save(lookup_model(), root / "lookup" / "1" / "model.onnx")
    # A batch leaves only when 8 rows are queued (the delay is far past any test's time),
    # so the 8 requests of the test share one batch, whatever the scheduling.
    (root / "lookup" / "config.yaml").write_text(
        "max_batch_size: 8\ninstances: 1\n"
        "dynamic_batching:\n  max_queue_delay_us: 600000000\n  max_queue_size: 64\n"
    )
    return root


@pytest.fixture()
def gated(repository: Path) -> Iterator[tuple[ServerThread, list[GatedRunner]]]:
    gates: list[GatedRunner] = []
    with running_server(repository, make_scheduler=gated_scheduler(gates)) as server:
        yield server, gates
        for gate in gates:
            gate.release()


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [
        rng.standard_normal((1, 3, HEIGHT, WIDTHS[i % len(WIDTHS)])).astype(np.float32)
        for i in range(REQUESTS)
    ]


def alone(x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime in-process on this request alone."""
    session = ort.InferenceSession(
        variable_size_model().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    mean, rowsum = session.run(["mean", "rowsum"], {"x": x})
    return {"mean": mean, "rowsum": rowsum}


def gate_of(server: ServerThread, gates: list[GatedRunner], model: str) -> GatedRunner:
    scheduler = server.server.repository.get(model).scheduler
    assert isinstance(scheduler, DynamicBatcher)
    gate = next(g for g in gates if any(g is r for r in scheduler._runners))
    return gate


def hold_until_queued(server: ServerThread, model: str, gate: GatedRunner) -> None:
    """Bounded real round trips until every request the held batch does not hold waits
    behind it (the held batch may hold more than one: requests that arrived together)."""
    scheduler = server.server.repository.get(model).scheduler
    rows = REQUESTS - gate.rows_seen[0]
    client = triton.InferenceServerClient(server.address)
    for _ in range(20_000):
        if scheduler.queued_rows >= rows:
            break
        client.is_server_live()
    client.close()
    assert scheduler.queued_rows == rows


def check_answers(sent: list[np.ndarray], answers: list[dict[str, np.ndarray]]) -> None:
    for x, answer in zip(sent, answers, strict=True):
        wanted = alone(x)
        for name in ("mean", "rowsum"):
            np.testing.assert_allclose(answer[name], wanted[name], rtol=1e-5, atol=1e-5)


def check_one_shape_per_batch(gate: GatedRunner) -> None:
    assert sum(gate.rows_seen) == REQUESTS
    assert max(gate.rows_seen) > 1, "no batch formed: the test would prove nothing"
    assert len(gate.rows_seen) >= len(WIDTHS)  # one batch per width at least


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mixed_widths_unary_each_answer_as_alone(
    gated: tuple[ServerThread, list[GatedRunner]], protocol: str
) -> None:
    """tritonclient's asyncio clients, gRPC (grpc.aio) and REST (aiohttp), unmodified."""
    server, gates = gated
    gate = gate_of(server, gates, "ocr")
    sent = images()
    module: Any = triton_aio if protocol == "grpc" else triton_http_aio
    url = server.address if protocol == "grpc" else server.server.http_url[len("http://") :]

    async def one(client: Any, x: np.ndarray) -> dict[str, Any]:
        tensor = module.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = await client.infer("ocr", [tensor])
        return {n: result.as_numpy(n) for n in ("mean", "rowsum")}

    async def scenario() -> list[dict[str, Any]]:
        client = module.InferenceServerClient(url)
        try:
            tasks = [asyncio.ensure_future(one(client, x)) for x in sent]
            await asyncio.to_thread(gate.entered.wait, 60)
            await asyncio.to_thread(hold_until_queued, server, "ocr", gate)
            gate.release()
            return list(await asyncio.gather(*tasks))
        finally:
            await client.close()

    check_answers(sent, asyncio.run(scenario()))
    check_one_shape_per_batch(gate)


def test_mixed_widths_over_a_stream_each_answer_as_alone(
    gated: tuple[ServerThread, list[GatedRunner]],
) -> None:
    server, gates = gated
    gate = gate_of(server, gates, "ocr")
    sent = images()
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = triton.InferenceServerClient(server.address)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    for index, x in enumerate(sent):
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.async_stream_infer("ocr", [tensor], request_id=str(index))
    assert gate.entered.wait(60)
    hold_until_queued(server, "ocr", gate)
    gate.release()
    answers: dict[int, dict[str, Any]] = {}
    for _ in sent:
        result, error = received.get(timeout=60)
        assert error is None, error
        answers[int(result.get_response().id)] = {n: result.as_numpy(n) for n in ("mean", "rowsum")}
    client.stop_stream()
    client.close()
    check_answers(sent, [answers[i] for i in range(len(sent))])
    check_one_shape_per_batch(gate)


def metric(server: ServerThread, name: str, **labels: str) -> float:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10
    ) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_one_out_of_range_index_fails_alone_in_a_batch_of_eight(repository: Path) -> None:
    with running_server(repository) as server:
        indices = [1, 2, 3, 42, 4, 5, 6, 7]  # 42: out of the table's 10 rows

        async def one(client: triton_aio.InferenceServerClient, index: int) -> np.ndarray:
            tensor = triton_aio.InferInput("idx", [1, 1], "INT64")
            tensor.set_data_from_numpy(np.array([[index]], np.int64))
            answer: np.ndarray = (await client.infer("lookup", [tensor])).as_numpy("y")
            return answer

        async def scenario() -> list[np.ndarray | BaseException]:
            client = triton_aio.InferenceServerClient(server.address)
            try:
                return list(
                    await asyncio.gather(*(one(client, i) for i in indices), return_exceptions=True)
                )
            finally:
                await client.close()

        outcomes = asyncio.run(scenario())
        for index, outcome in zip(indices, outcomes, strict=True):
            if index == 42:
                assert isinstance(outcome, InferenceServerException)
                assert outcome.status() == "StatusCode.INVALID_ARGUMENT"
                assert "indices element out of data bounds" in outcome.message()
            else:
                assert isinstance(outcome, np.ndarray)
                np.testing.assert_array_equal(outcome, TABLE[[[index]]])
        labels = {"model": "lookup", "version": "1"}
        assert metric(server, "cnnserve_batch_failures_total", **labels) == 1
        assert metric(server, "cnnserve_batch_reruns_total", outcome="rescued", **labels) == 7
        assert metric(server, "cnnserve_batch_reruns_total", outcome="failed", **labels) == 1
        # ModelStatistics counts the executions as they ran: the batch of 8, then 8 alone.
        stats = triton.InferenceServerClient(server.address).get_inference_statistics(
            "lookup", as_json=True
        )["model_stats"][0]
        assert stats["execution_count"] == "9"
        assert stats["inference_count"] == "7"
        assert stats["inference_stats"]["success"]["count"] == "7"
        assert stats["inference_stats"]["fail"]["count"] == "1"
        assert stats["inference_stats"]["queue"]["count"] == "8"  # one wait per request
        by_size = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
        assert by_size == {"1": "8", "8": "1"}
        # The server serves on, the same model included.
        sync = triton.InferenceServerClient(server.address)
        assert sync.is_server_live() and sync.is_model_ready("lookup")
        sync.close()


def test_a_wrong_fixed_dim_is_refused_before_queueing(repository: Path) -> None:
    with running_server(repository) as server:
        client = triton.InferenceServerClient(server.address)
        tensor = triton.InferInput("x", [1, 4, HEIGHT, 96], "FP32")  # 4 channels, not 3
        tensor.set_data_from_numpy(np.zeros((1, 4, HEIGHT, 96), np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("ocr", [tensor])
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
        stats = client.get_inference_statistics("ocr", as_json=True)["model_stats"][0]
        assert stats.get("execution_count", "0") == "0"  # refused before the queue: nothing ran
        assert metric(server, "cnnserve_batch_failures_total", model="ocr", version="1") == 0
        client.close()
