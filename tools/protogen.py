"""Generate service/v2 from protos/ (run by `make protos`).

Output is a pure function of the .proto files and the pinned grpcio-tools version, so
tests/unit/test_protos_fresh.py can regenerate into a temporary folder and compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules under out_dir (mirroring the proto paths)."""
    from grpc_tools import protoc  # dev-only dependency: never needed to serve

    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    # mypy-protobuf's plugin writes typed stubs for the gRPC module (mypy --strict).
    grpc_stub_plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy_grpc={grpc_stub_plugin}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    for module in out_dir.rglob("*_pb2.py"):
        if module.parent.relative_to(out_dir).parts[:1] == ("service",):
            _use_private_pool(module)
    stems = [out_dir / Path(f).with_suffix("") for f in files]
    return sorted(
        out_dir / name
        for stem in stems
        for name in (
            f"{stem}_pb2.py",
            f"{stem}_pb2.pyi",
            f"{stem}_pb2_grpc.py",
            f"{stem}_pb2_grpc.pyi",
        )
    )


_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "_POOL.AddSerializedFile("
_POOL_IMPORT = "from service.v2 import POOL as _POOL\n"


def _use_private_pool(module: Path) -> None:
    """Register descriptors in service.v2.POOL (see its docstring for why)."""
    text = module.read_text()
    if _DEFAULT_POOL not in text:
        raise RuntimeError(f"{module}: generated code changed shape; update protogen")
    text = text.replace(_DEFAULT_POOL, _PRIVATE_POOL)
    anchor = "from google.protobuf import descriptor_pool as _descriptor_pool\n"
    module.write_text(text.replace(anchor, anchor + _POOL_IMPORT, 1))


if __name__ == "__main__":
    written = generate(ROOT)
    sys.stdout.write("".join(f"wrote {p.relative_to(ROOT)}\n" for p in written))
