"""Server-side preprocessing through unmodified tritonclient: pixels, encoded images,
the classification extension, and every bad input."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import yaml
from onnx import TensorProto, helper
from PIL import Image
from tritonclient.utils import InferenceServerException

from export.data import digits_split
from service.configuration.model_config import TensorSpec
from service.images.preprocess import bind, parse_preprocessing
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.digits import served_session
from tests.onnx_models import affine, save
from tests.preprocessing_oracle import expected_model_input
from tests.serving import EXAMPLE_MODELS, ServerThread, running_server


def photograph(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs (no download)."""
    from skimage import data as photos

    array: np.ndarray = getattr(photos, name)()
    return Image.fromarray(array)


MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
COMBOS = list(
    itertools.product(
        ("none", "normalize", "center", "standardize"), ("dataset", "per_image"), ("NHWC", "NCHW")
    )
)


def third_party_cnn() -> onnx.ModelProto:
    """A small CNN as another exporter writes it: input 'data' [batch_size, 3, 32, 32],
    conv-relu-global pool-gemm to 4 logits, named 'scores'."""
    rng = np.random.default_rng(3)
    weights = [
        helper.make_tensor(
            "conv.w", TensorProto.FLOAT, [8, 3, 3, 3], rng.standard_normal(216).astype(np.float32)
        ),
        helper.make_tensor(
            "conv.b", TensorProto.FLOAT, [8], rng.standard_normal(8).astype(np.float32)
        ),
        helper.make_tensor(
            "fc.w", TensorProto.FLOAT, [8, 4], rng.standard_normal(32).astype(np.float32)
        ),
        helper.make_tensor(
            "fc.b", TensorProto.FLOAT, [4], rng.standard_normal(4).astype(np.float32)
        ),
    ]
    nodes = [
        helper.make_node("Conv", ["data", "conv.w", "conv.b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "third_party",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch_size", 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch_size", 4])],
        weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="othertool"
    )
    model.ir_version = 7
    return model


def write_model(
    root: Path, name: str, model: onnx.ModelProto, preprocessing: dict[str, object]
) -> None:
    save(model, root / name / "1" / "model.onnx")
    (root / name / "config.yaml").write_text(yaml.safe_dump({"preprocessing": preprocessing}))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preprocessing")
    for mode, statistics, layout in COMBOS:
        write_model(
            root,
            f"pre_{mode}_{statistics}_{layout}",
            affine(["N", 3, 6, 5]),
            {"mode": mode, "statistics": statistics, "layout": layout, "mean": MEAN, "std": STD},
        )
    write_model(
        root, "photo", affine(["N", 3, 64, 64]), {"mode": "standardize", "mean": MEAN, "std": STD}
    )
    write_model(
        root,
        "third_party",
        third_party_cnn(),
        {"mode": "standardize", "mean": 0.5, "std": 0.5, "color": "bgr"},
    )
    write_model(
        root, "bad_std", affine(["N", 3, 6, 5]), {"mode": "standardize", "std": [0.2, 0, 0.2]}
    )
    write_model(root, "bad_mean", affine(["N", 3, 6, 5]), {"mode": "center", "mean": [0.1, 0.2]})
    digits = EXAMPLE_MODELS / "digits"
    (root / "digits" / "1").mkdir(parents=True)
    (root / "digits" / "1" / "model.onnx").write_bytes((digits / "1" / "model.onnx").read_bytes())
    for name in ("config.yaml", "labels.txt"):
        (root / "digits" / name).write_text((digits / name).read_text())
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerThread]:
    with running_server(repository) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server: ServerThread) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


def pixels_input(name: str, pixels: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(pixels))
    return tensor


