"""Image preprocessing: the spec and the ONNX subgraph.

Semantics (config key `preprocessing`):
    normalize:   x' = x * scale
    center:      x' = x * scale - mean
    standardize: x' = (x * scale - mean) / std
`mean`/`std` are one number or one per channel, in scaled units. With `statistics:
per_image` they are measured on each sample at request time, over H and W per channel
(`per_image: channel`, the default) or over the whole image (`per_image: image`), and std
is floored at 1/sqrt(N), N the number of values each statistic is taken over, as
tf.image.per_image_standardization does: a flat image then comes out as zeros rather than
as float rounding noise divided by a tiny number.

The subgraph (cast uint8 -> float, layout transpose, scale, mean/std) is spliced in front
of the model's image input at load time, so it runs inside the same onnxruntime session, on
the same device, once per batch; clients send uint8 pixels (a quarter of float32's bytes).
The tests' oracle is written apart from this module, from the formulas alone
(tests/preprocessing_oracle.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.configuration.model_config import TensorSpec
from service.tensors.errors import ConfigError

MODES = ("none", "normalize", "center", "standardize")
STATISTICS = ("dataset", "per_image")
PER_IMAGE = ("channel", "image")
LAYOUTS = ("NHWC", "NCHW")
COLORS = ("rgb", "bgr", "gray")
KEYS = (
    "mode",
    "scale",
    "mean",
    "std",
    "statistics",
    "per_image",
    "layout",
    "color",
    "resize",
    "input",
)
_FLOAT_TYPES = {"FP32": TensorProto.FLOAT, "FP16": TensorProto.FLOAT16, "FP64": TensorProto.DOUBLE}


@dataclass(frozen=True)
class PreprocessSpec:
    """What config.yaml declares, validated on its own (before the model is known)."""

    mode: str = "standardize"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    statistics: str = "dataset"
    per_image: str = "channel"
    layout: str = "NHWC"
    color: str = "rgb"
    resize: tuple[int, int] | None = None
    input: str | None = None


@dataclass(frozen=True)
class BoundPreprocess:
    """A spec bound to one model input: everything the graph, decoder and checks need."""

    spec: PreprocessSpec
    input_name: str
    model_datatype: str
    model_layout: str  # layout of the float tensor the model takes
    channels: int
    height: int
    width: int

    @property
    def client_dims(self) -> tuple[int, int, int]:
        """Dims (without batch) of the uint8 pixels clients send."""
        if self.spec.layout == "NHWC":
            return (self.height, self.width, self.channels)
        return (self.channels, self.height, self.width)

    @property
    def client_spec(self) -> TensorSpec:
        return TensorSpec(self.input_name, "UINT8", self.client_dims)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) that encoded images are resized to."""
        return self.spec.resize or (self.height, self.width)


def _fail(model: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"model '{model}': preprocessing.{key} {message}")


