"""A model's signature: inferred from the ONNX file, and checked on every request.

Inference copes with what third-party exporters write: symbolic dims ("batch_size", "?",
"unk__123"), -1 or missing dims, a batch fixed at 1, several inputs and outputs, and
tensor names with '/', ':' or '.' in them (names are used verbatim, never parsed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from service.configuration.model_config import DEFAULT_MAX_BATCH_SIZE, ModelConfig, TensorSpec
from service.tensors.datatypes import from_numpy, from_ort
from service.tensors.errors import InvalidArgument, ModelLoadError
from service.tensors.records import OnnxTensor, RequestedOutput, TensorHeader


def onnx_signature(model: onnx.ModelProto) -> tuple[list[OnnxTensor], list[OnnxTensor]]:
    """The graph's inputs and outputs as onnxruntime would report them (before a session)."""
    initializers = {t.name for t in model.graph.initializer}

    def describe(info: onnx.ValueInfoProto) -> OnnxTensor:
        tensor_type = info.type.tensor_type
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            ort_type = from_numpy(np.dtype(dtype)).ort
        except (KeyError, ValueError):
            ort_type = f"onnx elem_type {tensor_type.elem_type}"
        dims: list[int | str | None] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        return OnnxTensor(info.name, ort_type, tuple(dims))

    inputs = [describe(i) for i in model.graph.input if i.name not in initializers]
    return inputs, [describe(o) for o in model.graph.output]


def _is_variable(dim: int | str | None) -> bool:
    return not isinstance(dim, int) or dim < 0


def _concrete(dim: int | str | None) -> int:
    return -1 if _is_variable(dim) else int(dim)  # type: ignore[arg-type]


def _batchable(tensors: Sequence[OnnxTensor]) -> bool:
    # Batch along axis 0 only if every input and output has a variable first dimension;
    # a batch fixed at 1 (or any fixed size) means the file was exported unbatched.
    return all(len(t.shape) >= 1 and _is_variable(t.shape[0]) for t in tensors)


def _spec(model: str, tensor: OnnxTensor, batched: bool) -> TensorSpec:
    datatype = from_ort(tensor.ort_type)
    if datatype is None:
        raise ModelLoadError(
            f"model '{model}': tensor '{tensor.name}' has type {tensor.ort_type}, which the v2 "
            "protocol cannot carry"
        )
    dims = tuple(_concrete(d) for d in tensor.shape)
    return TensorSpec(name=tensor.name, datatype=datatype.name, dims=dims[1:] if batched else dims)


def infer_config(
    model: str, inputs: Sequence[OnnxTensor], outputs: Sequence[OnnxTensor]
) -> ModelConfig:
    """The config a model gets when its config.yaml is absent (Triton's auto-complete)."""
    if not inputs or not outputs:
        raise ModelLoadError(f"model '{model}': the ONNX graph has no inputs or no outputs")
    batched = _batchable([*inputs, *outputs])
    return ModelConfig(
        name=model,
        inputs=tuple(_spec(model, t, batched) for t in inputs),
        outputs=tuple(_spec(model, t, batched) for t in outputs),
        max_batch_size=DEFAULT_MAX_BATCH_SIZE if batched else 0,
    )


class InputCheck:
    """`check_inputs` for one model, with its signature prepared once: requests that match
    take one pass over their headers; anything else (including encoded images) goes to
    `check_inputs`, which names what is wrong."""

    def __init__(self, config: ModelConfig) -> None:
        self._config = config
        self._specs = {s.name: (s.datatype, config.full_shape(s)) for s in config.inputs}
        self._fast = not config.encoded_inputs
        self._batched = config.batched

    def __call__(self, headers: Sequence[TensorHeader]) -> int:
        if self._fast and len(headers) == len(self._specs):
            batch = self._matching_batch(headers)
            if batch:
                return batch
        return check_inputs(self._config, headers)

    def _matching_batch(self, headers: Sequence[TensorHeader]) -> int:
        """The batch size when every header matches its spec (names are unique: the codec
        refused duplicates), else 0."""
        batch = 0
        for name, datatype, shape in headers:
            spec = self._specs.get(name)
            if spec is None or spec[0] != datatype or len(spec[1]) != len(shape):
                return 0
            for want, got in zip(spec[1], shape, strict=True):
                if got < 1 or (want != -1 and want != got):
                    return 0
            rows = shape[0] if self._batched else 1
            if batch and rows != batch:
                return 0
            batch = rows
        return batch


