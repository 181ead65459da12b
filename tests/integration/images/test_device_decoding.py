"""decode: auto | cpu | gpu through a real server and tritonclient: the choice reported in
ModelMetadata, the refusals at load, and the device pipeline's plumbing served end to end
on the CPU (nvImageCodec's CPU backend stands in for the GPU: the same code, another
device), including rows of several requests gathered into one batch."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from PIL import Image

from service.batching.batcher import DynamicBatcher
from service.images import device_decode as device_images
from service.runtime.onnx_runner import CPU, CUDA
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.onnx_models import affine, save
from tests.serving import (
    GatedRunner,
    ServerThread,
    gated_scheduler,
    model_parameters,
    running_server,
)
from tests.waiting import until

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PREPROCESSING = {"mode": "standardize", "mean": MEAN, "std": STD}
# One level of a pixel, through standardize (/ the smallest std) and y = 2x + 1.
ONE_LEVEL = 2 / 255 / min(STD) + 1e-5


def write(root: Path, name: str, document: dict[str, object]) -> None:
    save(affine(["N", 3, 64, 64]), root / name / "1" / "model.onnx")
    (root / name / "config.yaml").write_text(yaml.safe_dump(document))


def jpeg(name: str, size: tuple[int, int]) -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").resize(size).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def full_decoding(encoded: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(encoded)).convert("RGB")
    return np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.uint8)


def request(images: list[bytes]) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="photo")
    message.inputs.add(name="x", datatype="BYTES", shape=[len(images)])
    message.inputs[0].contents.bytes_contents.extend(images)
    return message


def pixels_request(pixels: np.ndarray) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="photo")
    message.inputs.add(name="x", datatype="UINT8", shape=list(pixels.shape))
    message.raw_input_contents.append(np.ascontiguousarray(pixels).tobytes())
    return message


def outputs(response: pb.ModelInferResponse) -> np.ndarray:
    shape = list(response.outputs[0].shape)
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(shape)


@pytest.fixture(scope="module")
def choices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("decode_choices")
    write(root, "auto", {"preprocessing": PREPROCESSING})
    write(root, "cpu", {"preprocessing": PREPROCESSING, "decode": "cpu"})
    write(root, "gpu", {"preprocessing": PREPROCESSING, "decode": "gpu"})
    write(root, "unknown", {"preprocessing": PREPROCESSING, "decode": "fastest"})
    write(root, "pixels_only", {"decode": "cpu"})
    with running_server(root) as server:
        yield server


def test_modelmetadata_reports_where_images_are_decoded_and_why(choices: ServerThread) -> None:
    auto = model_parameters(choices.address, "auto")
    assert auto["decode"] == "cpu"
    assert auto["decode_chosen_by"] == f"auto: the model runs on {CPU}, not {CUDA}"
    stated = model_parameters(choices.address, "cpu")
    assert (stated["decode"], stated["decode_chosen_by"]) == ("cpu", "config")
    client = triton.InferenceServerClient(choices.address)
    encoded = jpeg("astronaut", (640, 480))
    tensor = triton.InferInput("x", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([encoded], dtype=np.object_))
    result = client.infer("auto", [tensor]).as_numpy("y")
    assert result is not None and result.shape == (1, 3, 64, 64)


def test_decode_settings_that_cannot_be_honoured_refuse_to_load(choices: ServerThread) -> None:
    client = triton.InferenceServerClient(choices.address)
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["gpu"]["state"] == "UNAVAILABLE"
    assert f"decode 'gpu' requested, but the model runs on {CPU}" in index["gpu"]["reason"]
    assert (
        "decode must be one of ['auto', 'cpu', 'gpu'], got 'fastest'"
        in (index["unknown"]["reason"])
    )
    assert "only a model with a preprocessing key accepts" in index["pixels_only"]["reason"]
    assert client.is_model_ready("auto") and client.is_server_live()


@pytest.fixture()
def device_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServerThread, list[GatedRunner]]]:
    """A server whose `photo` model takes the device pipeline, on the CPU (nothing else
    stops it here: the provider check is what is lifted)."""
    monkeypatch.setattr(device_images, "_why_not_gpu", lambda provider: None)
    # max_batch_size stated: instances: auto would otherwise time it, and could choose a
    # batch smaller than the 4 rows this test gathers.
    write(
        tmp_path,
        "photo",
        {"preprocessing": PREPROCESSING, "decode": "gpu", "max_batch_size": 8},
    )
    gates: list[GatedRunner] = []
    with running_server(tmp_path, make_scheduler=gated_scheduler(gates)) as server:
        yield server, gates
        for gate in gates:
            gate.release()


def test_the_device_pipeline_serves_and_batches_rows_of_several_requests(
    device_pipeline: tuple[ServerThread, list[GatedRunner]],
) -> None:
    server, (gate,) = device_pipeline
    model = server.server.repository.get("photo")
    assert model.decode == device_images.DecodeChoice("gpu", "config")
    batcher = model.scheduler
    assert isinstance(batcher, DynamicBatcher)
    photos = [
        jpeg("astronaut", (1600, 1200)),
        jpeg("chelsea", (902, 600)),
        jpeg("coffee", (600, 400)),
    ]

    pixels = full_decoding(photos[2])[None]  # a client that sends pixels, batched with them

    async def scenario() -> list[np.ndarray]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            first = asyncio.ensure_future(stub.ModelInfer(request(photos[:1])))
            await asyncio.to_thread(gate.entered.wait, 60)  # the only instance is held
            two = asyncio.ensure_future(stub.ModelInfer(request(photos[1:])))
            sent_pixels = asyncio.ensure_future(stub.ModelInfer(pixels_request(pixels)))
            one = asyncio.ensure_future(stub.ModelInfer(request(photos[:1])))
            await until(lambda: batcher.queued_rows == 4)  # decoded, queued, one batch next
            gate.release()
            answers = await asyncio.gather(first, two, sent_pixels, one)
            expected = [
                await stub.ModelInfer(pixels_request(full_decoding(p)[None])) for p in photos
            ]
        return [outputs(a) for a in answers] + [outputs(e) for e in expected]

    first, two, from_pixels, one, *reference = asyncio.run(scenario())
    # The three queued requests (two decoded on the device, one sent as host pixels) ran as
    # one gathered batch.
    assert gate.rows_seen[:2] == [1, 4]
    assert first.shape == one.shape == from_pixels.shape == (1, 3, 64, 64)
    assert two.shape == (2, 3, 64, 64)
    np.testing.assert_array_equal(from_pixels, reference[2])
    for served, expected in [
        (first[0], reference[0]),
        (two[0], reference[1]),
        (two[1], reference[2]),
        (one[0], reference[0]),
    ]:
        assert float(np.abs(served - expected[0]).max()) <= ONE_LEVEL
