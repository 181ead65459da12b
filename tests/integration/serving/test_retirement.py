"""What a version acquires, its retirement releases (docs/architecture.md), and a version whose
batcher dies is taken out of service instead of hanging its clients.

Through the real server and tritonclient: reloads and an unload of a model with a large
initializer, then weak references prove its onnxruntime sessions and schedulers are gone,
and /metrics holds no series of a retired version."""

from __future__ import annotations

import gc
import io
import shutil
import threading
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from service.batching.batcher import BatchObserver, DynamicBatcher
from service.cli.client import health_check
from service.configuration.model_config import ModelConfig
from service.configuration.settings import ControlMode
from service.runtime.onnx_runner import OnnxRunner
from service.runtime.scheduler import Scheduler
from service.serving.loader import batch_policy
from tests import onnx_models
from tests.serving import EXAMPLE_MODELS, GatedRunner, ServerThread, running_server

INPUTS, OUTPUTS = 256, 4096  # 4 MiB of weights a version


def write_version(root: Path, version: int, seed: int) -> None:
    onnx_models.save(
        onnx_models.wide(INPUTS, OUTPUTS, seed), root / "wide" / str(version) / "model.onnx"
    )


def infer_wide(client: triton.InferenceServerClient) -> str:
    x = triton.InferInput("x", [1, INPUTS], "FP32")
    x.set_data_from_numpy(np.ones((1, INPUTS), np.float32))
    result = client.infer("wide", [x])
    assert result.as_numpy("y") is not None
    return str(result.get_response().model_version)


def series(server: ServerThread, model: str) -> list[tuple[str, dict[str, str], float]]:
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == model
    ]


def held_objects(server: ServerThread) -> list[weakref.ref[Any]]:
    served = server.server.repository.get("wide")
    refs: list[weakref.ref[Any]] = [weakref.ref(served), weakref.ref(served.scheduler)]
    refs += [weakref.ref(runner.session) for runner in served.runners]
    return refs