def check_inputs(config: ModelConfig, headers: Sequence[TensorHeader]) -> int:
    """Check declared inputs against the signature; return the batch size (1 if unbatched)."""
    by_name = {header.name: header for header in headers}
    expected = {spec.name for spec in config.inputs}
    missing = sorted(expected - set(by_name))
    if missing:
        raise InvalidArgument(
            f"model '{config.name}': missing input(s) {missing}; expected {sorted(expected)}"
        )
    unexpected = sorted(set(by_name) - expected)
    if unexpected:
        raise InvalidArgument(
            f"model '{config.name}': unexpected input(s) {unexpected}; expected {sorted(expected)}"
        )
    batch_sizes: dict[str, int] = {}
    for spec in config.inputs:
        header = by_name[spec.name]
        if header.datatype == "BYTES" and spec.name in config.encoded_inputs:
            batch_sizes[spec.name] = _encoded_batch(config, spec, header)
            continue
        if header.datatype != spec.datatype:
            raise InvalidArgument(
                f"input '{spec.name}': expected datatype {spec.datatype}, got {header.datatype}"
            )
        want = config.full_shape(spec)
        got = header.shape
        if len(got) != len(want):
            raise InvalidArgument(
                f"input '{spec.name}': expected rank {len(want)} shape {list(want)}, got "
                f"rank {len(got)} shape {list(got)}"
            )
        if 0 in got:
            what = "batch of 0" if config.batched and got[0] == 0 else "a dimension of 0"
            raise InvalidArgument(
                f"input '{spec.name}': shape {list(got)} has {what}; nothing to infer"
            )
        for axis, (w, g) in enumerate(zip(want, got, strict=True)):
            if w != -1 and w != g:
                raise InvalidArgument(
                    f"input '{spec.name}': expected shape {list(want)}, got {list(got)} "
                    f"(dimension {axis} must be {w})"
                )
        if config.batched:
            batch_sizes[spec.name] = got[0]
    if len(set(batch_sizes.values())) > 1:
        raise InvalidArgument(
            f"model '{config.name}': inputs disagree on the batch size: {batch_sizes}"
        )
    return next(iter(batch_sizes.values()), 1)


def _encoded_batch(config: ModelConfig, spec: TensorSpec, header: TensorHeader) -> int:
    """Encoded images: one per batch row, shape [N] or [N, 1]."""
    shape = header.shape
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
        raise InvalidArgument(
            f"input '{spec.name}': BYTES holds one encoded image per batch row, shape [N] or "
            f"[N, 1]; got {list(shape)}"
        )
    if not config.batched and shape[0] != 1:
        raise InvalidArgument(
            f"input '{spec.name}': model '{config.name}' is unbatched; send one image, got "
            f"{shape[0]}"
        )
    return shape[0]


def select_outputs(config: ModelConfig, requested: Sequence[RequestedOutput]) -> tuple[str, ...]:
    """Names of the outputs to return: the requested ones, or every output."""
    if not requested:
        return tuple(spec.name for spec in config.outputs)
    names = []
    for out in requested:
        if config.output(out.name) is None:
            raise InvalidArgument(
                f"model '{config.name}': unknown output '{out.name}'; outputs are "
                f"{[spec.name for spec in config.outputs]}"
            )
        names.append(out.name)
    return tuple(names)