def bytes_input(name: str, images: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def output(result: triton.InferResult, name: str) -> np.ndarray:
    array: np.ndarray | None = result.as_numpy(name)
    assert array is not None
    return array


@pytest.mark.parametrize(("mode", "statistics", "layout"), COMBOS)
def test_every_mode_statistics_and_layout(
    client: triton.InferenceServerClient, mode: str, statistics: str, layout: str
) -> None:
    name = f"pre_{mode}_{statistics}_{layout}"
    spec = parse_preprocessing(
        name, {"mode": mode, "statistics": statistics, "layout": layout, "mean": MEAN, "std": STD}
    )
    pre = bind(name, spec, (TensorSpec("x", "FP32", (3, 6, 5)),), batched=True)
    metadata = client.get_model_metadata(name, as_json=True)
    assert metadata["inputs"][0]["datatype"] == "UINT8"
    assert metadata["inputs"][0]["shape"] == ["-1", *map(str, pre.client_dims)]
    pixels = np.random.default_rng(5).integers(0, 256, (4, *pre.client_dims), dtype=np.uint8)
    served = output(client.infer(name, [pixels_input("x", pixels)]), "y")
    bare = ort.InferenceSession(affine(["N", 3, 6, 5]).SerializeToString())
    oracle = expected_model_input(
        pixels, mode=mode, statistics=statistics, layout=layout, mean=MEAN, std=STD
    )
    expected = bare.run(["y"], {"x": oracle.astype(np.float32)})[0]
    assert float(np.abs(served - expected).max()) <= 1e-5


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_encoded_photograph_equals_client_side_decoding(
    client: triton.InferenceServerClient, fmt: str
) -> None:
    photo = photograph("astronaut")  # 512x512 RGB
    encoded = encode(photo, fmt)
    served = output(client.infer("photo", [bytes_input("x", [encoded])]), "y")
    # Same library, same steps on the client: decode (JPEG: at the DCT scale >= 2x the
    # input, as the server does), RGB, bilinear resize, send pixels.
    from_pixels = output(client.infer("photo", [pixels_input("x", client_side(encoded))]), "y")
    np.testing.assert_array_equal(served, from_pixels)


def client_side(encoded: bytes, draft: bool = True) -> np.ndarray:
    """The server's decoding steps for the 64x64 'photo' model, done here."""
    image = Image.open(io.BytesIO(encoded))
    if draft and image.format == "JPEG":
        image.draft("RGB" if image.mode in ("RGB", "L") else None, (128, 128))
    decoded = image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    return np.asarray(decoded, dtype=np.uint8)[None]


def camera_photo(name: str, size: tuple[int, int] = (4000, 3000), **save: object) -> bytes:
    """A real photograph upscaled to a camera's size and re-encoded as JPEG."""
    buffer = io.BytesIO()
    photograph(name).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(
        buffer, format="JPEG", quality=90, **save
    )
    return buffer.getvalue()


def test_scaled_jpeg_decoding_stays_close_to_full_decoding(
    client: triton.InferenceServerClient,
) -> None:
    """A 12 MP photo decoded at 1/8 scale (500x375, >= 2x of 64x64) against full decoding:
    the pixels the model sees differ by at most a few levels."""
    photo = camera_photo("astronaut")
    scaled, full = client_side(photo), client_side(photo, draft=False)
    assert int(np.abs(scaled.astype(int) - full.astype(int)).max()) <= 8
    served = output(client.infer("photo", [bytes_input("x", [photo])]), "y")
    from_pixels = output(client.infer("photo", [pixels_input("x", scaled)]), "y")
    np.testing.assert_array_equal(served, from_pixels)


def _exif_rotated(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


def test_photo_formats_decode_as_documented(client: triton.InferenceServerClient) -> None:
    """Progressive and CMYK JPEGs decode; PNG alpha is dropped; 16-bit PNG is scaled to 8
    bits; EXIF orientation is not applied (pixels as stored, as training pipelines read)."""
    coffee = photograph("coffee").convert("RGB")  # 600x400
    progressive = camera_photo("coffee", (1200, 800), progressive=True)
    rgba = coffee.copy()
    rgba.putalpha(Image.new("L", coffee.size, 40))
    gray16 = np.asarray(coffee.convert("L"), dtype=np.uint16) * 257  # 8-bit values, widened
    cases = {
        "progressive": (progressive, client_side(progressive)),
        "cmyk": (encode(coffee.convert("CMYK"), "JPEG"), None),
        "alpha": (_png(rgba), client_side(_png(coffee))),
        "16-bit": (_png(Image.fromarray(gray16)), client_side(_png(coffee.convert("L")))),
        "exif": (_exif_rotated(coffee), client_side(encode(coffee, "JPEG"), draft=True)),
    }
    for name, (encoded, pixels) in cases.items():
        served = output(client.infer("photo", [bytes_input("x", [encoded])]), "y")
        assert served.shape == (1, 3, 64, 64), name
        if pixels is not None:
            expected = output(client.infer("photo", [pixels_input("x", pixels)]), "y")
            if name == "exif":  # same pixels as stored, within JPEG re-encoding noise
                assert float(np.abs(served - expected).max()) < 0.5, name
            else:
                np.testing.assert_array_equal(served, expected, err_msg=name)


def _declares(width: int, height: int) -> bytes:
    """A JPEG's header declaring width x height, then its data cut short."""
    return camera_photo("camera", (width, height))[:2000]


def test_the_decode_budget_refuses_before_any_decoding(
    client: triton.InferenceServerClient,
) -> None:
    # 4 x 36 MP declared = 144 MP > the 120 MP budget: refused from the headers (the data
    # is cut short, so decoding would have failed differently).
    rows = [_declares(6000, 6000)] * 4
    with pytest.raises(InferenceServerException) as refused:
        client.infer("photo", [bytes_input("x", rows)])
    assert "INVALID_ARGUMENT" in str(refused.value.status())
    assert "declare 144,000,000 pixels, over the decode budget of 120,000,000" in (
        refused.value.message()
    )
    # One of them is under the budget: its header passes, its short data fails to decode.
    with pytest.raises(InferenceServerException) as short:
        client.infer("photo", [bytes_input("x", rows[:1])])
    assert "row 0: cannot decode image" in short.value.message()
    assert client.is_server_live()


def test_grayscale_png_to_an_rgb_model_is_converted(client: triton.InferenceServerClient) -> None:
    gray = photograph("camera")  # 512x512 grayscale
    served = output(client.infer("photo", [bytes_input("x", [encode(gray, "PNG")])]), "y")
    rgb = gray.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    expected = output(client.infer("photo", [pixels_input("x", np.asarray(rgb)[None])]), "y")
    np.testing.assert_array_equal(served, expected)


def test_third_party_bgr_model_from_a_config_of_numbers(
    client: triton.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("third_party", as_json=True)
    assert metadata["inputs"] == [
        {"name": "data", "datatype": "UINT8", "shape": ["-1", "32", "32", "3"]}
    ]
    photo = photograph("chelsea")  # RGB cat photograph
    served = output(
        client.infer("third_party", [bytes_input("data", [encode(photo, "PNG")])]), "scores"
    )
    rgb = np.asarray(photo.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])[None]
    expected_input = (bgr.astype(np.float32) / 255 - 0.5) / 0.5  # the file's own recipe
    bare = ort.InferenceSession(third_party_cnn().SerializeToString())
    expected = bare.run(["scores"], {"data": expected_input.transpose(0, 3, 1, 2)})[0]
    assert float(np.abs(served - expected).max()) <= 1e-5


def test_classification_extension_on_digits(client: triton.InferenceServerClient) -> None:
    pixels = np.ascontiguousarray(digits_split().test_x[:6])
    raw = served_session().run(["probabilities"], {"image": pixels})[0]
    result = client.infer(
        "digits",
        [pixels_input("image", pixels)],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=3)],
    )
    top = output(result, "probabilities")
    assert top.shape == (6, 3)
    labels = [str(i) for i in range(10)]
    for row, scores in zip(top, raw, strict=True):
        order = np.argsort(-scores, kind="stable")[:3]
        parsed = [item.decode().split(":") for item in row]
        assert [int(index) for _, index, _ in parsed] == list(order)
        assert [label for _, _, label in parsed] == [labels[i] for i in order]
        np.testing.assert_allclose([float(s) for s, _, _ in parsed], scores[order], atol=1e-6)


