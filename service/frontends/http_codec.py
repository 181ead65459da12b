"""KServe v2 REST bodies <-> the core's records: JSON tensors and Triton's binary tensor
data extension.

A request body is JSON, or, with the `Inference-Header-Content-Length: N` header, N bytes
of JSON followed by the binary tensors of the inputs whose parameters carry
`binary_data_size`, in input order. The same header checks as gRPC run before any data is
read (the model's `check_headers`), then each tensor's data is checked against its shape.
Outputs go back as JSON `data`, or binary (request parameter `binary_data_output`, or an
output's `binary_data`), with the JSON's length in the same header. Wire-level only: the
HTTP server and the error mapping live in service/frontends/http_api.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from service.serving.shared_memory import SharedMemoryRegistry, available, placement
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

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON document and the binary part that follows it."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidArgument(
                f"{HEADER_LENGTH} must be an integer, got {header_length!r}"
            ) from None
        if length < 0 or length > len(body):
            raise InvalidArgument(
                f"{HEADER_LENGTH} is {length}, but the body holds {len(body)} bytes"
            )
        json_part, binary = body[:length], body[length:]
    try:
        document = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return document, binary


def _parameters(where: str, value: object) -> Mapping[str, ParamValue]:
    if value is None:
        return NO_PARAMETERS
    if not isinstance(value, dict) or not all(
        isinstance(v, bool | int | float | str) for v in value.values()
    ):
        raise InvalidArgument(f"{where}: 'parameters' must map names to bool, number or string")
    return value


def _header(index: int, tensor: object) -> TensorHeader:
    if not isinstance(tensor, dict):
        raise InvalidArgument(f"inputs[{index}] must be an object")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"inputs[{index}]: 'name' must be a non-empty string")
    dt = input_datatype(name, str(datatype))  # unknown: raises, naming the input
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidArgument(f"input '{name}': 'shape' must be a list of integers >= 0")
    return TensorHeader(name, dt.name, tuple(shape))


def decode_infer(
    document: dict[str, Any],
    binary: bytes,
    check_headers: HeaderCheck,
    shared_memory: SharedMemoryRegistry | None = None,
) -> DecodedRequest:
    """Headers first (checked by the model), then each input's data (from its shared
    memory region when its parameters name one)."""
    tensors = document.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidArgument("request has no inputs")
    headers = [_header(i, t) for i, t in enumerate(tensors)]
    names = [h.name for h in headers]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"an input is given twice: {names}")
    batch_size = check_headers(headers)
    inputs: dict[str, npt.NDArray[np.generic]] = {}
    offset = 0
    for header, tensor in zip(headers, tensors, strict=True):
        params = _parameters(f"input '{header.name}'", tensor.get("parameters"))
        size = params.get(BINARY_SIZE)
        where = placement(f"input '{header.name}'", params)
        if where is not None:
            dt = DATATYPES[header.datatype]
            registry = available(shared_memory)
            inputs[header.name] = registry.read_array(header.name, where, dt, header.shape)
        elif size is not None:
            inputs[header.name], offset = _binary_input(header, binary, offset, size)
        else:
            inputs[header.name] = _json_input(header, tensor.get("data"))
    if offset != len(binary):
        raise InvalidArgument(
            f"the body has {len(binary) - offset} bytes after the binary inputs it declares"
        )
    return DecodedRequest(
        _request_id(document),
        inputs,
        batch_size,
        _requested_outputs(document.get("outputs")),
        _parameters("request", document.get("parameters")),
    )


def _request_id(document: dict[str, Any]) -> str:
    value = document.get("id", "")
    if not isinstance(value, str):
        raise InvalidArgument("'id' must be a string")
    return value


def _requested_outputs(value: object) -> tuple[RequestedOutput, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in value
    ):
        raise InvalidArgument("'outputs' must be a list of objects with a 'name'")
    return tuple(
        RequestedOutput(o["name"], _parameters(f"output '{o['name']}'", o.get("parameters")))
        for o in value
    )


def _binary_input(
    header: TensorHeader, binary: bytes, offset: int, size: object
) -> tuple[npt.NDArray[np.generic], int]:
    name, dt = header.name, DATATYPES[header.datatype]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"input '{name}': '{BINARY_SIZE}' must be an integer >= 0")
    if offset + size > len(binary):
        raise InvalidArgument(
            f"input '{name}': declares {size} binary bytes, but only {len(binary) - offset} "
            "follow the JSON"
        )
    data = binary[offset : offset + size]
    return from_raw(name, dt, header.shape, data, "binary data"), offset + size


def _json_input(header: TensorHeader, data: object) -> npt.NDArray[np.generic]:
    name, dt = header.name, DATATYPES[header.datatype]
    if not isinstance(data, list):
        raise InvalidArgument(f"input '{name}': no 'data' (and no '{BINARY_SIZE}' parameter)")
    flat = _flatten(name, data)
    count = math.prod(header.shape)
    if len(flat) != count:
        raise InvalidArgument(
            f"input '{name}': shape {list(header.shape)} needs {count} elements, 'data' holds "
            f"{len(flat)}"
        )
    return _typed_array(name, dt, flat).reshape(header.shape)


def _flatten(name: str, data: list[Any]) -> list[Any]:
    """Triton accepts 'data' flat or nested row-major; both become one list."""
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


_END = object()


def _typed_array(name: str, dt: Datatype, flat: list[Any]) -> npt.NDArray[np.generic]:
    kind = dt.numpy.kind
    if dt.name == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument(f"input '{name}': BYTES data must be strings")
        array = np.empty(len(flat), dtype=np.object_)
        array[:] = [v.encode() for v in flat]
        return array
    if kind == "b":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidArgument(f"input '{name}': BOOL data must be true or false")
        return np.asarray(flat, dtype=np.bool_)
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in flat):
        raise InvalidArgument(f"input '{name}': {dt.name} data must be numbers")
    if kind in "iu":
        if any(isinstance(v, float) for v in flat):
            raise InvalidArgument(f"input '{name}': {dt.name} data must be integers")
        return checked_integers(name, dt, flat, "'data'")
    return np.asarray(flat, dtype=dt.numpy)


def encode_infer(
    *,
    model_name: str,
    model_version: str,
    request: DecodedRequest,
    outputs: NamedOutputs,
    shared_memory: SharedMemoryRegistry | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON's length when binary outputs follow it (else None).
    An output asked for in shared memory is written there and described without data."""
    all_binary = request.parameters.get("binary_data_output") is True
    asked = {o.name: o.parameters.get("binary_data") for o in request.outputs}
    places = {o.name: placement(f"output '{o.name}'", o.parameters) for o in request.outputs}
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs:
        dt = output_datatype(array)
        entry: dict[str, Any] = {"name": name, "datatype": dt.name, "shape": list(array.shape)}
        where = places.get(name)
        if where is not None:
            available(shared_memory).write_array(name, where, array)
            entry["parameters"] = where.parameters
        elif asked.get(name, all_binary) is True:
            data = _binary_output(dt, array)
            entry["parameters"] = {BINARY_SIZE: len(data)}
            chunks.append(data)
        else:
            entry["data"] = _json_output(name, dt, array)
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id:
        document["id"] = request.id
    document["outputs"] = described
    head = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _binary_output(dt: Datatype, array: npt.NDArray[np.generic]) -> bytes:
    if dt.name == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array).tobytes()


def _json_output(name: str, dt: Datatype, array: npt.NDArray[np.generic]) -> list[Any]:
    flat = array.reshape(-1)
    if dt.name == "BYTES":
        try:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"output '{name}' holds bytes that are not UTF-8; ask for it as binary data"
            ) from None
    if dt.name == "FP16":
        return [float(v) for v in flat]
    result: list[Any] = flat.tolist()
    return result
