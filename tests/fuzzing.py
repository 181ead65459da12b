"""Hypothesis strategies for ModelInfer requests: random names, datatypes, shapes, byte
lengths, parameters and raw/typed mixes, biased towards almost-valid requests for the
served models (so that the checks past the first one get exercised too).

Shared by tests/integration/frontends/test_fuzz.py (a few hundred examples in `make test`) and
bench/fuzz.py (the long run)."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from hypothesis import strategies as st

from service.tensors.datatypes import DATATYPES
from service.v2 import grpc_service_pb2 as pb

T = TypeVar("T")

# Answers a client mistake may get. INTERNAL and UNKNOWN mean a bug on our side.
CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)

DATATYPE_NAMES = [*sorted(DATATYPES), "BYTES", "FP8", "", "int32", "FP32 "]
TYPED_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)

names = st.one_of(
    st.sampled_from(["image", "images", "probabilities", "", "IMAGE"]),
    st.text(max_size=20),
)


def mostly(common: T, others: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`common` seven times in ten, else something from `others`."""
    return st.integers(0, 9).flatmap(lambda i: st.just(common) if i < 7 else others)


model_names = mostly(
    "digits", st.one_of(st.sampled_from(["", "missing", "../digits"]), st.text(max_size=12))
)
versions = mostly("", st.sampled_from(["1", "2", "-1", "01", "x"]))
dims = st.one_of(
    st.sampled_from([1, 8, 1, 8, 1, 0, 2, 64, 65]),
    st.integers(min_value=-3, max_value=2**40),
    st.sampled_from([-1, 2**31, 2**62, 2**63 - 1, -(2**63)]),
)
shapes = st.one_of(
    st.just([1, 8, 8, 1]),
    st.lists(dims, max_size=6),
)


@st.composite
def parameter_maps(draw: st.DrawFn, keys: st.SearchStrategy[str]) -> dict[str, pb.InferParameter]:
    out: dict[str, pb.InferParameter] = {}
    for key in draw(st.lists(keys, max_size=3)):
        parameter = pb.InferParameter()
        choice = draw(st.sampled_from(["bool", "int64", "string", "double", "uint64", "none"]))
        if choice == "bool":
            parameter.bool_param = draw(st.booleans())
        elif choice == "int64":
            parameter.int64_param = draw(st.integers(min_value=-(2**63), max_value=2**63 - 1))
        elif choice == "string":
            parameter.string_param = draw(st.text(max_size=10))
        elif choice == "double":
            parameter.double_param = draw(st.floats(allow_nan=True))
        elif choice == "uint64":
            parameter.uint64_param = draw(st.integers(min_value=0, max_value=2**64 - 1))
        out[key] = parameter
    return out


request_parameter_keys = st.one_of(
    st.sampled_from(["timeout", "priority", "sequence_id", "binary_data_output"]),
    st.text(max_size=8),
)
output_parameter_keys = st.one_of(
    st.sampled_from(["classification", "binary_data"]), st.text(max_size=8)
)


@st.composite
def near_valid_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A digits request that is right in most respects: pixels (raw or typed) or encoded
    image bytes, a batch of 1..70 rows, and now and then one thing wrong."""
    request = pb.ModelInferRequest(model_name="digits", model_version=draw(versions))
    rows = draw(st.integers(1, 70))
    form = draw(st.sampled_from(["raw", "typed", "encoded"]))
    if form == "encoded":
        tensor = request.inputs.add(name="image", datatype="BYTES", shape=[rows])
        images = draw(st.lists(st.binary(max_size=64), min_size=rows, max_size=rows))
        if draw(st.booleans()):
            tensor.contents.bytes_contents.extend(images)
        else:
            raw = b"".join(len(i).to_bytes(4, "little") + i for i in images)
            request.raw_input_contents.append(raw[: draw(st.integers(0, len(raw)))])
    else:
        shape = [rows, 8, 8, 1] if draw(st.integers(0, 4)) else draw(shapes)
        tensor = request.inputs.add(name="image", datatype="UINT8", shape=shape)
        size = rows * 64 + draw(mostly(0, st.integers(-64, 64)))
        if form == "raw":
            request.raw_input_contents.append(
                draw(st.binary(min_size=max(0, size), max_size=max(0, size)))
            )
        else:
            tensor.contents.uint_contents.extend(
                draw(st.lists(st.integers(0, 300), min_size=max(0, size), max_size=max(0, size)))
            )
    if draw(st.booleans()):
        output = request.outputs.add(name=draw(mostly("probabilities", names)))
        for key, value in draw(parameter_maps(output_parameter_keys)).items():
            output.parameters[key].CopyFrom(value)
    for key, value in draw(parameter_maps(request_parameter_keys)).items():
        request.parameters[key].CopyFrom(value)
    return request


@st.composite
def arbitrary_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(model_names),
        model_version=draw(versions),
        id=draw(st.text(max_size=8)),
    )
    for key, value in draw(parameter_maps(request_parameter_keys)).items():
        request.parameters[key].CopyFrom(value)
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        tensor = request.inputs.add(
            name=draw(names), datatype=draw(st.sampled_from(DATATYPE_NAMES)), shape=draw(shapes)
        )
        for key, value in draw(parameter_maps(st.text(max_size=8))).items():
            tensor.parameters[key].CopyFrom(value)
        if use_raw or draw(st.integers(0, 9)) == 0:  # sometimes raw and typed mixed
            length = draw(st.sampled_from([64, 0, 63, 65, 256, 4 * 64, 8]))
            request.raw_input_contents.append(draw(st.binary(min_size=length, max_size=length)))
        if not use_raw:
            field = draw(st.sampled_from(TYPED_FIELDS))
            values: list[Any]
            if field == "bytes_contents":
                values = draw(st.lists(st.binary(max_size=32), max_size=70))
            elif field == "bool_contents":
                values = draw(st.lists(st.booleans(), max_size=70))
            elif field in ("fp32_contents", "fp64_contents"):
                values = draw(st.lists(st.floats(width=32), max_size=70))
            elif field.startswith("uint"):
                values = draw(st.lists(st.integers(0, 2**32 - 1), max_size=70))
            else:
                values = draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=70))
            getattr(tensor.contents, field).extend(values)
    if draw(st.booleans()):  # raw contents without (or beyond) a matching input
        request.raw_input_contents.append(draw(st.binary(max_size=80)))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        output = request.outputs.add(name=draw(names))
        for key, value in draw(parameter_maps(output_parameter_keys)).items():
            output.parameters[key].CopyFrom(value)
    return request


def infer_requests() -> st.SearchStrategy[pb.ModelInferRequest]:
    return st.one_of(near_valid_requests(), arbitrary_requests())


whole_messages = st.one_of(
    st.binary(max_size=300),
    infer_requests()
    .map(lambda r: r.SerializeToString())
    .flatmap(
        # A valid message with bytes flipped, cut or appended.
        lambda data: st.tuples(
            st.just(data), st.integers(0, max(0, len(data))), st.binary(max_size=8)
        ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :])
    ),
)
