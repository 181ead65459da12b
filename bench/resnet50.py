"""A ResNet-50-sized CNN written directly as ONNX (no torch): the GPU machine has no
network and no torch, and the graph must be built there. Random He-initialised weights
(seeded), batch norm folded into the convolutions' biases as an exported model has it;
fp32 or fp16 end to end. 25.5 M parameters, 4.1 GFLOPs per 224x224 image, like
torchvision's resnet50."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # width, blocks, first stride
EXPANSION = 4
CLASSES = 1000


class _Graph:
    def __init__(self, dtype: type[np.floating], seed: int) -> None:
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def constant(self, array: np.ndarray, kind: str) -> str:
        name = self.name(kind)
        self.weights.append(numpy_helper.from_array(array.astype(self.dtype), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int, relu: bool) -> str:
        fan_in = c_in * k * k
        w = self.rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / fan_in)
        b = np.zeros(c_out)
        out = self.name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.constant(w, "w"), self.constant(b, "b")],
                [out],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
            )
        )
        return self.relu(out) if relu else out

    def relu(self, x: str) -> str:
        out = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    def add(self, a: str, b: str) -> str:
        out = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out]))
        return out

    def bottleneck(self, x: str, c_in: int, width: int, stride: int) -> str:
        c_out = width * EXPANSION
        y = self.conv(x, c_in, width, 1, 1, relu=True)
        y = self.conv(y, width, width, 3, stride, relu=True)
        y = self.conv(y, width, c_out, 1, 1, relu=False)
        shortcut = (
            x if stride == 1 and c_in == c_out else self.conv(x, c_in, c_out, 1, stride, False)
        )
        return self.relu(self.add(y, shortcut))


def resnet50(dtype: type[np.floating] = np.float32, seed: int = 0) -> onnx.ModelProto:
    """Input `image` [N, 3, 224, 224], output `logits` [N, 1000], in `dtype`."""
    g = _Graph(dtype, seed)
    x = g.conv("image", 3, 64, 7, 2, relu=True)
    pooled = g.name("maxpool")
    g.nodes.append(
        helper.make_node(
            "MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        )
    )
    x, channels = pooled, 64
    for width, blocks, stride in STAGES:
        for block in range(blocks):
            x = g.bottleneck(x, channels, width, stride if block == 0 else 1)
            channels = width * EXPANSION
    gap, flat = g.name("gap"), g.name("flatten")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], [gap]))
    g.nodes.append(helper.make_node("Flatten", [gap], [flat], axis=1))
    fc = g.rng.standard_normal((CLASSES, channels)) * np.sqrt(1.0 / channels)
    g.nodes.append(
        helper.make_node(
            "Gemm",
            [flat, g.constant(fc, "fc_w"), g.constant(np.zeros(CLASSES), "fc_b")],
            ["logits"],
            transB=1,
        )
    )
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes,
        "resnet50",
        [helper.make_tensor_value_info("image", elem, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", elem, ["batch", CLASSES])],
        g.weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_resnet50(folder: Path, dtype: type[np.floating], max_batch_size: int) -> None:
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(resnet50(dtype), str(folder / "1" / "model.onnx"))
    (folder / "config.yaml").write_text(f"max_batch_size: {max_batch_size}\n")