def _numbers(model: str, key: str, value: Any) -> tuple[float, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _fail(model, key, "must be a number or a non-empty list of numbers")
    numbers = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise _fail(model, key, f"must hold finite numbers, got {value!r}")
        numbers.append(float(item))
    return tuple(numbers)


def _choice(model: str, document: Mapping[str, Any], key: str, options: tuple[str, ...]) -> str:
    value = document.get(key, getattr(PreprocessSpec, key))
    if value not in options:
        raise _fail(model, key, f"must be one of {list(options)}, got {value!r}")
    return str(value)


def parse_preprocessing(model: str, document: Any) -> PreprocessSpec:
    if not isinstance(document, dict):
        raise ConfigError(f"model '{model}': preprocessing must be a mapping of keys")
    unknown = set(document) - set(KEYS)
    if unknown:
        raise ConfigError(
            f"model '{model}': unknown keys {sorted(unknown)} in preprocessing "
            f"(allowed: {list(KEYS)})"
        )
    scale = _numbers(model, "scale", document.get("scale", 1 / 255))
    if len(scale) != 1 or scale[0] <= 0:
        raise _fail(model, "scale", f"must be one positive number, got {document.get('scale')!r}")
    mean = _numbers(model, "mean", document.get("mean", 0.0))
    std = _numbers(model, "std", document.get("std", 1.0))
    if any(s <= 0 for s in std):
        raise _fail(model, "std", f"must be positive (it divides), got {list(std)}")
    resize = document.get("resize")
    if resize is not None and (
        not isinstance(resize, list)
        or len(resize) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in resize)
    ):
        raise _fail(model, "resize", f"must be [height, width] in pixels, got {resize!r}")
    name = document.get("input")
    if name is not None and not isinstance(name, str):
        raise _fail(model, "input", f"must be an input name, got {name!r}")
    return PreprocessSpec(
        mode=_choice(model, document, "mode", MODES),
        scale=scale[0],
        mean=mean,
        std=std,
        statistics=_choice(model, document, "statistics", STATISTICS),
        per_image=_choice(model, document, "per_image", PER_IMAGE),
        layout=_choice(model, document, "layout", LAYOUTS),
        color=_choice(model, document, "color", COLORS),
        resize=(resize[0], resize[1]) if resize else None,
        input=name,
    )


def bind(
    model: str, spec: PreprocessSpec, inputs: tuple[TensorSpec, ...], batched: bool
) -> BoundPreprocess:
    """Match the spec to the model's image input; refuse what cannot work, naming the key."""
    if spec.input is not None:
        target = next((s for s in inputs if s.name == spec.input), None)
        if target is None:
            raise _fail(model, "input", f"names '{spec.input}', which the model does not have")
    elif len(inputs) == 1:
        target = inputs[0]
    else:
        raise _fail(model, "input", f"is required: the model has inputs {[s.name for s in inputs]}")
    if target.datatype not in _FLOAT_TYPES:
        raise ConfigError(
            f"model '{model}': input '{target.name}' is {target.datatype}; preprocessing "
            "feeds float inputs (FP32, FP16, FP64)"
        )
    dims = target.dims if batched else target.dims[1:]
    if len(dims) != 3 or (not batched and target.dims[0] != 1):
        raise ConfigError(
            f"model '{model}': input '{target.name}' has shape "
            f"{[-1, *target.dims] if batched else list(target.dims)}; preprocessing needs an "
            "image input [batch, C, H, W] or [batch, H, W, C]"
        )
    if dims[0] in (1, 3):
        layout, (channels, height, width) = "NCHW", dims
    elif dims[2] in (1, 3):
        layout, (height, width, channels) = "NHWC", dims
    else:
        raise ConfigError(
            f"model '{model}': cannot tell the channel axis of input '{target.name}' dims "
            f"{list(dims)} (need 1 or 3 channels first or last)"
        )
    if -1 in (height, width) and spec.resize is None:
        raise ConfigError(
            f"model '{model}': input '{target.name}' has variable height/width; "
            "preprocessing.resize must give the image size"
        )
    if spec.resize is not None:
        if -1 not in (height, width) and spec.resize != (height, width):
            raise _fail(
                model,
                "resize",
                f"{list(spec.resize)} differs from the model's fixed image size {[height, width]}",
            )
        height, width = spec.resize
    for key, values in (("mean", spec.mean), ("std", spec.std)):
        if len(values) not in (1, channels):
            raise _fail(
                model, key, f"has {len(values)} values; the model's input has {channels} channels"
            )
    if (spec.color == "gray") != (channels == 1):
        raise _fail(
            model, "color", f"'{spec.color}' does not fit an input with {channels} channels"
        )
    return BoundPreprocess(spec, target.name, target.datatype, layout, channels, height, width)


def _channel_shape(pre: BoundPreprocess) -> tuple[int, ...]:
    return (1, -1, 1, 1) if pre.model_layout == "NCHW" else (1, 1, 1, -1)


def _reduce_axes(pre: BoundPreprocess) -> tuple[int, ...]:
    if pre.spec.per_image == "image":
        return (1, 2, 3)
    return (2, 3) if pre.model_layout == "NCHW" else (1, 2)


