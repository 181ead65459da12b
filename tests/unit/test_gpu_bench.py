"""bench/gpu.sh is ready for a GPU machine: its ResNet-50 is a valid ONNX graph of the
right size that runs, and without a CUDA execution provider it says so instead of
measuring the CPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from bench.resnet50 import resnet50
from service.runtime.onnx_runner import CUDA
from tests.serving import REPO_ROOT


def test_resnet50_has_resnet50_size_and_runs() -> None:
    model = resnet50(np.float32)
    parameters = sum(int(np.prod(tensor.dims)) for tensor in model.graph.initializer)
    assert 25_000_000 < parameters < 26_000_000  # torchvision's resnet50: 25.56 M
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    (logits,) = session.run(["logits"], {"image": x})
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()
    half = resnet50(np.float16)  # checked by onnx.checker inside; fp16 weights throughout
    assert {t.data_type for t in half.graph.initializer} == {10}  # FLOAT16


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_gpu_bench_refuses_to_measure_without_cuda() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no CUDA execution provider" in result.stderr
