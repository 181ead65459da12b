"""KServe v2 datatype names and their numpy and onnxruntime equivalents.

One table, so that the codec, the config schema and the ONNX signature reader agree on
what every datatype means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    name: str  # v2 protocol name, e.g. "FP32"
    numpy: np.dtype[np.generic]
    ort: str  # onnxruntime type string, e.g. "tensor(float)"
    contents_field: str | None  # InferTensorContents field for typed contents (None: raw only)


def _dt(name: str, np_type: type[np.generic], ort: str, field: str | None) -> Datatype:
    return Datatype(name, np.dtype(np_type), ort, field)


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        _dt("BOOL", np.bool_, "tensor(bool)", "bool_contents"),
        _dt("UINT8", np.uint8, "tensor(uint8)", "uint_contents"),
        _dt("UINT16", np.uint16, "tensor(uint16)", "uint_contents"),
        _dt("UINT32", np.uint32, "tensor(uint32)", "uint_contents"),
        _dt("UINT64", np.uint64, "tensor(uint64)", "uint64_contents"),
        _dt("INT8", np.int8, "tensor(int8)", "int_contents"),
        _dt("INT16", np.int16, "tensor(int16)", "int_contents"),
        _dt("INT32", np.int32, "tensor(int32)", "int_contents"),
        _dt("INT64", np.int64, "tensor(int64)", "int64_contents"),
        # The protocol has no typed field for 16-bit floats: raw contents only.
        _dt("FP16", np.float16, "tensor(float16)", None),
        _dt("FP32", np.float32, "tensor(float)", "fp32_contents"),
        _dt("FP64", np.float64, "tensor(double)", "fp64_contents"),
        _dt("BYTES", np.object_, "tensor(string)", "bytes_contents"),
    )
}

_BY_ORT = {d.ort: d for d in DATATYPES.values()}
_BY_NUMPY = {d.numpy: d for d in DATATYPES.values()}


def from_ort(ort_type: str) -> Datatype | None:
    """The v2 datatype of an onnxruntime type string, or None if v2 cannot carry it."""
    return _BY_ORT.get(ort_type)


def from_numpy(dtype: np.dtype[np.generic]) -> Datatype:
    try:
        return _BY_NUMPY[dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype") from None
