"""The committed service/v2 code is exactly what `make protos` generates from protos/."""

from __future__ import annotations

from pathlib import Path

from tests.serving import REPO_ROOT
from tools import protogen


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)
    assert written, "no proto files found"
    for fresh in written:
        committed = REPO_ROOT / fresh.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} missing: run `make protos`"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed.relative_to(REPO_ROOT)} is stale: run `make protos`"
        )


def test_generated_code_uses_the_private_pool() -> None:
    from service.v2 import POOL
    from service.v2 import grpc_service_pb2 as pb

    assert pb.DESCRIPTOR.pool is POOL
