"""The layer contracts (pyproject.toml [tool.importlinter]) hold, and a violation fails:
the same `lint-imports` run over a copy of the packages with one forbidden import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO_ROOT / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_contracts_hold() -> None:
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("batching/batcher.py", "import grpc", "The core is wire-free"),
        ("serving/model.py", "from service.v2 import grpc_service_pb2", "The core is wire-free"),
        ("frontends/grpc_api.py", "import service.serving.loader", "never imports the loader"),
        ("runtime/onnx_runner.py", "import export.train", "Serving never imports export or torch"),
        # a lower layer importing a higher one
        ("runtime/onnx_runner.py", "import service.batching.batcher", "Subsystem layers"),
        ("tensors/errors.py", "import service.serving.model", "Subsystem layers"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    for package in ("service", "export"):
        shutil.copytree(REPO_ROOT / package, tmp_path / package)
    target = tmp_path / "service" / module
    target.write_text(target.read_text() + f"\n{line}  # the violation\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if " BROKEN" in row]
    assert any(contract in row for row in broken), result.stdout
