"""Served on a GPU (`device: cuda`): the session really runs on CUDAExecutionProvider, the
answers are the CPU's, the GPU memory metrics are scraped, and reloads do not grow the
device's memory. They skip without onnxruntime-gpu; bench/gpu.sh runs them on a GPU."""

from __future__ import annotations

import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from bench.gpu_libs import device_memory
from service.runtime.onnx_runner import CUDA
from tests.cuda import cuda_test
from tests.digits import served_session
from tests.serving import EXAMPLE_MODELS, model_parameters, running_server


def cuda_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "digits", repository / "digits")
    config = repository / "digits" / "config.yaml"
    config.write_text(config.read_text() + "device: cuda\n")
    return repository


def infer(address: str, pixels: np.ndarray) -> np.ndarray:
    client = triton.InferenceServerClient(address)
    try:
        image = triton.InferInput("image", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels)
        answer: np.ndarray = client.infer("digits", [image]).as_numpy("probabilities")
        return answer
    finally:
        client.close()


@cuda_test
def test_served_on_cuda_answers_what_the_cpu_answers(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    requests = [rng.integers(0, 256, (1 + i % 4, 8, 8, 1), dtype=np.uint8) for i in range(48)]
    with running_server(cuda_repository(tmp_path)) as server:
        parameters = model_parameters(server.address, "digits")
        assert parameters["execution_provider"] == CUDA
        assert parameters["device"] == "cuda"
        with ThreadPoolExecutor(12) as pool:  # batches formed of several requests
            answers = list(pool.map(lambda pixels: infer(server.address, pixels), requests))
    reference = served_session()
    for pixels, got in zip(requests, answers, strict=True):
        (want,) = reference.run(["probabilities"], {"image": pixels})
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


@cuda_test
def test_gpu_memory_metrics_are_scraped(tmp_path: Path) -> None:
    with running_server(cuda_repository(tmp_path)) as server:
        port = server.server.metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
    used = [
        float(line.split()[-1])
        for line in text.decode().splitlines()
        if line.startswith('cnnserve_gpu_memory_used_bytes{gpu="0"}')
    ]
    assert used and used[0] > 0


@cuda_test
def test_reloads_on_cuda_stay_within_one_models_footprint(tmp_path: Path) -> None:
    before = device_memory()
    assert before is not None  # this process's own context made, before the server's
    with running_server(cuda_repository(tmp_path), model_control_mode="explicit") as server:
        client = triton.InferenceServerClient(server.address)
        client.load_model("digits")
        first = device_memory()
        for _ in range(5):
            client.load_model("digits")  # a reload: new sessions, the old ones closed
        reloaded = device_memory()
        client.unload_model("digits")
        client.close()
        unloaded = device_memory()
    assert first is not None and reloaded is not None and unloaded is not None
    footprint = first.used_mib - before.used_mib
    assert reloaded.used_mib - first.used_mib <= max(footprint, 1.0)
    assert unloaded.used_mib <= first.used_mib
