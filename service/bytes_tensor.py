"""The v2 BYTES tensor in raw form (gRPC raw contents, the REST binary extension): each
element a 4-byte little-endian length, then its bytes."""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from service.errors import InvalidArgument


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