def test_reloads_and_unload_release_sessions_threads_and_series(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_version(root, 1, seed=1)
    with running_server(root, model_control_mode=ControlMode.EXPLICIT.value) as server:
        client = triton.InferenceServerClient(server.address)
        repository = server.server.repository
        retired: list[weakref.ref[Any]] = []
        assert infer_wide(client) == "1"
        for version in (2, 3, 4):
            retired += held_objects(server)
            write_version(root, version, seed=version)
            client.load_model("wide")
            assert infer_wide(client) == str(version)
        # The same version number with new files: the new load takes over its series.
        retired += held_objects(server)
        write_version(root, 4, seed=40)
        client.load_model("wide")
        assert infer_wide(client) == "4"
        server.call(repository.wait_retired())
        gc.collect()
        assert [ref for ref in retired if ref() is not None] == []
        versions = {labels["version"] for _, labels, _ in series(server, "wide")}
        assert versions == {"4"}  # versions 1-3 left no series behind
        names = {name for name, _, _ in series(server, "wide")}
        assert {"cnnserve_queue_depth", "cnnserve_model_ready"} <= names  # 4's, kept

        retired = held_objects(server)
        threads = {t.name for t in threading.enumerate() if t.name.startswith("cnnserve-wide")}
        assert threads  # the instance threads of the serving version
        client.unload_model("wide")
        server.call(repository.wait_retired())
        gc.collect()
        assert [ref for ref in retired if ref() is not None] == []
        assert not any(t.name in threads for t in threading.enumerate())
        # An unloaded model keeps one series, ready = 0, for the alerts; nothing else.
        assert series(server, "wide") == [
            ("cnnserve_model_ready", {"model": "wide", "version": "4"}, 0.0)
        ]
        client.close()


class DyingBatcher(DynamicBatcher):
    """A real batcher whose dispatcher dies when told to (a bug we cannot trigger
    otherwise); everything else is the production path."""

    kill = threading.Event()

    def _form_batch(self, now: float) -> Any:
        if self.kill.is_set():
            raise RuntimeError("dispatcher bug")
        return super()._form_batch(now)


def test_a_dead_batcher_fails_its_queue_and_takes_the_version_out_of_service(
    tmp_path: Path,
) -> None:
    gates: list[GatedRunner] = []
    made: list[DyingBatcher] = []

    def make(
        config: ModelConfig, runners: Sequence[OnnxRunner], observer: BatchObserver | None
    ) -> Scheduler:
        wrapped = [GatedRunner(runners[0])]  # one instance: one gate to hold
        if config.name == "digits" and not made:  # the first digits version only
            gates.extend(wrapped)
            batcher = DyingBatcher(wrapped, batch_policy(config), name=config.name)
            made.append(batcher)
            return batcher
        for gate in wrapped:
            gate.release()
        return DynamicBatcher(wrapped, batch_policy(config), name=config.name, observer=observer)

    root = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "digits", root / "digits")
    write_version(root, 1, seed=1)
    with running_server(root, make, model_control_mode=ControlMode.EXPLICIT.value) as server:
        client = triton.InferenceServerClient(server.address)
        image = triton.InferInput("image", [1, 8, 8, 1], "UINT8")
        image.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.uint8))
        answers: list[object] = [None, None]

        def send(i: int) -> None:
            try:
                answers[i] = client.infer("digits", [image]).as_numpy("probabilities")
            except InferenceServerException as exc:
                answers[i] = exc

        first = threading.Thread(target=send, args=(0,))
        first.start()
        gates[0].entered.wait(timeout=60)  # the first request is inside the runner
        queued = threading.Thread(target=send, args=(1,))
        queued.start()
        batcher = made[0]
        while batcher.queued_rows < 1:  # bounded by the thread's own timeout
            queued.join(timeout=0.01)
            assert queued.is_alive(), "the queued request returned before it was queued"
        DyingBatcher.kill.set()
        gates[0].release()
        first.join(timeout=60)
        queued.join(timeout=60)

        assert isinstance(answers[0], np.ndarray)  # already computing: it completed
        failed = answers[1]
        assert isinstance(failed, InferenceServerException)
        assert failed.status() == "StatusCode.INTERNAL" and "dispatcher bug" in failed.message()
        with pytest.raises(InferenceServerException) as refused:
            client.infer("digits", [image])
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert "dispatcher bug" in refused.value.message()
        assert not client.is_model_ready("digits")
        assert health_check(server.address, "digits", 10) == "NOT_SERVING"
        index = {
            row["name"]: row for row in client.get_model_repository_index(as_json=True)["models"]
        }
        assert index["digits"]["state"] == "UNAVAILABLE"
        assert "dispatcher bug" in index["digits"]["reason"]
        assert infer_wide(client) == "1"  # the other model serves on
        server.call(server.server.repository.wait_retired())
        assert ("cnnserve_model_ready", {"model": "digits", "version": "1"}, 0.0) in series(
            server, "digits"
        )
        client.load_model("digits")  # an explicit load brings a fresh version back
        assert client.is_model_ready("digits")
        assert client.infer("digits", [image]).as_numpy("probabilities") is not None
        client.close()


def test_a_reload_stops_the_old_versions_decode_threads(tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "digits", root / "digits")
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    with running_server(root, model_control_mode=ControlMode.EXPLICIT.value) as server:
        client = triton.InferenceServerClient(server.address)
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([png.getvalue()], dtype=np.object_))
        client.infer("digits", [image])  # an encoded image: decoded in the version's threads
        decoders = [t for t in threading.enumerate() if t.name.startswith("decode-digits")]
        assert decoders
        shutil.copytree(root / "digits" / "1", root / "digits" / "2")
        client.load_model("digits")
        assert client.infer("digits", [image]).get_response().model_version == "2"
        server.call(server.server.repository.wait_retired())
        assert not any(thread.is_alive() for thread in decoders)
        client.close()


def test_loads_and_retirements_give_freed_heap_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first load trims the heap too (its reading and timing buffers), not only a version's
    retirement: measured 120-180 MiB less RSS at start-up (bench/README.md, "memory")."""
    from service.serving import retirement

    trims: list[int] = []

    def counted() -> bool:
        trims.append(1)
        return True

    monkeypatch.setattr(retirement, "release_free_heap", counted)
    write_version(tmp_path, 1, seed=1)
    with running_server(tmp_path, model_control_mode=ControlMode.EXPLICIT.value) as server:
        server.call(server.server.repository._retirement.wait())
        assert len(trims) == 1  # the first load at start-up
        write_version(tmp_path, 2, seed=2)
        client = triton.InferenceServerClient(server.address)
        client.load_model("wide")
        server.call(server.server.repository._retirement.wait())
        assert len(trims) == 2  # version 1 retired
        client.close()
