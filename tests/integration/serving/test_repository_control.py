"""Triton's model repository extension through tritonclient: load a new version under load
(atomic swap, nothing fails), a corrupt version leaves the old one serving, unload drains,
names cannot leave the repository root, and poll mode picks versions up by itself."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service.configuration.settings import ControlMode
from service.serving.loader import VersionLoader
from service.serving.model import ServedModel
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.serving import EXAMPLE_MODELS, ServerThread, running_server

PIXELS = np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1)


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    """A repository holding digits version 1 only."""
    root = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "digits", root / "digits")
    return root


@pytest.fixture()
def explicit_server(repository: Path) -> Iterator[ServerThread]:
    with running_server(repository, model_control_mode=ControlMode.EXPLICIT.value) as handle:
        yield handle


def infer(client: triton.InferenceServerClient) -> tuple[str, int]:
    image = triton.InferInput("image", list(PIXELS.shape), "UINT8")
    image.set_data_from_numpy(PIXELS)
    result = client.infer("digits", [image])
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None
    return str(result.get_response().model_version), int(np.argmax(probabilities))


def add_version(repository: Path, version: int, model_bytes: bytes | None = None) -> None:
    folder = repository / "digits" / str(version)
    folder.mkdir()
    source = (repository / "digits" / "1" / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(source if model_bytes is None else model_bytes)


def status_of(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_new_version_swaps_in_under_load_and_a_corrupt_one_leaves_it_serving(
    explicit_server: ServerThread, repository: Path
) -> None:
    address = explicit_server.address
    control = triton.InferenceServerClient(address)
    expected_class = infer(control)[1]
    stop = threading.Event()
    warmed = threading.Barrier(5)
    seen: list[list[tuple[str, int]]] = [[] for _ in range(4)]
    failures: list[str] = []

    def load(worker: int) -> None:
        client = triton.InferenceServerClient(address)
        try:
            for count in range(100_000):
                if count == 5:
                    warmed.wait(timeout=60)
                if stop.is_set():
                    return
                try:
                    seen[worker].append(infer(client))
                except InferenceServerException as exc:
                    failures.append(f"{exc.status()}: {exc.message()}")
        finally:
            client.close()

    workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in workers:
        thread.start()
    warmed.wait(timeout=60)  # every worker has answers from version 1
    add_version(repository, 2)
    control.load_model("digits")  # returns once version 2 serves
    after_swap = [len(answers) for answers in seen]
    # Keep the load on until every worker has had answers from after the swap.
    while not all(len(seen[i]) > after_swap[i] + 5 for i in range(4)):
        infer(control)
    stop.set()
    for thread in workers:
        thread.join(timeout=60)

    assert failures == []
    for answers in seen:
        versions = [version for version, _ in answers]
        assert versions[0] == "1" and versions[-1] == "2"
        switch = versions.index("2")
        assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}
        assert {label for _, label in answers} == {expected_class}

    add_version(repository, 3, b"this is not an ONNX file")
    with pytest.raises(InferenceServerException) as refused:
        control.load_model("digits")
    assert "version 3" in refused.value.message()
    assert "version 2 keeps serving" in refused.value.message()
    index = {
        (m["name"], m["version"]): m
        for m in control.get_model_repository_index(as_json=True)["models"]
    }
    assert index[("digits", "2")]["state"] == "READY"
    assert index[("digits", "3")]["state"] == "UNAVAILABLE"
    assert "model.onnx" in index[("digits", "3")]["reason"]
    assert control.is_model_ready("digits")
    assert infer(control) == ("2", expected_class)
    control.close()


def test_unload_refuses_new_requests_and_load_brings_it_back(
    explicit_server: ServerThread,
) -> None:
    client = triton.InferenceServerClient(explicit_server.address)
    client.unload_model("digits")
    assert not client.is_model_ready("digits")
    with pytest.raises(InferenceServerException) as refused:
        infer(client)
    assert status_of(refused.value) == "StatusCode.UNAVAILABLE"
    assert "unloaded" in refused.value.message()
    index = client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "digits", "state": "UNAVAILABLE", "reason": "unloaded"}]
    client.load_model("digits")
    assert client.is_model_ready("digits")
    assert infer(client)[0] == "1"
    client.close()


@pytest.mark.parametrize(
    "name",
    ["../etc", "..", "/etc", "/etc/passwd", "digits/../../etc", "digits/1", "a\\b", "", "x" * 200],
)
def test_names_that_could_leave_the_root_are_refused(
    explicit_server: ServerThread, name: str
) -> None:
    with grpc.insecure_channel(explicit_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call in (
            lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name)),
            lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name)),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "invalid model name" in str(refused.value.details())
        assert stub.ServerReady(pb.ServerReadyRequest()).ready


def test_a_symlink_out_of_the_root_is_refused(
    explicit_server: ServerThread, repository: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(repository / "digits", outside)
    (repository / "escape").symlink_to(outside, target_is_directory=True)
    client = triton.InferenceServerClient(explicit_server.address)
    with pytest.raises(InferenceServerException) as refused:
        client.load_model("escape")
    assert status_of(refused.value) == "StatusCode.INVALID_ARGUMENT"
    assert "outside the model repository" in refused.value.message()
    with pytest.raises(InferenceServerException) as missing:
        client.load_model("nosuchmodel")
    assert status_of(missing.value) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as overridden:
        client.load_model("digits", config='{"max_batch_size": 1}')
    assert status_of(overridden.value) == "StatusCode.INVALID_ARGUMENT"
    assert "not supported" in overridden.value.message()
    with (
        grpc.insecure_channel(explicit_server.address) as channel,
        pytest.raises(grpc.RpcError) as other_repository,
    ):
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            pb.RepositoryIndexRequest(repository_name="elsewhere")
        )
    assert other_repository.value.code() == grpc.StatusCode.NOT_FOUND
    client.close()


def test_model_control_is_off_by_default(repository: Path) -> None:
    with running_server(repository) as server:
        client = triton.InferenceServerClient(server.address)
        for action in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException) as refused:
                action("digits")
            assert status_of(refused.value) == "StatusCode.FAILED_PRECONDITION"
            assert "--model-control-mode explicit" in refused.value.message()
        assert client.is_model_ready("digits")
        client.close()


def test_poll_mode_loads_new_versions_and_skips_a_failed_one_until_it_changes(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[tuple[str, int]] = []
    real_load = VersionLoader.load

    def counting_load(self: VersionLoader, model_dir: Path, version: int) -> ServedModel:
        attempts.append((model_dir.name, version))
        return real_load(self, model_dir, version)

    monkeypatch.setattr(VersionLoader, "load", counting_load)
    with running_server(
        repository, model_control_mode=ControlMode.POLL.value, poll_interval_s=0.01
    ) as server:
        repo = server.server.poller
        client = triton.InferenceServerClient(server.address)
        add_version(repository, 2)
        for _ in range(10_000):  # real round trips until the server's own poller loads it
            if infer(client)[0] == "2":
                break
        assert infer(client)[0] == "2"

        add_version(repository, 3, b"corrupt")

        async def two_polls_at_once() -> None:  # beside the server's own poller, too
            await asyncio.gather(repo.poll_once(), repo.poll_once())

        server.call(two_polls_at_once())
        assert infer(client)[0] == "2"
        failed = [row for row in server.server.repository.index() if row.version == "3"]
        assert failed and failed[0].state == "UNAVAILABLE"
        tried = len(attempts)
        assert attempts.count(("digits", 3)) == 1  # polls overlap, one of them loads it
        server.call(repo.poll_once())
        server.call(repo.poll_once())
        assert len(attempts) == tried  # unchanged files: not retried

        shutil.copytree(repository / "digits" / "1", repository / "other" / "1")
        server.call(repo.poll_once())  # a new model folder appears: it is loaded
        assert client.is_model_ready("other")
        assert attempts[-1] == ("other", 1)

        good = (repository / "digits" / "1" / "model.onnx").read_bytes()
        (repository / "digits" / "3" / "model.onnx").write_bytes(good)  # fixed in place
        server.call(repo.poll_once())
        assert infer(client)[0] == "3"

        shutil.rmtree(repository / "digits")
        server.call(repo.poll_once())
        assert not client.is_model_ready("digits")
        client.close()
