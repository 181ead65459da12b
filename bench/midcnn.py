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


def midcnn(seed: int = 0) -> onnx.ModelProto:
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
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
