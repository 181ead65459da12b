"""onnxruntime sessions: execution providers, session options, running a batch.

onnxruntime falls back to the CPU silently when the CUDA provider cannot start, so the
provider we report is always read back from the session (`get_providers()`), never the one
we asked for. `run` is synchronous and is only ever called from an instance thread
(onnxruntime releases the GIL while it computes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from service.configuration.model_config import DeviceRequest
from service.configuration.settings import available_cores
from service.runtime.device_rows import DeviceRows
from service.runtime.scheduler import Feeds
from service.tensors.errors import InternalError, InvalidArgument, ModelLoadError
from service.tensors.records import OnnxTensor

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def cuda_available() -> bool:
    return CUDA in ort.get_available_providers()


def provider_list(
    device: DeviceRequest,
    cuda_options: Mapping[str, str],
    tensorrt_options: Mapping[str, str] | None = None,
) -> list[str | tuple[str, dict[str, Any]]]:
    """The providers to ask onnxruntime for, most preferred first (TensorRT first when a
    config.pbtxt names it as its gpu_execution_accelerator)."""
    if tensorrt_options is not None and TENSORRT not in ort.get_available_providers():
        raise ModelLoadError(
            "gpu_execution_accelerator 'tensorrt' requested, but this onnxruntime has no "
            f"TensorRT execution provider (available: {ort.get_available_providers()})"
        )
    wants_cuda = device.kind == "cuda" or (device.kind == "auto" and cuda_available())
    if not wants_cuda:
        if tensorrt_options is not None:
            raise ModelLoadError("gpu_execution_accelerator 'tensorrt' needs the model on a GPU")
        return [CPU]
    if device.kind == "cuda" and not cuda_available():
        raise ModelLoadError(
            "device 'cuda' requested, but this onnxruntime has no CUDA execution provider "
            f"(available: {ort.get_available_providers()}); install onnxruntime-gpu"
        )
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()  # loads the CUDA/cuDNN libraries shipped as pip packages
    options: dict[str, Any] = {"device_id": str(device.index), **cuda_options}
    if tensorrt_options is not None:
        trt = {"device_id": str(device.index), **tensorrt_options}
        return [(TENSORRT, trt), (CUDA, options), CPU]
    return [(CUDA, options), CPU]


def default_intra_op_threads(instances: int) -> int:
    """Divide the cores among instances so concurrent runs do not oversubscribe the CPU."""
    return max(1, available_cores() // max(1, instances))


class OnnxRunner:
    """One onnxruntime InferenceSession for one model version.

    `model_bytes`, when given, is the graph to run (e.g. with preprocessing spliced in);
    `path` then only names it in messages."""

    def __init__(
        self,
        path: Path,
        *,
        model_bytes: bytes | None = None,
        device: str = "auto",
        intra_op_threads: int | None = None,
        provider_options: Mapping[str, str] | None = None,
        spin: bool = False,
        io_binding: bool | None = None,
        tensorrt_options: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        try:
            request = DeviceRequest.parse(device)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        providers = provider_list(request, provider_options or {}, tensorrt_options)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or default_intra_op_threads(1)
        options.inter_op_num_threads = 1
        if not spin:
            # onnxruntime's intra-op threads busy-wait for the next run by default; in a
            # server that CPU belongs to the event loop, gRPC and the other instances
            # (compared in bench/README.md: `python -m bench.run --compare ort-spinning`).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            source: str | bytes = model_bytes if model_bytes is not None else str(path)
            self.session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # onnxruntime raises many types for unreadable files
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        self.providers: list[str] = list(self.session.get_providers())
        wanted = TENSORRT if tensorrt_options is not None else CUDA
        if (request.kind == "cuda" or tensorrt_options is not None) and self.providers[0] != wanted:
            raise ModelLoadError(
                f"{wanted} requested (device '{device}'), but onnxruntime fell back to "
                f"{self.providers[0]}"
            )
        self.intra_op_threads = options.intra_op_num_threads
        # With CUDA, IO binding copies each input to the device once per batch (uint8 pixels
        # when preprocessing is in the graph) and each output back once, instead of
        # onnxruntime staging them per run; on the CPU it is a plain run with extra steps.
        self.io_binding = self.provider == CUDA if io_binding is None else io_binding
        self._output_device = ("cuda", request.index) if self.provider == CUDA else ("cpu", 0)

    def close(self) -> None:
        """Release the session (weights, arenas, device memory) now, not whenever the last
        reference to this runner goes. A run after close fails with InternalError."""
        self.session = None

    @property
    def provider(self) -> str:
        """The execution provider actually running the graph (read back from the session)."""
        return self.providers[0]

    @property
    def device_label(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"

    def inputs(self) -> list[OnnxTensor]:
        return [OnnxTensor(a.name, a.type, tuple(a.shape)) for a in self.session.get_inputs()]

    def outputs(self) -> list[OnnxTensor]:
        return [OnnxTensor(a.name, a.type, tuple(a.shape)) for a in self.session.get_outputs()]

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        try:
            if self.io_binding or any(isinstance(f, DeviceRows) for f in feeds.values()):
                return self._run_bound(feeds, output_names)
            results: list[npt.NDArray[np.generic]] = self.session.run(list(output_names), feeds)
        except OrtInvalidArgument as exc:
            # onnxruntime blames the values it was given (a Gather index out of range): the
            # client's fault, once the request has run alone (batch_execution.py).
            message = f"onnxruntime refused the input of {self.path.name}: {exc}"
            raise InvalidArgument(message) from exc
        except Exception as exc:
            raise InternalError(f"onnxruntime failed on {self.path.name}: {exc}") from exc
        return results

    def _run_bound(
        self, feeds: Feeds, output_names: Sequence[str]
    ) -> list[npt.NDArray[np.generic]]:
        binding = self.session.io_binding()
        for name, array in feeds.items():
            if isinstance(array, DeviceRows):  # already where the graph runs: no copy
                binding.bind_ortvalue_input(name, array.value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        device, index = self._output_device
        for name in output_names:
            binding.bind_output(name, device, index)  # allocated by onnxruntime, per shape
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        results: list[npt.NDArray[np.generic]] = binding.copy_outputs_to_cpu()
        return results
