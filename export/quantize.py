"""INT8 static quantization (onnxruntime.quantization, QDQ, per-channel weights) calibrated on
the training split, compared with fp32 on accuracy and CPU speed."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process


class _Calibration(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, input_name: str, x: npt.NDArray[np.float32], batch: int = 32) -> None:
        self._batches = iter([{input_name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._batches, None)


@dataclass(frozen=True)
class QuantizationReport:
    fp32_accuracy: float
    int8_accuracy: float
    fp32_images_per_s: float
    int8_images_per_s: float
    batch: int

    @property
    def speedup(self) -> float:
        return self.int8_images_per_s / self.fp32_images_per_s


def quantize_int8(
    source: Path, target: Path, input_name: str, calibration: npt.NDArray[np.float32]
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            _Calibration(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one core each: the comparison is per core
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _accuracy(
    session: ort.InferenceSession, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> float:
    name = session.get_inputs()[0].name
    scores = session.run(None, {name: x})[0]
    return float((scores.argmax(1) == y).mean())


def _throughput(session: ort.InferenceSession, x: npt.NDArray[np.float32], seconds: float) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    runs, started = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started < seconds:
        session.run(None, {name: x})
        runs += 1
    return runs * len(x) / (time.perf_counter() - started)


def compare(
    fp32: Path,
    int8: Path,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    batch: int = 64,
    seconds: float = 2.0,
) -> QuantizationReport:
    """Accuracy on (x, y) and images/s at `batch` on one CPU thread, fp32 vs int8, the two
    measured alternately so that both see the same machine state."""
    a, b = _session(fp32), _session(int8)
    sample = x[:batch]
    fast = [0.0, 0.0]
    for _ in range(2):
        fast[0] = max(fast[0], _throughput(a, sample, seconds / 2))
        fast[1] = max(fast[1], _throughput(b, sample, seconds / 2))
    return QuantizationReport(_accuracy(a, x, y), _accuracy(b, x, y), fast[0], fast[1], batch)
