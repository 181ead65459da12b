"""One CUDA version throughout (issue 29): the CUDA major that the pinned onnxruntime-gpu
wheel is built for, read from the wheel itself, is the one the GPU image, the `gpu` and
`dev` extras and the GPU run's wheels (bench/gpu_wheels.txt) name.

The wheel's METADATA comes from the package index (pip's dry-run report reads only the
metadata file, about 6 s); when bench/gpu_wheels.sh has downloaded the wheel into
.gpuwheels, its build info and the CUDA provider's NEEDED libraries are read too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.serving import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
WHEELS_TXT = (REPO_ROOT / "bench" / "gpu_wheels.txt").read_text()
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def pinned(text: str, package: str) -> str:
    found = re.search(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", text)
    assert found, f"{package} is not pinned in {text[:80]!r}..."
    return found.group(2)


ORT_VERSION = pinned(DOCKERFILE, "onnxruntime-gpu")


def wheel_requirements(tmp: Path) -> list[str]:
    report = tmp / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--no-deps",
        "--ignore-installed", "--only-binary=:all:", "--python-version", "3.12",
        "--platform", "manylinux_2_28_x86_64", "--target", str(tmp / "target"),
        "--report", str(report), f"onnxruntime-gpu=={ORT_VERSION}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        pytest.skip(
            f"no package index to read onnxruntime-gpu's METADATA from: {done.stderr[-300:]}"
        )
    (install,) = json.loads(report.read_text())["install"]
    requirements: list[str] = install["metadata"]["requires_dist"]
    return requirements


def cuda_major_of_metadata(requirements: list[str]) -> int:
    """From the `cuda` extra: nvidia-cuda-runtime~=13.0 -> 13."""
    for requirement in requirements:
        found = re.match(r"nvidia-cuda-runtime(?:-cu\d+)?\s*[~=>]=\s*(\d+)", requirement)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no nvidia-cuda-runtime in {requirements}")


def test_pins_of_onnxruntime_gpu_agree() -> None:
    assert pinned(WHEELS_TXT, "onnxruntime-gpu") == ORT_VERSION
    assert re.search(r'ARG ONNXRUNTIME="onnxruntime-gpu\[cuda,cudnn\]==', DOCKERFILE), (
        "the GPU image takes CUDA and cuDNN from onnxruntime-gpu's own extras"
    )


def test_image_extras_and_gpu_wheels_name_the_wheels_cuda_major(tmp_path: Path) -> None:
    major = cuda_major_of_metadata(wheel_requirements(tmp_path))
    assert major == 13  # what the issue found; a new pin that changes it fails here first
    for base in re.findall(r"nvidia/cuda:(\d+)", DOCKERFILE):
        assert int(base) == major, f"the Dockerfile names a CUDA {base} base"
    assert f"nvidia-nvimgcodec-cu{major}[nvjpeg]==" in DOCKERFILE
    assert f"nvidia/cu{major}/lib" in DOCKERFILE  # LD_LIBRARY_PATH: the pip CUDA libraries
    extras = PYPROJECT["project"]["optional-dependencies"]
    codecs = [r for r in extras["gpu"] + extras["dev"] if "nvimgcodec" in r]
    assert codecs and all(f"-cu{major}" in r for r in codecs), codecs
    assert pinned(WHEELS_TXT, f"nvidia-nvimgcodec-cu{major}")
    assert pinned(WHEELS_TXT, "nvidia-nvjpeg").split(".")[0] == str(major)
    assert not re.search(rf"-cu(?!{major})\d+", DOCKERFILE + WHEELS_TXT)


def test_the_downloaded_wheel_is_built_for_that_major() -> None:
    wheels = sorted(
        (REPO_ROOT / ".gpuwheels" / "wheels").glob(f"onnxruntime_gpu-{ORT_VERSION}-*.whl")
    )
    if not wheels:
        pytest.skip("bench/gpu_wheels.sh .gpuwheels has not downloaded the wheel here")
    with zipfile.ZipFile(wheels[0]) as wheel:
        info = wheel.read("onnxruntime/capi/build_and_package_info.py").decode()
        assert "cuda_version = '13." in info
        if shutil.which("readelf") is None:
            return
        provider = wheel.extract(
            "onnxruntime/capi/libonnxruntime_providers_cuda.so", "/tmp/ort-provider"
        )
    needed = subprocess.run(["readelf", "-d", provider], capture_output=True, text=True).stdout
    libraries = set(re.findall(r"Shared library: \[([^\]]+)\]", needed))
    assert {"libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"} <= libraries
    assert not any(re.match(r"libcu\w*\.so\.12", name) for name in libraries)
