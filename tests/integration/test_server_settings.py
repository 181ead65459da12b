"""Settings proven through the real server and real clients, not only parsed: a model's
`default_timeout_us`, `--batching off`, `instances: 2`, the bearer token from a file and
from the environment, and an unload that waits for the requests it accepted."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from tritonclient.utils import InferenceServerException

from service.configuration.settings import ControlMode
from service.runtime.onnx_runner import default_intra_op_threads
from tests.digits import served_session
from tests.serving import (
    EXAMPLE_MODELS,
    GatedRunner,
    gated_scheduler,
    running_server,
    spawn_server,
)

TOKEN = "s3cret-token"


def digits_with(tmp_path: Path, **settings: object) -> Path:
    """A repository holding digits with `settings` merged into its config.yaml."""
    root = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "digits", root / "digits")
    path = root / "digits" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    for key, value in settings.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return root


def pixels(seed: int = 0, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (rows, 8, 8, 1), dtype=np.uint8)


def image_input(seed: int = 0, rows: int = 1) -> triton.InferInput:
    tensor = triton.InferInput("image", [rows, 8, 8, 1], "UINT8")
    tensor.set_data_from_numpy(pixels(seed, rows))
    return tensor


def expected(seed: int = 0, rows: int = 1) -> np.ndarray:
    return np.asarray(served_session().run(["probabilities"], {"image": pixels(seed, rows)})[0])


def test_default_timeout_from_config_applies_and_the_parameter_overrides_it(
    tmp_path: Path,
) -> None:
    root = digits_with(tmp_path, dynamic_batching={"default_timeout_us": 1})
    with running_server(root) as server:
        client = triton.InferenceServerClient(server.address)
        config = client.get_model_config("digits", as_json=True)["config"]
        policy = config["dynamic_batching"]["default_queue_policy"]
        assert policy["default_timeout_microseconds"] == "1"
        with pytest.raises(InferenceServerException) as late:  # 1 us is over before queueing
            client.infer("digits", [image_input()])
        assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        # Triton's `timeout` parameter (us) replaces the model's default.
        answer = client.infer("digits", [image_input()], timeout=10_000_000)
        np.testing.assert_array_equal(answer.as_numpy("probabilities"), expected())
        client.close()


@pytest.fixture()
def unbatched_process() -> Iterator[str]:
    process, address = spawn_server(
        [sys.executable, "-m", "service", "serve", "--model-repository", str(EXAMPLE_MODELS),
         "--port", "0", "--metrics-port", "0", "--batching", "off"]
    )  # fmt: skip
    yield address
    process.terminate()
    process.wait(timeout=60)


def test_batching_off_runs_every_request_alone_as_sent(unbatched_process: str) -> None:
    client = triton.InferenceServerClient(unbatched_process)
    requests = [(seed, 1 + seed % 3) for seed in range(120)]

    def send(request: tuple[int, int]) -> np.ndarray:
        seed, rows = request
        answer = client.infer("digits", [image_input(seed, rows)]).as_numpy("probabilities")
        assert answer is not None
        return np.asarray(answer)

    with ThreadPoolExecutor(8) as pool:  # concurrent: batching on would merge some
        answers = list(pool.map(send, requests))
    for (seed, rows), answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, expected(seed, rows))
    stats = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) == len(requests)  # one run per request
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    assert sizes == {rows: sum(1 for _, r in requests if r == rows) for rows in (1, 2, 3)}
    client.close()


def test_two_instances_run_two_batches_at_once(tmp_path: Path) -> None:
    gates: list[GatedRunner] = []
    root = digits_with(tmp_path, instances=2)
    with running_server(root, gated_scheduler(gates, every_instance=True)) as server:
        served = server.server.repository.get("digits")
        assert len(served.runners) == 2
        threads = default_intra_op_threads(2)
        assert [r.intra_op_threads for r in served.runners] == [threads, threads]
        client = triton.InferenceServerClient(server.address)
        group = client.get_model_config("digits", as_json=True)["config"]["instance_group"]
        assert group[0]["count"] == 2
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.infer, "digits", [image_input(1)])
            for _ in range(6000):  # until one instance holds it (bounded)
                if any(gate.entered.wait(timeout=0.01) for gate in gates):
                    break
            second = pool.submit(client.infer, "digits", [image_input(2)])
            for gate in gates:  # both instances hold a batch at the same time
                assert gate.entered.wait(timeout=60)
            for gate in gates:
                gate.release()
            np.testing.assert_array_equal(first.result().as_numpy("probabilities"), expected(1))
            np.testing.assert_array_equal(second.result().as_numpy("probabilities"), expected(2))
        client.close()


@pytest.mark.parametrize("source", ["file", "environment"])
def test_bearer_token_from_a_file_or_the_environment(tmp_path: Path, source: str) -> None:
    command = [sys.executable, "-m", "service", "serve", "--model-repository",
               str(EXAMPLE_MODELS), "--port", "0", "--metrics-port", "0"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNNSERVE_")}
    if source == "file":
        secret = tmp_path / "token"
        secret.write_text(TOKEN + "\n")  # as a mounted Kubernetes Secret may end
        command += ["--auth-token-file", str(secret)]
    else:
        env["CNNSERVE_AUTH_TOKEN"] = TOKEN
    process, address = spawn_server(command, env)
    try:
        client = triton.InferenceServerClient(address)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("digits", [image_input()])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        answer = client.infer(
            "digits", [image_input()], headers={"authorization": f"Bearer {TOKEN}"}
        )
        np.testing.assert_array_equal(answer.as_numpy("probabilities"), expected())
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_unload_waits_for_the_requests_it_accepted(tmp_path: Path) -> None:
    gates: list[GatedRunner] = []
    root = digits_with(tmp_path)
    with running_server(
        root, gated_scheduler(gates), model_control_mode=ControlMode.EXPLICIT.value
    ) as server:
        client = triton.InferenceServerClient(server.address)
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(client.infer, "digits", [image_input(3)])
            assert gates[0].entered.wait(timeout=60)  # accepted and inside the runner
            unloading = pool.submit(client.unload_model, "digits")
            for _ in range(1000):  # real round trips until the unload has begun
                if not client.is_model_ready("digits"):
                    break
            assert not client.is_model_ready("digits")
            with pytest.raises(InferenceServerException) as refused:  # new ones: refused
                client.infer("digits", [image_input()])
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            # The unload may not return while the accepted request is held: give a wrong
            # implementation 2 s to do so (a bound on a failure, not a synchronisation).
            done = threading.Event()
            unloading.add_done_callback(lambda _: done.set())
            assert not done.wait(timeout=2)
            gates[0].release()
            np.testing.assert_array_equal(held.result().as_numpy("probabilities"), expected(3))
            unloading.result(timeout=60)
        client.close()
