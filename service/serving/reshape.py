"""Triton's `reshape` (config.pbtxt): clients send and receive the declared `dims`, the
model takes and makes the `reshape` shape. Done as preprocessing is, in the graph: a
Reshape node in front of each such input and behind each such output, spliced in at load,
so the request path, validation and metadata see only the client's shapes. With a batch
dimension the node's shape starts with 0 (onnx Reshape: copy that dimension), so every
batch size passes through.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import prod

import numpy as np
import onnx
from onnx import helper, numpy_helper

from service.configuration.model_config import ModelConfig, TensorSpec, dims_agree
from service.tensors.errors import ConfigError

SUFFIX = "__cnnserve_reshape"


def _shape_constant(graph: onnx.GraphProto, name: str, shape: tuple[int, ...]) -> str:
    constant = f"{name}{SUFFIX}_shape"
    graph.initializer.append(numpy_helper.from_array(np.asarray(shape, np.int64), constant))
    return constant


def _set_dims(value: onnx.ValueInfoProto, dims: tuple[int, ...], batched: bool) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for index, dim in enumerate(((-1,) if batched else ()) + dims):
        entry = shape.dim.add()
        if dim == -1:
            entry.dim_param = "batch" if batched and index == 0 else f"{value.name}_d{index}"
        else:
            entry.dim_value = dim


def _check(
    model: str, spec: TensorSpec, reshape: tuple[int, ...], onnx_dims: tuple[int, ...]
) -> None:
    if not dims_agree(reshape, onnx_dims):
        raise ConfigError(
            f"model '{model}': reshape {list(reshape)} of '{spec.name}' disagrees with the ONNX "
            f"file's dims {list(onnx_dims)}"
        )
    if -1 not in spec.dims and -1 not in reshape and prod(spec.dims) != prod(reshape):
        raise ConfigError(
            f"model '{model}': '{spec.name}' dims {list(spec.dims)} ({prod(spec.dims)} "
            f"elements) cannot be reshaped to {list(reshape)} ({prod(reshape)})"
        )


def splice_reshapes(
    proto: onnx.ModelProto,
    model: ModelConfig,  # the ONNX file's own signature (max_batch_size applied)
    declared: Mapping[str, TensorSpec],  # the config.pbtxt's inputs and outputs, by name
    reshapes: Mapping[str, tuple[int, ...]],
) -> onnx.ModelProto:
    graph = proto.graph
    inputs = {value.name: value for value in graph.input}
    outputs = {value.name: value for value in graph.output}
    own = {spec.name: spec for spec in (*model.inputs, *model.outputs)}
    batch = (0,) if model.batched else ()
    for name, reshape in reshapes.items():
        spec = declared.get(name)
        if spec is None or name not in own:
            raise ConfigError(
                f"model '{model.name}': reshape of '{name}', which is not a declared input or "
                "output of the ONNX file"
            )
        _check(model.name, spec, reshape, own[name].dims)
        inner = f"{name}{SUFFIX}"
        if name in inputs:
            for node in graph.node:
                node.input[:] = [inner if each == name else each for each in node.input]
            constant = _shape_constant(graph, name, batch + reshape)
            graph.node.insert(0, helper.make_node("Reshape", [name, constant], [inner]))
            _set_dims(inputs[name], spec.dims, model.batched)
        else:
            for node in graph.node:
                node.output[:] = [inner if each == name else each for each in node.output]
                node.input[:] = [inner if each == name else each for each in node.input]
            constant = _shape_constant(graph, name, batch + spec.dims)
            graph.node.append(helper.make_node("Reshape", [inner, constant], [name]))
            _set_dims(outputs[name], spec.dims, model.batched)
    del graph.value_info[:]  # shapes inferred before the splice no longer hold
    return proto
