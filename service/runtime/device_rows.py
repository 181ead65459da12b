"""Batch rows that live where the model runs (GPU decoding's output), and their copies.

A request whose images were decoded on the device carries its pixels as `DeviceRows`: one
onnxruntime OrtValue of (rows, *dims) uint8 on the model's device, never copied to the
host. The batcher gathers the rows of several requests into one batch with
device-to-device copies (`gather`), and the runner binds the result as its input (IO
binding). On the CPU (the tests' device) the same code copies with memmove.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.tensors.errors import InternalError

CUDA_MEMCPY_HOST_TO_DEVICE = 1  # cudaMemcpyKind
CUDA_MEMCPY_DEVICE_TO_HOST = 2
CUDA_MEMCPY_DEVICE_TO_DEVICE = 3


@functools.cache
def _cudart() -> ctypes.CDLL:
    """The CUDA runtime onnxruntime-gpu already loaded (its pip wheel, or the system's)."""
    for name in ("libcudart.so.12", ctypes.util.find_library("cudart") or "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise InternalError("GPU decoding needs the CUDA runtime (libcudart), which is not loaded")


def require_cuda_runtime() -> None:
    """Raise InternalError now (at load) rather than on the first request."""
    _cudart()


def copy_bytes(
    device: str, dst: int, src: int, count: int, kind: int = CUDA_MEMCPY_DEVICE_TO_DEVICE
) -> None:
    """Copy `count` bytes between buffers on `device` ("cpu" or "cuda"), or, with `kind`,
    between the host and the device."""
    if device == "cpu":
        ctypes.memmove(dst, src, count)
        return
    status = _cudart().cudaMemcpy(
        ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(count), kind
    )
    if status != 0:
        raise InternalError(f"cudaMemcpy (kind {kind}) failed (cudaError {status})")


def synchronize_stream(stream: int) -> None:
    """Wait for the work queued on a CUDA stream (nvImageCodec decodes asynchronously)."""
    status = _cudart().cudaStreamSynchronize(ctypes.c_void_p(stream))
    if status != 0:
        raise InternalError(f"cudaStreamSynchronize failed (cudaError {status})")


@dataclass(frozen=True)
class DeviceRows:
    """(rows, *dims) uint8 pixels in an OrtValue on `device` ("cpu" or "cuda", `device_id`)."""

    value: ort.OrtValue
    device: str
    device_id: int

    @staticmethod
    def allocate(shape: Sequence[int], device: str, device_id: int) -> DeviceRows:
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.uint8, device, device_id)
        return DeviceRows(value, device, device_id)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))

    def to_host(self) -> npt.NDArray[np.uint8]:
        """A host copy (benches, tests): the request path never needs one."""
        host = np.empty(self.shape, np.uint8)
        copy_bytes(
            self.device, host.ctypes.data, self.row_pointer(0), host.nbytes,
            CUDA_MEMCPY_DEVICE_TO_HOST,
        )  # fmt: skip
        return host

    def row_pointer(self, row: int) -> int:
        return int(self.value.data_ptr()) + row * self.row_bytes

    @staticmethod
    def gather(
        parts: Sequence[tuple[DeviceRows | npt.NDArray[np.generic], int, int]],
    ) -> DeviceRows:
        """Rows [start, stop) of each part, in order, in one new buffer on the device. A
        part may be host pixels (a client that sent uint8 pixels, batched with requests
        whose images were decoded on the device): its rows are copied up."""
        first = next(rows for rows, _, _ in parts if isinstance(rows, DeviceRows))
        total = sum(stop - start for _, start, stop in parts)
        batch = DeviceRows.allocate((total, *first.shape[1:]), first.device, first.device_id)
        row = 0
        for rows, start, stop in parts:
            count = (stop - start) * batch.row_bytes
            if isinstance(rows, DeviceRows):
                copy_bytes(first.device, batch.row_pointer(row), rows.row_pointer(start), count)
            else:
                host = np.ascontiguousarray(rows[start:stop], dtype=np.uint8)
                if host.nbytes != count:
                    raise InternalError(
                        f"host rows of shape {host.shape} do not fit device rows {batch.shape}"
                    )
                copy_bytes(
                    first.device, batch.row_pointer(row), host.ctypes.data, count,
                    CUDA_MEMCPY_HOST_TO_DEVICE,
                )  # fmt: skip
            row += stop - start
        if first.device == "cuda":
            # Device-to-device copies (and the last leg of host-to-device ones) may still be
            # running on stream 0 when cudaMemcpy returns; the model's session runs on its
            # own stream.
            synchronize_stream(0)
        return batch