def test_classification_count_must_be_positive(server: ServerThread) -> None:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 1])
    request.raw_input_contents.append(bytes(64))
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 0
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "classification" in str(caught.value.details())


def _bomb() -> bytes:
    # 8000 x 6000 = 48 M pixels declared; a 1-bit PNG of zeros is a few kB on the wire.
    return encode(Image.new("1", (8000, 6000)), "PNG")


GOOD = encode(photograph("coffee"), "PNG")
BAD_IMAGES = {
    "truncated": (GOOD[: len(GOOD) // 2], "cannot decode"),
    "not an image": (b"%PDF-1.4 definitely not a picture", "not a decodable"),
    "zero length": (b"", "empty image"),
    "one pixel": (encode(Image.new("RGB", (1, 1)), "PNG"), "1x1"),
    "decompression bomb": (_bomb(), "exceeds the 40,000,000-pixel limit"),
    "gif": (encode(Image.new("RGB", (8, 8)), "GIF"), "not a decodable"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_encoded_images_name_input_and_row(
    client: triton.InferenceServerClient, case: str
) -> None:
    bad, words = BAD_IMAGES[case]
    with pytest.raises(InferenceServerException) as caught:
        client.infer("photo", [bytes_input("x", [GOOD, bad])])
    assert "INVALID_ARGUMENT" in str(caught.value.status())
    assert "input 'x' row 1" in caught.value.message()
    assert words in caught.value.message()
    assert client.is_server_live()


@pytest.mark.parametrize(
    ("pixels", "words"),
    [
        (np.zeros((1, 64, 64, 1), np.uint8), "[-1, 64, 64, 3]"),  # wrong channel count
        (np.zeros((1, 3, 64, 64), np.uint8), "[-1, 64, 64, 3]"),  # wrong layout
        (np.zeros((1, 65, 64, 3), np.uint8), "[-1, 64, 64, 3]"),  # wrong size, no resize for pixels
    ],
)
def test_bad_pixels(client: triton.InferenceServerClient, pixels: np.ndarray, words: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("photo", [pixels_input("x", pixels)])
    assert "INVALID_ARGUMENT" in str(caught.value.status())
    assert "input 'x'" in caught.value.message() and words in caught.value.message()


def test_non_uint8_pixels(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("x", [1, 64, 64, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("photo", [tensor])
    assert "expected datatype UINT8, got FP32" in caught.value.message()


def test_bad_image_in_a_burst_fails_alone(client: triton.InferenceServerClient) -> None:
    def send(image: bytes) -> object:
        try:
            return output(client.infer("photo", [bytes_input("x", [image])]), "y")
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(send, [GOOD] * 6 + [b"garbage"] + [GOOD] * 6))
    failures = [o for o in outcomes if isinstance(o, InferenceServerException)]
    assert len(failures) == 1 and "row 0" in failures[0].message()
    good = [o for o in outcomes if isinstance(o, np.ndarray)]
    assert len(good) == 12 and all(np.array_equal(g, good[0]) for g in good)


@pytest.mark.parametrize(
    ("model", "key"), [("bad_std", "preprocessing.std"), ("bad_mean", "preprocessing.mean")]
)
def test_bad_preprocessing_config_is_refused_at_load(
    client: triton.InferenceServerClient, model: str, key: str
) -> None:
    assert not client.is_model_ready(model)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [pixels_input("x", np.zeros((1, 6, 5, 3), np.uint8))])
    assert "UNAVAILABLE" in str(caught.value.status())
    assert key in caught.value.message()
    assert client.is_model_ready("photo")