def _std_floor(pre: BoundPreprocess) -> float:
    """1/sqrt(N) for per-image statistics over N values (see the module docstring)."""
    count = pre.height * pre.width * (pre.channels if pre.spec.per_image == "image" else 1)
    return 1.0 / math.sqrt(count)


class _Graph:
    """Collects nodes and initializers with names that cannot clash with the model's."""

    def __init__(self, prefix: str, opset: int) -> None:
        self.prefix = prefix
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def const(self, hint: str, value: npt.NDArray[Any]) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attributes: Any) -> str:
        output = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attributes))
        return output

    def reduce_mean(self, x: str, axes: tuple[int, ...]) -> str:
        if self.opset >= 18:  # axes moved from an attribute to an input in opset 18
            axes_name = self.const("axes", np.asarray(axes, np.int64))
            return self.op("ReduceMean", [x, axes_name], "mean", keepdims=1)
        return self.op("ReduceMean", [x], "mean", axes=list(axes), keepdims=1)


def attach(model: onnx.ModelProto, pre: BoundPreprocess) -> onnx.ModelProto:
    """Return a copy of `model` whose image input takes uint8 pixels in the client layout."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    opset = next((o.version for o in result.opset_import if o.domain in ("", "ai.onnx")), 13)
    original = next(i for i in graph.input if i.name == pre.input_name)
    float_name = f"{pre.input_name}__cnnserve_float"
    for node in graph.node:
        node.input[:] = [float_name if n == pre.input_name else n for n in node.input]
    for output in graph.output:  # an identity-like model may output its input directly
        if output.name == pre.input_name:
            raise ConfigError(f"input '{pre.input_name}' is also a graph output")

    g = _Graph("cnnserve_preprocess", opset)
    spec = pre.spec
    x = g.op("Cast", [pre.input_name], "cast", to=TensorProto.FLOAT)
    if spec.layout != pre.model_layout:
        perm = [0, 3, 1, 2] if pre.model_layout == "NCHW" else [0, 2, 3, 1]
        x = g.op("Transpose", [x], "layout", perm=perm)
    if spec.mode != "none":
        x = g.op("Mul", [x, g.const("scale", np.asarray(spec.scale, np.float32))], "scaled")
    if spec.mode in ("center", "standardize"):
        if spec.statistics == "dataset":
            shape = _channel_shape(pre)
            mean = np.asarray(spec.mean, np.float32).reshape(shape)
            x = g.op("Sub", [x, g.const("mean", mean)], "centered")
            if spec.mode == "standardize":
                std_values = np.asarray(spec.std, np.float32).reshape(shape)
                x = g.op("Div", [x, g.const("std", std_values)], "standardized")
        else:
            axes = _reduce_axes(pre)
            x = g.op("Sub", [x, g.reduce_mean(x, axes)], "centered")
            if spec.mode == "standardize":
                variance = g.reduce_mean(g.op("Mul", [x, x], "square"), axes)
                image_std = g.op("Sqrt", [variance], "std")
                floor = g.const("std_floor", np.asarray(_std_floor(pre), np.float32))
                x = g.op("Div", [x, g.op("Max", [image_std, floor], "std_floor")], "standardized")
    target = _FLOAT_TYPES[pre.model_datatype]
    g.nodes.append(helper.make_node("Cast", [x], [float_name], to=target))

    pixels = helper.make_tensor_value_info(pre.input_name, TensorProto.UINT8, None)
    batch = original.type.tensor_type.shape.dim[0]
    dims = pixels.type.tensor_type.shape.dim
    first = dims.add()
    first.CopyFrom(batch)
    for size in pre.client_dims:
        dims.add().dim_value = size
    position = list(graph.input).index(original)
    graph.input.remove(original)
    graph.input.insert(position, pixels)
    nodes = list(g.nodes) + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(g.initializers)
    onnx.checker.check_model(result)
    return result
