"""`cnnserve serve --workers 2` through real processes and tritonclient: one server to the
outside (statistics, index, metrics, repository control), and its faults."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from tests.integration.workers.fleet import Supervisor, alive, digits_input, start
from tests.serving import EXAMPLE_MODELS, REPO_ROOT, free_port, model_parameters


def bounded(condition: object, what: str, limit_s: float = 60.0) -> None:
    """Poll `condition()` (real reads of the server) until it holds; fail after limit_s."""
    deadline = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: never within {limit_s:g} s")
        time.sleep(0.05)  # poll interval, not synchronisation


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet")
    shutil.copytree(EXAMPLE_MODELS / "digits", root / "digits")
    return root


@pytest.fixture(scope="module")
def fleet(repository: Path) -> Iterator[Supervisor]:
    supervisor = start(repository, "--model-control-mode", "explicit")
    yield supervisor
    assert supervisor.stop() == 0


def test_connections_spread_over_workers_and_one_server_answers(fleet: Supervisor) -> None:
    before = fleet.samples("cnnserve_worker_requests")
    lone = fleet.client()
    for _ in range(10):
        lone.infer("digits", digits_input())
    after_lone = fleet.samples("cnnserve_worker_requests")
    grown = [key for key, value in after_lone.items() if value > before.get(key, 0.0)]
    assert len(grown) == 1, "one connection lands on one worker"
    clients = [fleet.client() for _ in range(16)]  # all on one worker: p = 2 * 2**-16
    for client in clients:
        client.infer("digits", digits_input())
    spread = fleet.samples("cnnserve_worker_requests")
    assert all(value > before.get(key, 0.0) for key, value in spread.items())
    assert len(spread) == 2
    # Statistics, metrics and the index: summed / agreed across both workers.
    answered = sum(spread.values())
    stats = lone.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) == answered
    assert int(stats["inference_stats"]["success"]["count"]) == answered
    assert fleet.value("cnnserve_request_duration_seconds_count", model="digits") == answered
    assert set(fleet.samples("cnnserve_queue_depth")) == {
        (("model", "digits"), ("version", "1"), ("worker", slot)) for slot in ("0", "1")
    }
    assert lone.is_server_ready() and lone.is_model_ready("digits")  # health, from a worker
    index = lone.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "digits", "version": "1", "state": "READY"}]


def ready_per_worker(fleet: Supervisor) -> dict[str, float]:
    return {
        dict(key)["worker"]: value
        for key, value in fleet.samples("cnnserve_model_ready").items()
        if dict(key)["model"] == "digits"
    }


def test_unload_and_load_reach_every_worker(fleet: Supervisor) -> None:
    client = fleet.client()
    client.unload_model("digits")
    assert ready_per_worker(fleet) == {"0": 0.0, "1": 0.0}
    for other in [fleet.client() for _ in range(8)]:
        assert not other.is_model_ready("digits")
    client.load_model("digits")
    assert ready_per_worker(fleet) == {"0": 1.0, "1": 1.0}
    for other in [fleet.client() for _ in range(8)]:
        assert other.is_model_ready("digits")


def test_a_bad_model_name_keeps_its_status_through_the_supervisor(fleet: Supervisor) -> None:
    client = fleet.client()
    for name in ("../digits", "a/b", "missing"):
        with pytest.raises(InferenceServerException) as raised:
            client.unload_model(name)
        expected = "StatusCode.NOT_FOUND" if name == "missing" else "StatusCode.INVALID_ARGUMENT"
        assert raised.value.status() == expected, raised.value.message()
    assert client.infer("digits", digits_input()).as_numpy("probabilities") is not None


def test_a_broken_version_leaves_every_worker_on_the_old_one(
    fleet: Supervisor, repository: Path
) -> None:
    broken = repository / "digits" / "2"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    try:
        with pytest.raises(InferenceServerException) as raised:
            fleet.client().load_model("digits")
        assert "failed on 2 of 2 workers" in raised.value.message()
        assert "worker 0" in raised.value.message() and "worker 1" in raised.value.message()
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        shutil.rmtree(broken)
    assert ready_per_worker(fleet) == {"0": 1.0, "1": 1.0}
    for client in [fleet.client() for _ in range(8)]:
        assert client.infer("digits", digits_input()).get_response().model_version == "1"


def test_a_killed_worker_fails_only_its_requests_and_is_replaced(repository: Path) -> None:
    supervisor = start(repository)
    try:
        pids = supervisor.worker_pids()
        failures: list[str] = []
        answered = [0]
        stop = threading.Event()

        def load() -> None:
            client = supervisor.client()
            while not stop.is_set():
                try:
                    client.infer("digits", digits_input(), client_timeout=30)
                    answered[0] += 1
                except InferenceServerException as exc:
                    failures.append(exc.status() or "")
                    client = supervisor.client()  # a new connection, to a live worker

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        bounded(lambda: answered[0] > 50, "requests answered before the kill")
        subprocess.run(["kill", "-KILL", str(pids[0])], check=True)
        bounded(lambda: supervisor.value("cnnserve_worker_restarts") == 1, "a restart")
        bounded(lambda: supervisor.value("cnnserve_workers", state="serving") == 2, "two serving")
        mark = answered[0]
        bounded(lambda: answered[0] > mark + 50, "requests answered after the restart")
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        # The killed worker's in-flight requests: UNAVAILABLE at once, never a hang.
        assert set(failures) <= {"StatusCode.UNAVAILABLE"}
        assert pids[1] in supervisor.worker_pids() or alive(pids[1])
    finally:
        assert supervisor.stop() == 0


def test_sigterm_drains_every_worker_and_the_supervisor_death_ends_them(
    repository: Path,
) -> None:
    supervisor = start(repository)
    pids = supervisor.worker_pids()
    supervisor.client().infer("digits", digits_input())
    assert supervisor.stop() == 0
    assert supervisor.process.stdout is not None
    assert "every worker answered" in supervisor.process.stdout.read()
    for pid in pids:
        bounded(lambda pid=pid: not alive(pid), f"worker {pid} exits")
    # A supervisor killed outright: its workers do not outlive it.
    orphaned = start(repository)
    pids = orphaned.worker_pids()
    orphaned.process.kill()
    orphaned.process.wait()
    for pid in pids:
        bounded(lambda pid=pid: not alive(pid), f"worker {pid} exits with its supervisor")


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service", "serve", "--model-repository", "models",
               "--port", "0", "--no-metrics", "--no-http", *args]  # fmt: skip
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("value", "message"), [("0", "must be >= 1"), ("two", "expected a number of workers")]
)
def test_a_bad_worker_count_is_a_usage_error(value: str, message: str) -> None:
    finished = serve("--workers", value)
    assert finished.returncode == 2
    assert message in finished.stderr


def test_a_bad_worker_count_in_the_environment_is_a_usage_error() -> None:
    command = [sys.executable, "-m", "service", "serve", "--help"]
    env = {**os.environ, "CNNSERVE_WORKERS": "many"}
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    assert finished.returncode == 2
    assert "CNNSERVE_WORKERS='many'" in finished.stderr


def test_a_taken_port_is_an_error_before_any_worker_starts() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        finished = serve("--workers", "2", "--port", str(port))
    assert finished.returncode == 1
    assert f"cannot serve gRPC on 127.0.0.1:{port}" in finished.stderr
    assert "worker" not in finished.stdout


def test_more_workers_than_cores_is_allowed_and_warned(repository: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    command = [sys.executable, "-m", "service", "serve", "--model-repository", str(repository),
               "--port", str(free_port()), "--no-metrics", "--no-http",
               "--workers", str(cores + 1), "--autotune-budget", "0.2"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    for line in process.stdout:
        if line.startswith("cnnserve listening on"):
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    assert "more workers than cores" in process.stderr.read()


def test_in_poll_mode_every_worker_picks_up_a_new_model(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE_MODELS / "digits", tmp_path / "digits")
    supervisor = start(tmp_path, "--model-control-mode", "poll", "--poll-interval", "0.2")
    try:
        shutil.copytree(EXAMPLE_MODELS / "digits", tmp_path / "digits2")

        def ready_on_both() -> bool:
            ready = supervisor.samples("cnnserve_model_ready")
            return sum(v for k, v in ready.items() if ("model", "digits2") in k) == 2

        bounded(ready_on_both, "digits2 ready on both workers")
        for client in [supervisor.client() for _ in range(8)]:
            assert client.is_model_ready("digits2")
    finally:
        assert supervisor.stop() == 0


def test_each_worker_sizes_itself_to_its_share_of_the_cores(fleet: Supervisor) -> None:
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    workers_line = next(line for line in fleet.banner if line.startswith("  workers:"))
    assert f"{share} cores each" in workers_line
    for _ in range(4):  # connections land on either worker; each sized to its share
        parameters = model_parameters(fleet.address, "digits")
        threads = parameters["intra_op_threads"]
        instances = parameters["instances"]
        assert isinstance(threads, int) and isinstance(instances, int)
        assert instances * threads <= share
