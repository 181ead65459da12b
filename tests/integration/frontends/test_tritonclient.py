"""The digits CNN served from the example repository, driven by unmodified tritonclient."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton

from export.data import digits_split
from tests.digits import MODEL_FILE, reported_test_accuracy, served_session
from tests.serving import ServerThread


@pytest.fixture(scope="module")
def client(example_server: ServerThread) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(example_server.address)


def test_live_ready_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "cnnserve"


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("digits", as_json=True)
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["versions"] == ["1"]
    # Preprocessing is configured: clients send uint8 pixels in NHWC.
    assert metadata["inputs"] == [
        {"name": "image", "datatype": "UINT8", "shape": ["-1", "8", "8", "1"]}
    ]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}
    ]


def _infer(client: triton.InferenceServerClient, pixels: np.ndarray) -> np.ndarray:
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)  # raw contents, tritonclient's default
    result = client.infer(
        "digits", [tensor], outputs=[triton.InferRequestedOutput("probabilities")]
    )
    scores: np.ndarray | None = result.as_numpy("probabilities")
    assert scores is not None
    return scores


def test_digits_test_split_accuracy_and_exact_parity(client: triton.InferenceServerClient) -> None:
    split = digits_split()
    session = served_session()  # the same file, with its preprocessing, in-process
    served_rows = []
    for start in range(0, len(split.test_x), 64):
        pixels = np.ascontiguousarray(split.test_x[start : start + 64])
        served = _infer(client, pixels)
        in_process = session.run(["probabilities"], {"image": pixels})[0]
        np.testing.assert_array_equal(served, in_process)  # exact, not approximate
        served_rows.append(served)
    predictions = np.concatenate(served_rows).argmax(axis=1)
    accuracy = float((predictions == split.test_y).mean())
    assert accuracy >= 0.985  # issue 8's bar for the default digits model
    # From uint8 pixels the server reaches the accuracy export measured in torch: the same
    # number of correct predictions (the card's figure is a float32 mean).
    assert round(accuracy * len(predictions)) == round(reported_test_accuracy() * len(predictions))


def test_single_image_requests_match_batched(client: triton.InferenceServerClient) -> None:
    pixels = np.ascontiguousarray(digits_split().test_x[:8])
    together = _infer(client, pixels)
    for index in range(len(pixels)):
        alone = _infer(client, pixels[index : index + 1])
        np.testing.assert_allclose(alone[0], together[index], rtol=0, atol=1e-6)


def test_request_id_is_echoed(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("image", [1, 8, 8, 1], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.uint8))
    result = client.infer("digits", [tensor], request_id="req-42")
    assert result.get_response().id == "req-42"


def test_example_repository_model_file_is_committed() -> None:
    assert MODEL_FILE.is_file()
