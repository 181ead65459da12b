"""Triton's perf_analyzer, the real binary, for the tests (downloaded once into .cache/).

`pip install perf-analyzer` gives a placeholder without a binary; the tritonclient 2.41.0
manylinux wheel still ships `perf_analyzer` (peerbench's setup.sh takes it the same way).
It links libb64 (Debian's libb64-0d: `make system-deps`) and libcudart.so.12, taken from
the nvidia-cuda-runtime-cu12 wheel; it never touches a GPU here."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.serving import REPO_ROOT

CACHE = REPO_ROOT / ".cache" / "perf_analyzer"
WHEELS = ("tritonclient==2.41.0", "nvidia-cuda-runtime-cu12==12.9.79")
BINARY = "tritonclient-2.41.0.data/data/bin/perf_analyzer"


def perf_analyzer() -> tuple[Path, dict[str, str]]:
    """The binary and the environment to run it in; skips when it cannot be had."""
    binary, runtime = CACHE / "perf_analyzer", CACHE / "cuda_runtime"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--platform", "manylinux1_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(CACHE), *WHEELS]  # fmt: skip
        done = subprocess.run(download, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            pytest.skip(f"perf_analyzer could not be downloaded: {done.stderr[-300:]}")
        (client,) = CACHE.glob("tritonclient-2.41.0-*.whl")
        (cuda,) = CACHE.glob("nvidia_cuda_runtime_cu12-*.whl")
        with zipfile.ZipFile(cuda) as wheel:
            for member in wheel.namelist():
                if member.startswith("nvidia/cuda_runtime/lib/"):
                    wheel.extract(member, runtime)
        with zipfile.ZipFile(client) as wheel:
            binary.write_bytes(wheel.read(BINARY))
        binary.chmod(0o755)
    env = {**os.environ, "LD_LIBRARY_PATH": str(runtime / "nvidia" / "cuda_runtime" / "lib")}
    version = subprocess.run([str(binary), "--version"], env=env, capture_output=True,
                             text=True, check=False)  # fmt: skip
    if version.returncode != 0:
        pytest.skip(f"perf_analyzer does not run here (libb64-0d?): {version.stderr[-300:]}")
    return binary, env
