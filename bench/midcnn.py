"""A mid-size CNN for the benches, built with onnx.helper (no torch, no download).

Text-line shaped input (FP32 [N, 3, 48, 192], 110 KB a row), three stride-2 convolutions
and two more (3->32->64->128->128->128 channels, ReLU), global average pooling and a
37-way linear head: about 66 M multiply-adds a row, ~800 img/s on one onnxruntime thread
and ~1,600 on two on this 2-core VM (batch 1 to 32 alike). The weights are random
(seeded): the benches measure throughput, not accuracy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_SHAPE = (3, 48, 192)
CLASSES = 37
# (in channels, out channels, stride) of each 3x3 convolution
CONVOLUTIONS = ((3, 32, 2), (32, 64, 2), (64, 128, 2), (128, 128, 1), (128, 128, 1))


def midcnn(seed: int = 0, *, variable_width: bool = False) -> onnx.ModelProto:
    """`variable_width`: the input is [N, 3, 48, W] (text lines of any length; the network
    is fully convolutional up to the global pooling)."""
    input_dims: list[int | str] = [*INPUT_SHAPE[:2], "W"] if variable_width else [*INPUT_SHAPE]
    rng = np.random.default_rng(seed)
    nodes = []
    weights = []
    source = "x"
    for index, (cin, cout, stride) in enumerate(CONVOLUTIONS):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        b = np.zeros(cout, np.float32)
        weights.append(numpy_helper.from_array(w, f"w{index}"))
        weights.append(numpy_helper.from_array(b, f"b{index}"))
        conv = helper.make_node(
            "Conv",
            [source, f"w{index}", f"b{index}"],
            [f"c{index}"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[stride, stride],
        )
        nodes.append(conv)
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"]))
        source = f"r{index}"
    head = (rng.standard_normal((CONVOLUTIONS[-1][1], CLASSES)) * 0.1).astype(np.float32)
    weights += [numpy_helper.from_array(head, "head"),
                numpy_helper.from_array(np.zeros(CLASSES, np.float32), "head_bias")]  # fmt: skip
    nodes += [
        helper.make_node("GlobalAveragePool", [source], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "head", "head_bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "midcnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_dims])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# (in channels, out channels, stride): about 6.3 M weights (24 MiB FP32) on a 64 x 64 input
DETECTOR_CONVOLUTIONS = (
    (3, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 2), (512, 512, 1), (512, 512, 1),
)  # fmt: skip
DETECTOR_INPUT = (3, 64, 64)


def detector(seed: int = 0) -> onnx.ModelProto:
    """A detector-sized backbone (24 MiB of weights, ~134 M multiply-adds a row, batched
    [N, 3, 64, 64] -> [N, 512, 4, 4]): what a reload of a third-party detector allocates
    (prepacked convolution weights, per-batch-size buffers), for the memory bench."""
    rng = np.random.default_rng(seed)
    nodes, weights, source = [], [], "x"
    for index, (cin, cout, stride) in enumerate(DETECTOR_CONVOLUTIONS):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{index}"))
        nodes.append(
            helper.make_node(
                "Conv",
                [source, f"w{index}"],
                [f"c{index}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"]))
        source = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *DETECTOR_INPUT])],
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["N", 512, 4, 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
