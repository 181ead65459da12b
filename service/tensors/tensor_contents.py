"""A tensor's contents as both protocols carry them, checked the same way: datatype names,
raw bytes (gRPC raw contents, the REST binary extension; BYTES as 4-byte little-endian
lengths each followed by its bytes), integer ranges, and the datatype of an output."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from service.tensors.datatypes import DATATYPES, Datatype, from_numpy
from service.tensors.errors import InvalidArgument


def input_datatype(name: str, datatype: str) -> Datatype:
    """The Datatype of a declared name, or InvalidArgument naming the input."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        known = ", ".join(DATATYPES)
        raise InvalidArgument(
            f"input '{name}': unknown datatype '{datatype}' (expected one of {known})"
        ) from None


def from_raw(
    name: str, dt: Datatype, shape: Sequence[int], raw: bytes, what: str = "raw contents"
) -> npt.NDArray[np.generic]:
    """Zero-copy for numbers (`np.frombuffer`); `raw` must hold exactly the shape."""
    count = math.prod(shape)  # dims are known >= 0 (checked with the headers)
    if dt.name == "BYTES":
        return deserialize_bytes_tensor(name, raw, count).reshape(shape)
    expected = count * dt.numpy.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input '{name}': {what} hold {len(raw)} bytes, but shape {list(shape)} "
            f"of {dt.name} needs {expected} bytes"
        )
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)


def checked_integers(
    name: str, dt: Datatype, values: object, where: str
) -> npt.NDArray[np.generic]:
    """Integer `values` as `dt`; out-of-range values (300 for UINT8) are a client error,
    not a silent wrap."""
    try:
        wide = np.asarray(values, dtype=np.int64)
    except OverflowError:
        raise InvalidArgument(f"input '{name}': values overflow {dt.name}") from None
    info = np.iinfo(dt.numpy.type)  # type: ignore[type-var]
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        raise InvalidArgument(
            f"input '{name}': {where} holds values outside the {dt.name} range "
            f"[{info.min}, {info.max}]"
        )
    return wide.astype(dt.numpy)


def output_datatype(array: npt.NDArray[np.generic]) -> Datatype:
    """Strings and objects travel as BYTES; numbers as their own datatype."""
    return DATATYPES["BYTES"] if array.dtype.kind in "OSU" else from_numpy(array.dtype)


def deserialize_bytes_tensor(name: str, raw: bytes, count: int) -> npt.NDArray[np.object_]:
    """v2 BYTES raw encoding: each element is a 4-byte little-endian length, then its bytes."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(
                f"input '{name}': BYTES contents end inside a length prefix at byte {offset}"
            )
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(
                f"input '{name}': BYTES element {len(items)} declares {length} bytes but only "
                f"{len(raw) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidArgument(
            f"input '{name}': shape needs {count} BYTES elements, contents hold {len(items)}"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def serialize_bytes_tensor(array: npt.NDArray[np.generic]) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)
