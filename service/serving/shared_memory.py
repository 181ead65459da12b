"""System shared memory (Triton's extension): clients register POSIX shared-memory objects
as named regions, then pass tensors through them instead of the request and the response.

Off unless `--shared-memory system` (as Triton now requires an opt-in): a register call
then says how to turn it on. A key must be a POSIX shm name (`/name`: one leading slash,
no other), opened under /dev/shm and never followed elsewhere; every offset and size is
checked against the object at register and against the region at every use. A request
holds a lease on each region it reads or writes; unregistering removes the name at once
and unmaps the region when its last lease ends (also at shutdown). Wire-free: the front
ends turn their messages into these calls.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.tensors.datatypes import Datatype
from service.tensors.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from service.tensors.records import ParamValue

SHM_ROOT = Path("/dev/shm")
_KEY = re.compile(r"^/[A-Za-z0-9._-]{1,250}$")
OFF = (
    "system shared memory is off on this server: start cnnserve with --shared-memory system "
    "(CNNSERVE_SHARED_MEMORY=system) to register regions"
)


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass
class _Region:
    status: RegionStatus
    mapping: mmap.mmap
    leases: int = 0
    unregistered: bool = False

    def close_if_idle(self) -> None:
        if self.unregistered and self.leases == 0:
            # No view outlives a lease (inputs are copied out, outputs written in), so the
            # mapping closes here, after the last request that used it.
            self.mapping.close()


@dataclass
class SharedMemoryRegistry:
    """The registered regions of this server (one per process)."""

    enabled: bool = False
    root: Path = SHM_ROOT
    _regions: dict[str, _Region] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not self.enabled:
            raise FailedPrecondition(OFF)
        if not name:
            raise InvalidArgument("a shared memory region needs a name")
        if not _KEY.match(key):
            raise InvalidArgument(
                f"shared memory key {key!r} is not a POSIX shared memory name: '/' then "
                "letters, digits, '.', '_' or '-' (no other '/')"
            )
        if byte_size <= 0 or offset < 0:
            raise InvalidArgument(f"region '{name}': byte_size must be > 0 and offset >= 0")
        path = self.root / key[1:]
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise InvalidArgument(
                f"region '{name}': cannot open shared memory {key}: {exc.strerror}"
            ) from None
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise InvalidArgument(f"region '{name}': {key} is not a shared memory object")
            if offset + byte_size > status.st_size:
                raise InvalidArgument(
                    f"region '{name}': offset {offset} + byte_size {byte_size} is past the end "
                    f"of {key} ({status.st_size} bytes)"
                )
            try:
                mapping = mmap.mmap(descriptor, status.st_size)
            except (OSError, ValueError) as exc:
                raise InvalidArgument(f"region '{name}': cannot map {key}: {exc}") from None
        finally:
            os.close(descriptor)
        with self._lock:
            if name in self._regions:
                mapping.close()
                raise AlreadyExists(f"shared memory region '{name}' is already registered")
            self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), mapping)

    def status(self, name: str = "") -> list[RegionStatus]:
        with self._lock:
            if name and name not in self._regions:
                raise NotFound(f"no shared memory region '{name}' is registered")
            return [r.status for n, r in sorted(self._regions.items()) if not name or n == name]

    def unregister(self, name: str = "") -> None:
        """One region, or all of them ("" as Triton has it); an unknown name is no error,
        as in Triton (clients unregister everything before they start)."""
        with self._lock:
            names = [name] if name else list(self._regions)
            for each in names:
                region = self._regions.pop(each, None)
                if region is not None:
                    region.unregistered = True
                    region.close_if_idle()

    def close(self) -> None:
        self.unregister()

    def read_array(
        self, tensor: str, where: Placement, dt: Datatype, shape: tuple[int, ...]
    ) -> npt.NDArray[np.generic]:
        """An input's contents, copied out of its region (so no view outlives the lease)."""
        if not self.enabled:
            raise FailedPrecondition(OFF)
        if dt.name == "BYTES":
            raise InvalidArgument(f"input '{tensor}': BYTES is not passed in shared memory")
        needed = prod(shape) * np.dtype(dt.numpy).itemsize
        if where.byte_size != needed:
            raise InvalidArgument(
                f"input '{tensor}': {BYTE_SIZE} is {where.byte_size}, but {dt.name} "
                f"{list(shape)} is {needed} bytes"
            )
        with self.lease(where.region, where.offset, needed) as view:
            source = np.frombuffer(view, dtype=dt.numpy)
            array = source.reshape(shape).copy()
            del source
        return array

    def write_array(self, tensor: str, where: Placement, array: npt.NDArray[np.generic]) -> None:
        """An output's contents into its region (at most the region's byte_size)."""
        if not self.enabled:
            raise FailedPrecondition(OFF)
        data = np.ascontiguousarray(array)
        if data.dtype == np.object_:
            raise InvalidArgument(f"output '{tensor}': BYTES is not passed in shared memory")
        if data.nbytes > where.byte_size:
            raise InvalidArgument(
                f"output '{tensor}' is {data.nbytes} bytes, more than its {BYTE_SIZE} "
                f"{where.byte_size}"
            )
        with self.lease(where.region, where.offset, data.nbytes) as view:
            target = np.frombuffer(view, dtype=np.uint8)
            target[:] = data.reshape(-1).view(np.uint8)
            del target

    @contextmanager
    def lease(self, name: str, offset: int, byte_size: int) -> Iterator[memoryview]:
        """The bytes [offset, offset + byte_size) of region `name`, held mapped meanwhile."""
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise InvalidArgument(f"shared memory region '{name}' is not registered")
            status = region.status
            if offset < 0 or byte_size < 0 or offset + byte_size > status.byte_size:
                raise InvalidArgument(
                    f"shared memory region '{name}': offset {offset} + byte_size {byte_size} is "
                    f"past its end ({status.byte_size} bytes)"
                )
            region.leases += 1
        start = status.offset + offset
        view = memoryview(region.mapping)[start : start + byte_size]
        try:
            yield view
        finally:
            view.release()
            with self._lock:
                region.leases -= 1
                region.close_if_idle()


def available(registry: SharedMemoryRegistry | None) -> SharedMemoryRegistry:
    """The registry a front end reads and writes through; FAILED_PRECONDITION when the
    extension is off (no registry, or one not enabled)."""
    if registry is None or not registry.enabled:
        raise FailedPrecondition(OFF)
    return registry


REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


@dataclass(frozen=True)
class Placement:
    """Where a tensor's bytes are: a request's or output's shared memory parameters."""

    region: str
    byte_size: int
    offset: int = 0

    @property
    def parameters(self) -> dict[str, ParamValue]:
        return {REGION: self.region, BYTE_SIZE: self.byte_size, OFFSET: self.offset}


def placement(tensor: str, parameters: Mapping[str, ParamValue]) -> Placement | None:
    """The tensor's shared memory placement, None when it has none."""
    region = parameters.get(REGION)
    if region is None:
        return None
    byte_size, offset = parameters.get(BYTE_SIZE), parameters.get(OFFSET, 0)
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"'{tensor}': {REGION} must be a region name")
    for key, value in ((BYTE_SIZE, byte_size), (OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"'{tensor}': {key} must be an integer >= 0, got {value!r}")
    assert isinstance(byte_size, int) and isinstance(offset, int)
    return Placement(region, byte_size, offset)
