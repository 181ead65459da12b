"""Encoded images decoded where the model runs: nvImageCodec, then a resize graph, on the
model's device, into `DeviceRows` that the model's session takes without a host round trip.

`decode: auto | cpu | gpu` (config.yaml) chooses, once per loaded version, like `device`:
- `cpu`: Pillow in the decode threads (service/images/decode.py), always available.
- `gpu`: nvImageCodec on the model's CUDA device; a model that does not run on CUDA, or a
  server without nvImageCodec, does not load (the reason is in the repository index), as a
  `device: cuda` that cannot be honoured does not.
- `auto` (the default): `gpu` when both hold, else `cpu`; the choice and why are logged
  and returned in ModelMetadata (`decode`, `decode_chosen_by`), as the provider is.

On the device, one request's JPEGs are decoded in one batched nvImageCodec call (GPU or
hardware decoder, full size; the rows that are plain JPEGs are known from the headers the
decode budget already read), then each row goes through a small onnxruntime graph on the
same device: antialiased bilinear resize to the model's input size (ONNX Resize,
`antialias=1`, `exclude_outside=1`: within 1 level of Pillow's BILINEAR, tested), rounding,
colour order and layout, written straight into its row of the request's buffer (IO
binding to a pointer). JPEGs that are not RGB or grey (CMYK) and PNGs are decoded by Pillow
on the host as on the CPU path and go through the same graph (an identity resize). No
DCT-domain scaling: nvImageCodec decodes at full size (how its speed compares with
libjpeg at 1/8 is for `python -m bench.gpu_decode` on a GPU to show; not measured yet).

The same code runs on the CPU (nvImageCodec's CPU backend, onnxruntime's CPU provider):
that is how the plumbing is tested on machines without a GPU
(tests/unit/images/test_device_images.py).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from service.images.decode import ImageHeader, decode_pixels
from service.images.preprocess import BoundPreprocess
from service.runtime.device_rows import DeviceRows, require_cuda_runtime, synchronize_stream
from service.runtime.onnx_runner import CPU, CUDA
from service.tensors.errors import InternalError, ModelLoadError

NVIMGCODEC = "nvidia.nvimgcodec"
INSTALL_HINT = "pip install 'nvidia-nvimgcodec-cu12[nvjpeg]'"


@dataclass(frozen=True)
class DecodeChoice:
    kind: str  # "cpu" or "gpu": where encoded images are decoded
    chosen_by: str  # "config", or "auto: <why>"


def _why_not_gpu(provider: str) -> str | None:
    if provider != CUDA:
        return f"the model runs on {provider}, not {CUDA}"
    if importlib.util.find_spec(NVIMGCODEC) is None:
        return f"nvImageCodec is not installed ({INSTALL_HINT})"
    return None


def choose_decode(requested: str, provider: str) -> DecodeChoice:
    """Where this version decodes encoded images, given the provider actually running."""
    if requested == "cpu":
        return DecodeChoice("cpu", "config")
    why_not = _why_not_gpu(provider)
    if requested == "gpu":
        if why_not is not None:
            raise ModelLoadError(f"decode 'gpu' requested, but {why_not}")
        return DecodeChoice("gpu", "config")
    if why_not is not None:
        return DecodeChoice("cpu", f"auto: {why_not}")
    return DecodeChoice("gpu", "auto: nvImageCodec on the model's CUDA device")


def row_dims(pre: BoundPreprocess) -> tuple[int, int, int]:
    """One decoded row as clients would send it: the resize size, in the client layout
    (the model's own H and W may be variable)."""
    height, width = pre.image_size
    if pre.spec.layout == "NHWC":
        return (height, width, pre.channels)
    return (pre.channels, height, width)


def decoded_channels(pre: BoundPreprocess) -> int:
    """Channels of a decoded image, before colour order and layout: grey or RGB."""
    return 1 if pre.spec.color == "gray" else 3


def resize_graph(pre: BoundPreprocess) -> bytes:
    """uint8 (h, w, C) RGB or grey, any size -> uint8 pixels as clients send them: resized
    to the input size (antialiased bilinear, as Pillow), rounded, in the model's colour
    order and layout."""
    height, width = pre.image_size
    channels = decoded_channels(pre)
    out_dims = row_dims(pre)
    consts: dict[str, npt.NDArray[Any]] = {
        "axis0": np.array([0], np.int64),
        "first_two_index": np.array([0, 1], np.int64),  # (N, C) of (1, C, h, w)
        "size_hw": np.array([height, width], np.int64),
        "low": np.array(0, np.float32),
        "high": np.array(255, np.float32),
    }
    nodes = [
        helper.make_node("Cast", ["pixels"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["as_float"], ["chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["chw", "axis0"], ["nchw"]),
        helper.make_node("Shape", ["nchw"], ["shape"]),
        helper.make_node("Gather", ["shape", "first_two_index"], ["n_c"]),
        helper.make_node("Concat", ["n_c", "size_hw"], ["sizes"], axis=0),
        # exclude_outside=1 renormalizes the filter at the borders, as Pillow does.
        helper.make_node(
            "Resize",
            ["nchw", "", "", "sizes"],
            ["resized"],
            mode="linear",
            antialias=1,
            exclude_outside=1,
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Round", ["resized"], ["rounded"]),
        helper.make_node("Clip", ["rounded", "low", "high"], ["clipped"]),
        helper.make_node("Cast", ["clipped"], ["bytes"], to=TensorProto.UINT8),
        helper.make_node("Squeeze", ["bytes", "axis0"], ["rgb_chw"]),
    ]
    last = "rgb_chw"
    if pre.spec.color == "bgr":
        consts["bgr"] = np.array([2, 1, 0], np.int64)
        nodes.append(helper.make_node("Gather", [last, "bgr"], ["bgr_chw"], axis=0))
        last = "bgr_chw"
    if pre.spec.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [last], ["hwc"], perm=[1, 2, 0]))
        last = "hwc"
    nodes.append(helper.make_node("Identity", [last], ["out"]))
    initializers = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph(
        nodes,
        "cnnserve_device_resize",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["h", "w", channels])],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, list(out_dims))],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


