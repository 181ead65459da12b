"""The shared memory registry (service/serving/shared_memory.py) on plain files: bounds at
register and at use, POSIX names only and no symlinks followed, a region in use unmapped only
after its last lease, everything unmapped at close."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from service.frontends.grpc_codec import decode_infer_request
from service.serving.shared_memory import Placement, SharedMemoryRegistry, placement
from service.tensors.datatypes import DATATYPES
from service.tensors.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from service.v2 import grpc_service_pb2 as pb


@pytest.fixture
def registry(tmp_path: Path) -> SharedMemoryRegistry:
    (tmp_path / "region").write_bytes(bytes(range(256)) * 4)  # 1024 bytes
    return SharedMemoryRegistry(enabled=True, root=tmp_path)


def test_read_and_write_within_the_region(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    registry.register("r", "/region", 256, 512)
    got = registry.read_array("x", Placement("r", 16, 0), DATATYPES["UINT8"], (4, 4))
    assert got.tolist() == [list(range(i * 4, i * 4 + 4)) for i in range(4)]
    registry.write_array("y", Placement("r", 8, 100), np.array([1.5, -2.0], np.float32))
    data = (tmp_path / "region").read_bytes()
    assert np.frombuffer(data[356:364], np.float32).tolist() == [1.5, -2.0]
    assert registry.status("r")[0].byte_size == 512


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda r: r.register("r2", "/region", 1000, 100), InvalidArgument, "past the end"),
        (lambda r: r.register("r", "/region", 0, 8), AlreadyExists, "already registered"),
        (lambda r: r.register("r3", "/../region", 0, 8), InvalidArgument, "POSIX"),
        (lambda r: r.register("r3", "region", 0, 8), InvalidArgument, "POSIX"),
        (lambda r: r.register("r3", "/region", 0, 0), InvalidArgument, "byte_size must be > 0"),
        (lambda r: r.read_array("x", Placement("r", 8, 510), DATATYPES["UINT8"], (8,)),
         InvalidArgument, "past its end"),
        (lambda r: r.read_array("x", Placement("r", 7, 0), DATATYPES["UINT8"], (8,)),
         InvalidArgument, "is 8 bytes"),
        (lambda r: r.read_array("x", Placement("r", 8, 0), DATATYPES["BYTES"], (1,)),
         InvalidArgument, "BYTES"),
        (lambda r: r.write_array("y", Placement("r", 4, 0), np.zeros(2, np.float32)),
         InvalidArgument, "more than"),
        (lambda r: r.status("nope"), NotFound, "no shared memory region 'nope'"),
    ],
)  # fmt: skip
def test_bad_uses(registry: SharedMemoryRegistry, call, error, words) -> None:  # type: ignore[no-untyped-def]
    registry.register("r", "/region", 0, 512)
    with pytest.raises(error, match=words):
        call(registry)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"\0" * 64)
    (tmp_path / "link").symlink_to(tmp_path / "target")
    registry = SharedMemoryRegistry(enabled=True, root=tmp_path)
    with pytest.raises(InvalidArgument, match="cannot open shared memory /link"):
        registry.register("r", "/link", 0, 64)


def test_only_regular_files_are_mapped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    registry = SharedMemoryRegistry(enabled=True, root=tmp_path)
    for key in ("/fifo", "/folder"):
        with pytest.raises(
            InvalidArgument, match=f"region 'r': (cannot open shared memory )?{key}"
        ):
            registry.register("r", key, 0, 8)


def test_a_region_in_use_is_unmapped_after_its_last_lease(registry: SharedMemoryRegistry) -> None:
    registry.register("r", "/region", 0, 64)
    mapping = registry._regions["r"].mapping
    with registry.lease("r", 0, 8) as view:
        registry.unregister("r")  # the name goes at once...
        assert registry.status() == [] and not mapping.closed
        assert bytes(view[:4]) == bytes([0, 1, 2, 3])  # ...the running request still reads
    assert mapping.closed  # ...and the mapping goes with its last lease
    with pytest.raises(InvalidArgument, match="not registered"):
        registry.read_array("x", Placement("r", 8, 0), DATATYPES["UINT8"], (8,))


def test_close_unmaps_everything(registry: SharedMemoryRegistry) -> None:
    registry.register("a", "/region", 0, 8)
    registry.register("b", "/region", 8, 8)
    mappings = [region.mapping for region in registry._regions.values()]
    registry.close()
    assert all(m.closed for m in mappings) and registry.status() == []


def test_off_by_default_and_parameters_checked(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="--shared-memory system"):
        SharedMemoryRegistry(root=tmp_path).register("r", "/region", 0, 8)
    assert placement("x", {}) is None
    assert placement("x", {"shared_memory_region": "r", "shared_memory_byte_size": 8}) == (
        Placement("r", 8, 0)
    )
    with pytest.raises(InvalidArgument, match="shared_memory_byte_size must be an integer"):
        placement("x", {"shared_memory_region": "r"})


def test_an_input_both_in_shared_memory_and_in_the_request_is_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="UINT8", shape=[1, 4])
    tensor.parameters["shared_memory_region"].string_param = "r"
    tensor.parameters["shared_memory_byte_size"].int64_param = 4
    request.raw_input_contents.append(bytes(4))
    with pytest.raises(InvalidArgument, match="raw_input_contents has 1 entries"):
        decode_infer_request(request, lambda headers: 1)
