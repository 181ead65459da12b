"""Small ONNX files with the awkward signatures that third-party exporters write.

Built with onnx.helper (no torch), so the tests make them themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper

Dim = int | str | None  # int: fixed (or -1), str: symbolic name, None: unknown


def _value_info(name: str, elem: int, dims: Sequence[Dim]) -> onnx.ValueInfoProto:
    info = helper.make_tensor_value_info(name, elem, None)
    shape = info.type.tensor_type.shape
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        elif isinstance(dim, str):
            entry.dim_param = dim
    return info


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def two_in_two_out(batch: Dim = "N") -> onnx.ModelProto:
    """Inputs 'input/0:x.y' and 'scale.1' (FP32 [batch, 4]); outputs 'sum:0' and 'out/prod'.

    sum = a + b, prod = a * b: results a test can compute exactly with numpy.
    """
    a, b = "input/0:x.y", "scale.1"
    graph = helper.make_graph(
        [
            helper.make_node("Add", [a, b], ["sum:0"]),
            helper.make_node("Mul", [a, b], ["out/prod"]),
        ],
        "awkward",
        [
            _value_info(a, TensorProto.FLOAT, [batch, 4]),
            _value_info(b, TensorProto.FLOAT, [batch, 4]),
        ],
        [
            _value_info("sum:0", TensorProto.FLOAT, [batch, 4]),
            _value_info("out/prod", TensorProto.FLOAT, [batch, 4]),
        ],
    )
    return _model(graph)


def doubler(dims: Sequence[Dim], elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """y = x + x, with the given input/output shape."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "doubler",
        [_value_info("x", elem, dims)],
        [_value_info("y", elem, dims)],
    )
    return _model(graph)


def affine(dims: Sequence[Dim], opset: int = 17) -> onnx.ModelProto:
    """y = 2x + 1 on a float input 'x' of the given shape (an image model's stand-in)."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["twice"]),
            helper.make_node("Add", ["twice", "one"], ["y"]),
        ],
        "affine",
        [_value_info("x", TensorProto.FLOAT, dims)],
        [_value_info("y", TensorProto.FLOAT, dims)],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def wide(inputs: int, outputs: int, seed: int, batch: Dim = 1) -> onnx.ModelProto:
    """y = x @ W with a random W [inputs, outputs] (4 * inputs * outputs bytes of weights):
    a stand-in for a large third-party model whose memory must come back. Fixed batch 1 by
    default; a symbolic `batch` makes it batched (config-less: instances: auto times it)."""
    import numpy as np
    from onnx import numpy_helper

    weights = np.random.default_rng(seed).standard_normal((inputs, outputs), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "wide",
        [_value_info("x", TensorProto.FLOAT, [batch, inputs])],
        [_value_info("y", TensorProto.FLOAT, [batch, outputs])],
        [numpy_helper.from_array(weights, "W")],
    )
    return _model(graph)