class DeviceImageDecoder:
    """nvImageCodec + the resize graph on one device; `decode` runs in a decode thread.

    `device_id` None: the CPU (nvImageCodec's CPU backend, onnxruntime's CPU provider)."""

    def __init__(self, pre: BoundPreprocess, device_id: int | None) -> None:
        try:
            from nvidia import nvimgcodec
        except ImportError as exc:
            raise ModelLoadError(f"decode 'gpu': cannot import nvImageCodec: {exc}") from None
        self._codec: Any = nvimgcodec
        if device_id is not None:
            try:
                require_cuda_runtime()  # device-to-device copies and stream syncs
            except InternalError as exc:
                raise ModelLoadError(f"decode 'gpu': {exc.message}") from None
        self._pre = pre
        self._dims = row_dims(pre)
        self._channels = decoded_channels(pre)
        self._device = "cpu" if device_id is None else "cuda"
        self._device_id = device_id or 0
        providers: list[Any] = (
            [CPU] if device_id is None else [(CUDA, {"device_id": str(device_id)}), CPU]
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one decode thread each: the pool is the parallelism
        self._resize: ort.InferenceSession | None = ort.InferenceSession(
            resize_graph(pre), options, providers=providers
        )
        gray = pre.spec.color == "gray"
        self._params = nvimgcodec.DecodeParams(
            color_spec=nvimgcodec.ColorSpec.GRAY if gray else nvimgcodec.ColorSpec.SRGB,
            apply_exif_orientation=False,  # as the CPU path (service/images/decode.py)
        )
        self._local = threading.local()  # one nvImageCodec decoder per decode thread

    @property
    def device_label(self) -> str:
        return self._device

    def close(self) -> None:
        """Release the resize session and every decode thread's nvImageCodec decoder now
        (the version is retired), not when this object is collected."""
        self._resize = None
        self._local = threading.local()  # the old one, and each thread's decoder, go

    def _decoder(self) -> Any:
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            codec = self._codec
            if self._device == "cpu":
                decoder = codec.Decoder(
                    device_id=codec.NVIMGCODEC_DEVICE_CPU_ONLY,
                    backends=[codec.Backend(codec.CPU_ONLY)],
                    max_num_cpu_threads=1,
                )
            else:
                decoder = codec.Decoder(device_id=self._device_id, max_num_cpu_threads=1)
            self._local.decoder = decoder
        return decoder

    def decode(self, items: Sequence[object], headers: Sequence[ImageHeader]) -> DeviceRows:
        """Every row of a request, decoded and resized into one buffer on the device (call
        from a decode thread; `headers` from images.read_headers). A row that cannot be
        decoded fails the request, naming it."""
        pre, resize = self._pre, self._resize
        if resize is None:
            raise InternalError("decode after the model version was closed")
        dims = self._dims
        out = DeviceRows.allocate((len(items), *dims), self._device, self._device_id)
        jpegs = [row for row, header in enumerate(headers) if header.plain_jpeg]
        decoded: dict[int, Any] = {}
        if jpegs:
            images = self._decoder().decode([items[row] for row in jpegs], params=self._params)
            if self._device == "cuda":
                synchronize_stream(0)  # nvImageCodec's results are ordered on stream 0
            decoded = dict(zip(jpegs, images, strict=True))
        for row, item in enumerate(items):
            binding = resize.io_binding()
            if not self._bind_decoded(binding, decoded.get(row)):
                # PNG, CMYK JPEG, or a JPEG nvImageCodec could not decode: Pillow on the
                # host, at the input size (it names the row if the data is corrupt).
                binding.bind_cpu_input("pixels", decode_pixels(pre, item, row))
            binding.bind_output(
                "out",
                self._device,
                self._device_id,
                np.uint8,
                list(dims),
                out.row_pointer(row),
            )
            resize.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return out

    def _bind_decoded(self, binding: ort.IOBinding, image: Any) -> bool:
        """Bind a decoded image as the resize graph's input, where it lies; False when
        there is none (nvImageCodec returns None for what it cannot decode), or it is not
        (h, w, channels) with unpadded rows: Pillow decodes that row instead."""
        if image is None:
            return False
        on_device = image.buffer_kind == self._codec.ImageBufferKind.STRIDED_DEVICE
        interface = image.__cuda_array_interface__ if on_device else image.__array_interface__
        shape = list(interface["shape"])
        if len(shape) != 3 or shape[2] != self._channels:
            return False  # not the layout the resize graph takes
        if interface.get("strides") not in (None, _contiguous_strides(shape)):
            return False
        binding.bind_input(
            "pixels",
            "cuda" if on_device else "cpu",
            self._device_id if on_device else 0,
            np.uint8,
            shape,
            int(interface["data"][0]),
        )
        return True


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))
