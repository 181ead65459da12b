"""Warm-up sizes, provider selection and honest provider reporting (CPU machine)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from service.batching.deadlines import request_deadline
from service.configuration.model_config import (
    DeviceRequest,
    DynamicBatching,
    ModelConfig,
    TensorSpec,
)
from service.runtime import onnx_runner as runtime
from service.runtime.onnx_runner import CPU, CUDA, OnnxRunner, default_intra_op_threads
from service.runtime.scheduler import Feeds
from service.runtime.warmup import warm_up, warmup_batch_sizes
from service.tensors.errors import InvalidArgument, ModelLoadError
from tests import onnx_models
from tests.cuda import cuda_test


def _config(
    max_batch_size: int, preferred: tuple[int, ...] = (), dims: tuple[int, ...] = (3,)
) -> ModelConfig:
    return ModelConfig(
        name="m",
        inputs=(TensorSpec("x", "FP32", dims),),
        outputs=(TensorSpec("y", "FP32", dims),),
        max_batch_size=max_batch_size,
        dynamic_batching=DynamicBatching(preferred_batch_sizes=preferred),
    )


class RecordingRunner:
    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        self.shapes.append(feeds["x"].shape)
        return [np.asarray(feeds["x"])]


def test_warmup_sizes_are_powers_of_two_max_and_preferred() -> None:
    assert warmup_batch_sizes(_config(64)) == [1, 2, 4, 8, 16, 32, 64]
    assert warmup_batch_sizes(_config(24, preferred=(6,))) == [1, 2, 4, 6, 8, 16, 24]
    assert warmup_batch_sizes(_config(0)) == [0]


def test_warm_up_runs_every_instance_at_every_size() -> None:
    runners = [RecordingRunner(), RecordingRunner()]
    assert warm_up(runners, _config(4)) == [1, 2, 4]
    for runner in runners:
        assert runner.shapes == [(1, 3), (2, 3), (4, 3)]
    unbatched = RecordingRunner()
    warm_up([unbatched], _config(0, dims=(1, 3)))
    assert unbatched.shapes == [(1, 3)]


def test_warm_up_skips_variable_dims() -> None:
    runner = RecordingRunner()
    assert warm_up([runner], _config(4, dims=(-1,))) == []
    assert runner.shapes == []


def test_device_parsing() -> None:
    assert DeviceRequest.parse("cuda:1") == DeviceRequest("cuda", 1)
    assert DeviceRequest.parse("auto") == DeviceRequest("auto")
    with pytest.raises(ValueError, match="must be auto, cpu, cuda or cuda:N"):
        DeviceRequest.parse("tpu")
    with pytest.raises(ModelLoadError, match="must be auto, cpu, cuda or cuda:N"):
        OnnxRunner(Path("model.onnx"), device="tpu")  # the runner refuses it as a load failure


def test_intra_op_threads_are_divided_among_instances() -> None:
    cores = default_intra_op_threads(1)
    assert default_intra_op_threads(2) == max(1, cores // 2)
    assert default_intra_op_threads(10_000) == 1


@pytest.fixture()
def doubler(tmp_path: Path) -> Path:
    return onnx_models.save(onnx_models.doubler(["n", 3]), tmp_path / "m.onnx")


def test_auto_reports_the_provider_actually_used(doubler: Path) -> None:
    runner = OnnxRunner(doubler, device="auto", intra_op_threads=1)
    assert runner.provider == runner.session.get_providers()[0]
    expected = CUDA if CUDA in ort.get_available_providers() else CPU
    assert runner.provider == expected
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(runner.run({"x": x}, ["y"])[0], 2 * x)


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_cuda_without_cuda_is_refused_not_silently_cpu(doubler: Path) -> None:
    with pytest.raises(ModelLoadError, match="no CUDA execution provider"):
        OnnxRunner(doubler, device="cuda")


@cuda_test
def test_cuda_provider_options_reach_the_session(doubler: Path) -> None:
    options = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
    runner = OnnxRunner(doubler, device="cuda", provider_options=options)
    assert runner.providers[0] == CUDA
    session_options = runner.session.get_provider_options()[CUDA]
    for key, value in options.items():
        assert session_options[key] == value


def test_request_deadline_takes_the_earliest() -> None:
    async def check() -> None:
        now = asyncio.get_running_loop().time()
        assert request_deadline(None, None, 0) is None
        assert request_deadline(2.0, 500_000, 0) == pytest.approx(now + 0.5, abs=0.05)
        assert request_deadline(0.1, 500_000, 0) == pytest.approx(now + 0.1, abs=0.05)
        assert request_deadline(None, None, 300_000) == pytest.approx(now + 0.3, abs=0.05)
        # An explicit timeout overrides the model default (as Triton's allow_timeout_override).
        assert request_deadline(None, 900_000, 300_000) == pytest.approx(now + 0.9, abs=0.05)
        for bad in ("soon", -1, True, 1.5):
            with pytest.raises(InvalidArgument, match="timeout"):
                request_deadline(None, bad, 0)

    asyncio.run(check())


def test_spinning_is_off_unless_asked(doubler: Path) -> None:
    key = "session.intra_op.allow_spinning"
    quiet = OnnxRunner(doubler, intra_op_threads=1).session.get_session_options()
    assert quiet.get_session_config_entry(key) == "0"
    spinning = OnnxRunner(doubler, intra_op_threads=1, spin=True).session.get_session_options()
    try:
        value = spinning.get_session_config_entry(key)
    except Exception:  # not set at all: onnxruntime's default, which spins
        value = None
    assert value != "0"


def test_serve_flags_reach_the_settings() -> None:
    from service.__main__ import build_parser
    from service.eventloop import loop_factory

    args = build_parser().parse_args(["serve", "--event-loop", "asyncio", "--ort-spinning"])
    assert (args.event_loop, args.ort_spinning) == ("asyncio", True)
    assert loop_factory("asyncio") is asyncio.new_event_loop


# ---- GPU plumbing, exercised on the CPU (issue 9) ----


def test_cuda_warm_up_runs_every_batch_size() -> None:
    assert warmup_batch_sizes(_config(6), every_size=True) == [1, 2, 3, 4, 5, 6]
    runner = RecordingRunner()
    assert warm_up([runner], _config(3), every_size=True) == [1, 2, 3]
    assert runner.shapes == [(1, 3), (2, 3), (3, 3)]


def test_cuda_request_builds_device_and_options_and_preloads_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    preloads: list[int] = []
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloads.append(1), raising=False)
    options = {"cudnn_conv_algo_search": "HEURISTIC"}
    providers = runtime.provider_list(DeviceRequest("cuda", 1), options)
    assert providers == [(CUDA, {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    assert preloads == [1]
    assert runtime.provider_list(DeviceRequest("cpu"), options) == [CPU]


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_cuda_fallback_is_refused_or_reported_as_cpu(
    doubler: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This onnxruntime has no CUDA EP; claiming it has one makes the real session fall back
    to the CPU silently, as onnxruntime-gpu does on a machine whose GPU cannot start."""
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime really has CUDA")
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    with pytest.raises(ModelLoadError, match="fell back to CPUExecutionProvider"):
        OnnxRunner(doubler, device="cuda:0")
    auto = OnnxRunner(doubler, device="auto", intra_op_threads=1)
    assert auto.provider == CPU  # what ran, not what was asked for
    assert auto.io_binding is False


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_io_binding_path_gives_the_same_outputs(batch: int) -> None:
    from tests.digits import MODEL_FILE

    plain = OnnxRunner(MODEL_FILE, device="cpu", intra_op_threads=1)
    bound = OnnxRunner(MODEL_FILE, device="cpu", intra_op_threads=1, io_binding=True)
    assert bound.io_binding and not plain.io_binding
    (name,) = [tensor.name for tensor in plain.inputs()]
    x = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)
    outputs = [tensor.name for tensor in plain.outputs()]
    for want, got in zip(plain.run({name: x}, outputs), bound.run({name: x}, outputs), strict=True):
        np.testing.assert_array_equal(got, want)
    # Non-contiguous inputs (a batch sliced out of a larger one) are bound correctly too.
    wide = np.random.default_rng(0).random((batch, 1, 8, 16), dtype=np.float32)[..., ::2]
    np.testing.assert_array_equal(
        bound.run({name: wide}, outputs)[0], plain.run({name: wide}, outputs)[0]
    )


def test_io_binding_config_key() -> None:
    from service.configuration.model_config import parse_model_overrides
    from service.tensors.errors import ConfigError

    assert parse_model_overrides("m", {"io_binding": True}).io_binding is True
    assert parse_model_overrides("m", {"io_binding": "auto"}).io_binding is None
    assert parse_model_overrides("m", {}).io_binding is None
    with pytest.raises(ConfigError, match="io_binding must be true, false or auto"):
        parse_model_overrides("m", {"io_binding": "yes"})
