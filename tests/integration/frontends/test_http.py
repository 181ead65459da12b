"""The KServe v2 REST front end, driven by tritonclient.http (JSON and binary) and curl:
every endpoint, answers bit for bit equal to gRPC's, the same security, the bad-input
cases (each a clear 4xx, the server up), and SIGTERM draining HTTP as it drains gRPC."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service.configuration.settings import ControlMode, TlsSettings
from tests.certs import make_pki
from tests.integration.serving.test_drain import HELD, pixels, release_and_exit, wait_for_line
from tests.serving import ServerThread, running_server
from tests.waiting import until_queued

TOKEN = "correct horse battery staple"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with running_server(model_control_mode=ControlMode.EXPLICIT.value) as running:
        yield running


def rest(server: ServerThread) -> str:
    return server.server.http_url.removeprefix("http://")


def http_client(server: ServerThread) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(rest(server))


def call(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def images(rows: int = 2) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (rows, 8, 8, 1), dtype=np.uint8)


def grpc_answer(server: ServerThread, data: np.ndarray) -> np.ndarray:
    client = triton_grpc.InferenceServerClient(server.address)
    tensor = triton_grpc.InferInput("image", list(data.shape), "UINT8")
    tensor.set_data_from_numpy(data)
    answer: np.ndarray | None = client.infer("digits", [tensor]).as_numpy("probabilities")
    assert answer is not None
    return answer


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_http_answers_equal_grpc_bit_for_bit(
    server: ServerThread, binary: bool
) -> None:
    data = images()
    tensor = triton_http.InferInput("image", list(data.shape), "UINT8")
    tensor.set_data_from_numpy(data, binary_data=binary)
    wanted = triton_http.InferRequestedOutput("probabilities", binary_data=binary)
    client = http_client(server)
    result = client.infer("digits", [tensor], outputs=[wanted], request_id="r-1")
    answer = result.as_numpy("probabilities")
    assert answer is not None and answer.dtype == np.float32
    np.testing.assert_array_equal(answer, grpc_answer(server, data))
    assert result.get_response()["id"] == "r-1"


def test_every_endpoint_through_tritonclient_http(server: ServerThread) -> None:
    client = http_client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"][0] == {"name": "image", "datatype": "UINT8", "shape": [-1, 8, 8, 1]}
    assert metadata["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    config = client.get_model_config("digits")
    assert config["max_batch_size"] == 64
    # 64-bit integers are numbers, as Triton writes them (not the proto3 JSON strings)
    assert config["input"][0]["dims"] == [8, 8, 1]
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["digits"]["state"] == "READY"
    client.infer("digits", [_input(images(1))])
    stats = client.get_inference_statistics("digits")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 1
    assert isinstance(stats["inference_count"], int) and stats["inference_count"] >= 1
    # classification extension: the top 3 as "<score>:<index>" strings
    top = triton_http.InferRequestedOutput("probabilities", class_count=3)
    scores = client.infer("digits", [_input(images(1))], outputs=[top]).as_numpy("probabilities")
    assert scores is not None and scores.shape == (1, 3)
    client.unload_model("digits")
    assert not client.is_model_ready("digits")
    client.load_model("digits")
    assert client.is_model_ready("digits")


def _input(data: np.ndarray) -> triton_http.InferInput:
    tensor = triton_http.InferInput("image", list(data.shape), "UINT8")
    tensor.set_data_from_numpy(data, binary_data=False)
    return tensor


def test_curl_drives_the_endpoints(server: ServerThread) -> None:
    base = server.server.http_url

    def curl(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            ["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True,
            timeout=30, check=True,
        )  # fmt: skip
        body, _, status = done.stdout.rpartition("\n")
        return int(status), body

    assert curl(f"{base}/v2/health/ready")[0] == 200
    status, body = curl(f"{base}/v2/models/digits")
    assert status == 200 and json.loads(body)["name"] == "digits"
    data = images(1)
    document = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 1],
                            "data": data.reshape(-1).tolist()}]}  # fmt: skip
    status, body = curl("-X", "POST", "-H", "Content-Type: application/json", "-d",
                        json.dumps(document), f"{base}/v2/models/digits/infer")  # fmt: skip
    assert status == 200
    output = json.loads(body)["outputs"][0]
    got = np.asarray(output["data"], np.float32).reshape(output["shape"])
    np.testing.assert_array_equal(got, grpc_answer(server, data))


def _infer_body(**tensor: object) -> bytes:
    base: dict[str, object] = {"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 1],
                               "data": [0] * 64}  # fmt: skip
    return json.dumps({"inputs": [{**base, **tensor}]}).encode()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [
        ("digits/infer", b"{not json", {}, 400, "malformed JSON"),
        ("digits/infer", _infer_body(), {"Inference-Header-Content-Length": "9999"}, 400,
         "but the body holds"),
        ("digits/infer", _infer_body(data=[0] * 63), {}, 400, "needs 64 elements, 'data' holds 63"),
        ("digits/infer", _infer_body(datatype="UINT9"), {}, 400, "unknown datatype 'UINT9'"),
        ("digits/infer", _infer_body(shape=[1, 8, 8, 100000000]), {}, 400, "expected shape"),
        ("digits/infer", _infer_body(data=[300] * 64), {}, 400, "outside the UINT8 range"),
        ("nope/infer", _infer_body(), {}, 404, "unknown model 'nope'"),
        ("digits/versions/7/infer", _infer_body(), {}, 404, "version '7' is not served"),
        ("digits/versions/7", None, {}, 404, "version '7' is not served"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_4xx_and_the_server_serves_on(
    server: ServerThread, path: str, body: bytes | None, headers: dict[str, str],
    status: int, message: str,
) -> None:  # fmt: skip
    got, answer = call(f"{server.server.http_url}/v2/models/{path}", body, headers)
    assert got == status, answer
    assert message in json.loads(answer)["error"]
    assert call(f"{server.server.http_url}/v2/health/ready")[0] == 200


def test_the_token_is_required_except_for_health(tmp_path: Path) -> None:
    with running_server(auth_token=TOKEN) as running:
        base = running.server.http_url
        assert call(f"{base}/v2/health/live")[0] == 200  # probes stay open
        status, answer = call(f"{base}/v2/models/digits/infer", _infer_body())
        assert status == 401 and "missing 'Authorization" in json.loads(answer)["error"]
        wrong = {"Authorization": "Bearer nope"}
        assert call(f"{base}/v2/models/digits/infer", _infer_body(), wrong)[0] == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert call(f"{base}/v2/models/digits/infer", _infer_body(), right)[0] == 200


def test_tls_and_mutual_tls_apply_to_http(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = TlsSettings(pki.server_cert, pki.server_key, pki.ca)
    with running_server(tls=tls) as running:
        assert running.server.http_url.startswith("https://")
        url = running.server.http_url.removeprefix("https://")
        client = triton_http.InferenceServerClient(
            url,
            ssl=True,
            ssl_options={
                "ca_certs": str(pki.ca),
                "certfile": str(pki.client_cert),
                "keyfile": str(pki.client_key),
            },
        )
        assert client.is_server_ready()
        anonymous = triton_http.InferenceServerClient(
            url, ssl=True, ssl_options={"ca_certs": str(pki.ca)}
        )
        with pytest.raises(Exception):  # noqa: B017 - the TLS handshake fails, as a transport error
            anonymous.is_server_ready()


def test_sigterm_drains_http_as_grpc(
    held_rest_server: tuple[subprocess.Popen[str], str, str],
) -> None:
    process, base, metrics = held_rest_server
    answers: list[tuple[int, bytes] | None] = [None] * HELD

    def send(i: int) -> None:
        body = _infer_body(data=pixels(i).reshape(-1).tolist())
        answers[i] = call(f"{base}/v2/models/digits/infer", body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(HELD)]
    for thread in threads:
        thread.start()
    held_rows = int(wait_for_line(process, "held ").split()[1])
    until_queued(metrics, HELD - held_rows)
    process.send_signal(signal.SIGTERM)
    for _ in range(1000):  # the signal is handled asynchronously: ask until it shows
        if call(f"{base}/v2/health/ready")[0] == 503:
            break
    status, answer = call(f"{base}/v2/models/digits/infer", _infer_body())
    assert status == 503 and "shutting down" in json.loads(answer)["error"]
    release_and_exit(process, threads)
    for i, reply in enumerate(answers):
        assert reply is not None and reply[0] == 200, (i, reply)


def test_a_client_error_from_tritonclient_http_is_readable(server: ServerThread) -> None:
    client = http_client(server)
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("nope")
    assert "unknown model 'nope'" in str(refused.value)


def test_aiohttp_refusals_carry_the_json_error_body(tmp_path: Path) -> None:
    with running_server(max_message_bytes=4096) as running:
        base = running.server.http_url
        status, answer = call(f"{base}/v2/models/digits/infer", b"{" + b" " * 10_000 + b"}")
        assert status == 413 and "Request Entity Too Large" in json.loads(answer)["error"]
        status, answer = call(f"{base}/v2/nowhere")
        assert status == 404 and "Not Found: /v2/nowhere" in json.loads(answer)["error"]
        assert call(f"{base}/v2/health/ready")[0] == 200


def test_a_grpc_client_at_the_rest_port_is_one_warning_not_tracebacks(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = rest(server).rsplit(":", 1)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # as gRPC does: it reconnects with backoff
            with socket.create_connection((host, int(port)), timeout=10) as connection:
                connection.sendall(preface)
                assert b" 400 Bad Request" in connection.recv(4096)
    said = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.levelno for r in said] == [logging.WARNING]
    assert "spoke HTTP/2 (gRPC?) to the REST port" in said[0].getMessage()
    assert said[0].exc_info is None
    status, _ = call(f"http://{rest(server)}/v2/health/live")
    assert status == 200
