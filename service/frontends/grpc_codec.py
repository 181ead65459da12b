"""KServe v2 gRPC messages <-> the core's plain records (service/tensors/records.py) and numpy.

Decoding is zero-copy for raw contents (`np.frombuffer` over the request's bytes); typed
contents are converted once. Every client mistake becomes `InvalidArgument` naming the
tensor, what was expected and what came. Checking against a model's signature is not done
here (see `signature.py`): this module only checks that a tensor is self-consistent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from service.serving.shared_memory import REGION, SharedMemoryRegistry, available, placement
from service.tensors.datatypes import DATATYPES, Datatype
from service.tensors.errors import InvalidArgument
from service.tensors.records import (
    NO_PARAMETERS,
    DecodedRequest,
    HeaderCheck,
    NamedOutputs,
    ParamValue,
    RequestedOutput,
    TensorHeader,
)
from service.tensors.tensor_contents import (
    checked_integers,
    from_raw,
    input_datatype,
    output_datatype,
    serialize_bytes_tensor,
)
from service.v2 import grpc_service_pb2 as pb


def parameter_value(param: pb.InferParameter) -> ParamValue:
    kind = param.WhichOneof("parameter_choice")
    if kind is None:
        return ""
    value: ParamValue = getattr(param, kind)
    return value


def parameters_to_dict(params: Mapping[str, pb.InferParameter]) -> Mapping[str, ParamValue]:
    if not params:  # the common case: no parameters, no dict
        return NO_PARAMETERS
    return {key: parameter_value(value) for key, value in params.items()}


def set_parameter(target: pb.InferParameter, value: ParamValue) -> None:
    # bool is a subclass of int: test it first.
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value


def _element_count(name: str, shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(
                f"input '{name}': shape {list(shape)} has a negative dimension; "
                "a request must give concrete dimensions"
            )
        count *= dim
    return count


def _mixed_contents(name: str) -> InvalidArgument:
    return InvalidArgument(
        f"input '{name}': typed contents and raw_input_contents are mixed in one request; "
        "use one or the other for every input"
    )


def _decode_typed(
    name: str, dt: Datatype, shape: Sequence[int], contents: pb.InferTensorContents
) -> npt.NDArray[np.generic]:
    count = _element_count(name, shape)
    if dt.contents_field is None:
        raise InvalidArgument(
            f"input '{name}': datatype {dt.name} has no typed contents field; send it in "
            "raw_input_contents"
        )
    values = getattr(contents, dt.contents_field)
    if len(values) != count:
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} needs {count} elements, "
            f"{dt.contents_field} holds {len(values)}"
        )
    for other in DATATYPES.values():
        field_name = other.contents_field
        if field_name and field_name != dt.contents_field and len(getattr(contents, field_name)):
            raise InvalidArgument(
                f"input '{name}': datatype {dt.name} is carried in {dt.contents_field}, "
                f"but {field_name} is set"
            )
    if dt.name == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    if dt.numpy.kind in "iu":
        return checked_integers(name, dt, values, dt.contents_field).reshape(shape)
    return np.asarray(values, dtype=dt.numpy).reshape(shape)


def read_headers(request: pb.ModelInferRequest) -> list[TensorHeader]:
    """The declared inputs, checked for self-consistency (no payload is touched)."""
    if not request.inputs:
        raise InvalidArgument("request has no inputs")
    raw = request.raw_input_contents
    in_memory = sum(REGION in tensor.parameters for tensor in request.inputs)
    if raw and len(raw) != len(request.inputs) - in_memory:
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but the request declares "
            f"{len(request.inputs) - in_memory} inputs outside shared memory (one entry per "
            "input, in order)"
        )
    headers: list[TensorHeader] = []
    seen: set[str] = set()
    for tensor in request.inputs:
        name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
        if name in seen:
            raise InvalidArgument(f"input '{name}' is given twice")
        seen.add(name)
        if datatype not in DATATYPES:
            input_datatype(name, datatype)  # raises, naming the input
        if shape and min(shape) < 0:
            _element_count(name, shape)  # raises, naming the input
        headers.append(TensorHeader(name, datatype, shape))
    return headers


def decode_infer_request(
    request: pb.ModelInferRequest,
    check_headers: HeaderCheck,
    shared_memory: SharedMemoryRegistry | None = None,
) -> DecodedRequest:
    """Check the declared inputs with `check_headers`, then turn contents into numpy arrays
    (an input with shared memory parameters is read from its region)."""
    raw = request.raw_input_contents
    if (
        len(raw) == 1
        and len(request.inputs) == 1
        and not request.outputs
        and REGION not in request.inputs[0].parameters  # both: the general path refuses it
    ):
        return _decode_one_raw(request, raw[0], check_headers)
    headers = read_headers(request)
    batch_size = check_headers(headers)
    inputs: dict[str, npt.NDArray[np.generic]] = {}
    raw_index = 0
    for header, tensor in zip(headers, request.inputs, strict=True):
        name, shape = header.name, header.shape
        dt = DATATYPES[header.datatype]
        has_typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
        where = (
            placement(f"input '{name}'", parameters_to_dict(tensor.parameters))
            if tensor.parameters
            else None
        )
        if where is not None:
            if has_typed:
                raise _mixed_contents(name)
            inputs[name] = available(shared_memory).read_array(name, where, dt, shape)
        elif raw:  # the common case
            if has_typed:
                raise _mixed_contents(name)
            inputs[name] = from_raw(name, dt, shape, raw[raw_index])
            raw_index += 1
        elif has_typed:
            inputs[name] = _decode_typed(name, dt, shape, tensor.contents)
        else:
            raise InvalidArgument(f"input '{name}': no contents (neither raw nor typed)")
    outputs = (
        tuple(
            RequestedOutput(out.name, parameters_to_dict(out.parameters)) for out in request.outputs
        )
        if request.outputs
        else ()
    )
    return DecodedRequest(
        request.id, inputs, batch_size, outputs, parameters_to_dict(request.parameters)
    )


def _decode_one_raw(
    request: pb.ModelInferRequest, raw: bytes, check_headers: HeaderCheck
) -> DecodedRequest:
    """The common request (one input in raw_input_contents, every output): the same checks
    and errors as the general path, without its per-input bookkeeping. Served requests pay
    its Python several times over (bench/README.md, "Serving cost per request")."""
    tensor = request.inputs[0]
    name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
    dt = input_datatype(name, datatype)
    if shape and min(shape) < 0:
        _element_count(name, shape)  # raises, naming the input
    batch_size = check_headers((TensorHeader(name, datatype, shape),))
    if tensor.HasField("contents") and tensor.contents.ByteSize() > 0:
        raise _mixed_contents(name)
    return DecodedRequest(
        request.id,
        {name: from_raw(name, dt, shape, raw)},
        batch_size,
        (),
        parameters_to_dict(request.parameters),
    )


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: NamedOutputs,
    requested: Sequence[RequestedOutput] = (),
    shared_memory: SharedMemoryRegistry | None = None,
) -> pb.ModelInferResponse:
    """Build the response with raw_output_contents: one `tobytes` per output, or, for an
    output asked for in shared memory, its bytes written there and an empty entry (clients
    index raw_output_contents by output position)."""
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id
    )
    places = {
        out.name: where
        for out in requested
        if (where := placement(f"output '{out.name}'", out.parameters)) is not None
    }
    for name, array in outputs:
        dt = output_datatype(array)
        entry = response.outputs.add(name=name, datatype=dt.name, shape=array.shape)
        where = places.get(name)
        if where is not None:
            available(shared_memory).write_array(name, where, array)
            for key, value in where.parameters.items():
                set_parameter(entry.parameters[key], value)
            response.raw_output_contents.append(b"")
        elif dt.name == "BYTES":
            response.raw_output_contents.append(serialize_bytes_tensor(array))
        else:
            response.raw_output_contents.append(array.tobytes())
    return response
