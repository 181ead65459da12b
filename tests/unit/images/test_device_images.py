"""decode: auto | cpu | gpu: the choice and its honest fallback, and the device pipeline's
plumbing (nvImageCodec, the resize graph, rows bound to pointers, device-side gathering)
run on the CPU: nvImageCodec's CPU backend and onnxruntime's CPU provider, the same code
that runs on CUDA (service/images/device_decode.py)."""

from __future__ import annotations

import gc
import importlib.util
import io
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.batching.batch_queue import PendingRequest, Slice, gather_inputs
from service.images import device_decode as device_images
from service.images.decode import client_layout, decode_batch, read_headers
from service.images.device_decode import DeviceImageDecoder, choose_decode, resize_graph
from service.images.preprocess import BoundPreprocess, PreprocessSpec
from service.runtime.device_rows import DeviceRows
from service.runtime.onnx_runner import CPU, CUDA
from service.tensors.errors import InternalError, InvalidArgument, ModelLoadError
from tests.cuda import cuda_test
from tests.onnx_models import affine


def model(color: str = "rgb", layout: str = "NHWC", size: int = 64) -> BoundPreprocess:
    channels = 1 if color == "gray" else 3
    return BoundPreprocess(
        PreprocessSpec(color=color, layout=layout), "x", "FP32", "NCHW", channels, size, size
    )


def photo(name: str, size: tuple[int, int], fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    image = Image.fromarray(getattr(data, name)()).convert(mode).resize(size)
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def full_decoding(pre: BoundPreprocess, encoded: bytes) -> np.ndarray:
    """Pillow, full size, then its bilinear resize: what the device pipeline reproduces."""
    mode = "L" if pre.spec.color == "gray" else "RGB"
    image = Image.open(io.BytesIO(encoded)).convert(mode)
    pixels = np.asarray(image.resize(pre.image_size[::-1], Image.Resampling.BILINEAR))
    return client_layout(pre, pixels.reshape(*pixels.shape[:2], -1))


# -- the choice --------------------------------------------------------------------------


def test_cpu_is_always_honoured() -> None:
    assert choose_decode("cpu", CUDA) == device_images.DecodeChoice("cpu", "config")


def test_auto_falls_back_to_the_cpu_and_says_why() -> None:
    choice = choose_decode("auto", CPU)
    assert choice.kind == "cpu"
    assert choice.chosen_by == f"auto: the model runs on {CPU}, not {CUDA}"


def test_auto_without_nvimagecodec_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == device_images.NVIMGCODEC else real(name, *a),
    )
    choice = choose_decode("auto", CUDA)
    assert choice.kind == "cpu"
    assert "nvImageCodec is not installed" in choice.chosen_by
    assert "nvidia-nvimgcodec-cu12" in choice.chosen_by
    with pytest.raises(ModelLoadError, match="decode 'gpu' requested, but nvImageCodec"):
        choose_decode("gpu", CUDA)


def test_gpu_where_it_cannot_run_refuses_to_load() -> None:
    with pytest.raises(
        ModelLoadError, match=f"decode 'gpu' requested, but the model runs on {CPU}"
    ):
        choose_decode("gpu", CPU)


def test_auto_takes_the_gpu_when_the_model_runs_on_cuda_and_nvimagecodec_is_there() -> None:
    assert importlib.util.find_spec(device_images.NVIMGCODEC) is not None  # the dev extra
    assert choose_decode("auto", CUDA).kind == "gpu"
    assert choose_decode("gpu", CUDA) == device_images.DecodeChoice("gpu", "config")


# -- the resize graph ----------------------------------------------------------------------


@pytest.mark.parametrize(("color", "layout"), [("rgb", "NHWC"), ("bgr", "NCHW"), ("gray", "NHWC")])
@pytest.mark.parametrize("source", [(512, 384), (40, 30)])  # shrinking and enlarging
def test_the_resize_graph_matches_pillow_within_one_level(
    color: str, layout: str, source: tuple[int, int]
) -> None:
    pre = model(color, layout)
    encoded = photo("astronaut", source, fmt="PNG", mode="L" if color == "gray" else "RGB")
    mode = "L" if color == "gray" else "RGB"
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert(mode))
    session = ort.InferenceSession(resize_graph(pre), providers=[CPU])
    out = session.run(None, {"pixels": decoded.reshape(*decoded.shape[:2], -1)})[0]
    expected = full_decoding(pre, encoded)
    assert out.shape == expected.shape == pre.client_dims
    assert int(np.abs(out.astype(int) - expected.astype(int)).max()) <= 1


# -- the pipeline, on the CPU ------------------------------------------------------------


def test_a_request_decodes_into_one_buffer_of_its_rows() -> None:
    """JPEGs through nvImageCodec, PNG and CMYK JPEG through Pillow, all through the graph:
    each row within 1 level of full decoding + Pillow's resize."""
    pre = model("bgr", "NCHW")
    rows = [
        photo("astronaut", (1600, 1200)),
        photo("chelsea", (451, 300), fmt="PNG"),
        photo("coffee", (600, 400), mode="CMYK"),
        photo("camera", (512, 512), mode="L"),  # a grey JPEG to an RGB model
    ]
    decoder = DeviceImageDecoder(pre, None)
    assert decoder.device_label == "cpu"
    decoded = decoder.decode(rows, read_headers(pre, rows))
    assert decoded.shape == (4, *pre.client_dims) and len(decoded) == 4
    pixels = decoded.value.numpy()
    for row, encoded in enumerate(rows):
        # CMYK (row 2): Pillow at the DCT scale, as the CPU path decodes it.
        expected = decode_batch(pre, [encoded])[0] if row == 2 else full_decoding(pre, encoded)
        assert int(np.abs(pixels[row].astype(int) - expected.astype(int)).max()) <= 1, row


