"""Tests that need onnxruntime's CUDA execution provider and a GPU carry `@cuda_test`:
`pytest -m cuda` selects them (bench/gpu.sh runs them on a GPU machine and counts a skip
there as a failure); on a CPU build of onnxruntime they skip with the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import onnxruntime as ort
import pytest

from service.runtime.onnx_runner import CUDA

F = TypeVar("F", bound=Callable[..., object])
HAS_CUDA = CUDA in ort.get_available_providers()
NO_CUDA = "needs onnxruntime-gpu and a GPU (bench/gpu.sh runs it there)"


def cuda_test(test: F) -> F:
    marked: F = pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)(test))
    return marked
