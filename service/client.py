"""`cnnserve infer`: send images to a running server and print the top-k classes.

This first version scales and resizes on the client (grayscale or RGB to the model's
H x W, pixels / 255, NCHW or NHWC from the model's metadata). It speaks the v2 protocol
with our own generated stubs, so the serving package needs no tritonclient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
from PIL import Image

from service.datatypes import DATATYPES
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class ImageInput:
    name: str
    channels_first: bool
    channels: int
    height: int
    width: int


def image_input(metadata: pb.ModelMetadataResponse) -> ImageInput:
    if len(metadata.inputs) != 1:
        raise SystemExit(f"model '{metadata.name}' has {len(metadata.inputs)} inputs; need 1")
    tensor = metadata.inputs[0]
    dims = list(tensor.shape)[1:]  # drop the batch dimension
    if tensor.datatype != "FP32" or len(dims) != 3:
        raise SystemExit(
            f"input '{tensor.name}' is {tensor.datatype} {list(tensor.shape)}; "
            "need FP32 [batch, C, H, W] or [batch, H, W, C]"
        )
    if dims[0] in (1, 3):
        return ImageInput(tensor.name, True, dims[0], dims[1], dims[2])
    return ImageInput(tensor.name, False, dims[2], dims[0], dims[1])


def load_pixels(path: Path, spec: ImageInput, invert: str) -> npt.NDArray[np.float32]:
    with Image.open(path) as image:
        converted = image.convert("L" if spec.channels == 1 else "RGB")
        resized = converted.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    if invert == "yes" or (invert == "auto" and pixels.mean() > 0.5):
        pixels = 1.0 - pixels  # models trained on light-on-dark digits
    if spec.channels == 1:
        pixels = pixels[..., None]
    return pixels.transpose(2, 0, 1) if spec.channels_first else pixels


def labels_or_index(labels: Sequence[str], index: int) -> str:
    return labels[index] if index < len(labels) else str(index)


def infer_images(
    address: str, model: str, paths: Sequence[Path], top_k: int, invert: str
) -> list[str]:
    lines = []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
        spec = image_input(metadata)
        batch = np.stack([load_pixels(p, spec, invert) for p in paths]).astype(np.float32)
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=spec.name, datatype="FP32", shape=batch.shape)
        request.raw_input_contents.append(batch.tobytes())
        response = stub.ModelInfer(request)
    output = response.outputs[0]
    scores = np.frombuffer(
        response.raw_output_contents[0], dtype=DATATYPES[output.datatype].numpy
    ).reshape(tuple(output.shape))
    for path, row in zip(paths, scores, strict=True):
        order = np.argsort(-row)[:top_k]
        ranked = ", ".join(f"{int(i)} {float(row[i]):.4f}" for i in order)
        lines.append(f"{path}: {ranked}")
    return lines