def test_a_row_that_cannot_be_decoded_names_itself() -> None:
    good = photo("astronaut", (640, 480))
    corrupt = good[:600] + bytes(2000)  # a valid header, then zeros
    decoder = DeviceImageDecoder(model(), None)
    with pytest.raises(InvalidArgument, match="input 'x' row 1: cannot decode image"):
        decoder.decode([good, corrupt], read_headers(model(), [good, corrupt]))
    on_its_own = decoder.decode([good], read_headers(model(), [good]))
    assert on_its_own.shape == (1, 64, 64, 3)  # the decoder goes on


def test_closing_releases_the_decoders_of_threads_that_live_on() -> None:
    """A decode thread may outlive the version: close() must not leave that thread's
    nvImageCodec decoder (device memory on a GPU) alive as long as the thread."""
    decoder = DeviceImageDecoder(model(), None)
    rows = [photo("astronaut", (64, 64))]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(decoder.decode, rows, read_headers(model(), rows)).result()
        held = pool.submit(lambda: weakref.ref(decoder._decoder())).result()  # that thread's
        assert held() is not None
        decoder.close()
        gc.collect()
        assert held() is None  # released while the thread is still alive


def test_a_closed_decoder_releases_its_session_and_refuses() -> None:
    decoder = DeviceImageDecoder(model(), None)
    decoder.close()
    with pytest.raises(InternalError, match="closed"):
        rows = [photo("astronaut", (64, 64))]
        decoder.decode(rows, read_headers(model(), rows))


# -- device rows through the batcher and the runner ---------------------------------------


def rows_of(array: np.ndarray) -> DeviceRows:
    rows = DeviceRows.allocate(array.shape, "cpu", 0)
    rows.value.update_inplace(array)
    return rows


def test_gather_copies_the_rows_of_each_part_in_order() -> None:
    first = np.arange(3 * 4 * 2, dtype=np.uint8).reshape(3, 4, 2)
    second = 100 + np.arange(2 * 4 * 2, dtype=np.uint8).reshape(2, 4, 2)
    a, b = rows_of(first), rows_of(second)
    gathered = DeviceRows.gather([(a, 1, 3), (b, 0, 1)])
    np.testing.assert_array_equal(gathered.value.numpy(), np.concatenate([first[1:3], second[:1]]))


def test_the_batch_queue_gathers_device_rows_on_the_device() -> None:
    first, second = np.full((2, 3), 7, np.uint8), np.full((1, 3), 9, np.uint8)
    requests = [
        PendingRequest({"x": rows_of(a)}, ("y",), len(a), len(a), None, 0.0, None)  # type: ignore[arg-type]
        for a in (first, second)
    ]
    feeds = gather_inputs([Slice(requests[0], 0, 2), Slice(requests[1], 0, 1)])
    gathered = feeds["x"]
    assert isinstance(gathered, DeviceRows)
    np.testing.assert_array_equal(gathered.value.numpy(), np.concatenate([first, second]))


def test_host_pixels_batched_with_device_rows_are_copied_up_in_order() -> None:
    """A client that sent uint8 pixels and one whose JPEG was decoded on the device share
    a batch: the pixels join the device rows, in the batch's order."""
    host, on_device = np.full((2, 3), 9, np.uint8), np.full((1, 3), 7, np.uint8)
    sent_pixels = PendingRequest({"x": host}, ("y",), 2, 2, None, 0.0, None)  # type: ignore[arg-type]
    sent_jpeg = PendingRequest({"x": rows_of(on_device)}, ("y",), 1, 1, None, 0.0, None)  # type: ignore[arg-type]
    feeds = gather_inputs([Slice(sent_pixels, 1, 2), Slice(sent_jpeg, 0, 1)])
    gathered = feeds["x"]
    assert isinstance(gathered, DeviceRows)
    np.testing.assert_array_equal(gathered.value.numpy(), np.concatenate([host[1:], on_device]))


def test_the_runner_binds_device_rows_as_they_are() -> None:
    from pathlib import Path

    from service.runtime.onnx_runner import OnnxRunner

    pixels = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 5)).astype(np.float32)
    runner = OnnxRunner(
        Path("affine.onnx"), model_bytes=affine(["N", 3, 4, 5]).SerializeToString(), device="cpu"
    )
    host = runner.run({"x": pixels}, ["y"])[0]
    on_device = DeviceRows(ort.OrtValue.ortvalue_from_numpy(pixels), "cpu", 0)
    np.testing.assert_array_equal(runner.run({"x": on_device}, ["y"])[0], host)


# -- on a GPU (skipped elsewhere; bench/gpu.sh runs this file) -----------------------------


@cuda_test
def test_on_the_gpu_rows_decode_gather_and_run_on_the_device() -> None:
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()
    pre = model("rgb", "NCHW")
    rows = [photo("astronaut", (1600, 1200)), photo("chelsea", (451, 300), fmt="PNG")]
    on_gpu = DeviceImageDecoder(pre, 0)
    assert on_gpu.device_label == "cuda"
    headers = read_headers(pre, rows)
    decoded = on_gpu.decode(rows, headers)
    assert decoded.device == "cuda"
    on_cpu = DeviceImageDecoder(pre, None).decode(rows, headers).value.numpy()
    assert int(np.abs(decoded.to_host().astype(int) - on_cpu.astype(int)).max()) <= 1
    gathered = DeviceRows.gather([(decoded, 1, 2), (decoded, 0, 1)])
    np.testing.assert_array_equal(gathered.to_host(), decoded.to_host()[::-1])
