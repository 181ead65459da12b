"""instances: auto through the server: the choice timed at load is logged and returned in
ModelMetadata, a stated config is never overridden, a model that fails while timed does
not load (its reason in the index), and a zero budget is a usage error."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper

from service.configuration.model_config import DEFAULT_MAX_BATCH_SIZE
from service.runtime.autotune import Search, batch_sizes, core_splits
from service.runtime.onnx_runner import OnnxRunner, default_intra_op_threads
from service.serving.loader import NOT_TIMED
from tests import onnx_models
from tests.integration.test_server_settings import digits_with
from tests.serving import model_parameters, running_server


def fails_when_run() -> onnx.ModelProto:
    """Loads (a valid graph, a variable batch) but every run fails: it gathers column 5 of
    a 3-column input."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "column"], ["y"], axis=1)],
        "fails_when_run",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor("column", TensorProto.INT64, [1], [5])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_config_less_model_is_timed_and_the_choice_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    onnx_models.save(onnx_models.doubler(["N", 3]), root / "double" / "1" / "model.onnx")
    with caplog.at_level(logging.INFO), running_server(root) as server:
        served = server.server.repository.get("double")
        tuning = served.tuning
        assert tuning is not None
        assert (tuning.instances, tuning.threads) in core_splits(default_intra_op_threads(1))
        assert tuning.max_batch_size in batch_sizes(DEFAULT_MAX_BATCH_SIZE)
        assert served.config.max_batch_size == tuning.max_batch_size
        solo = tuning.solo_threads is not None
        assert len(served.runners) == tuning.instances + solo
        params = model_parameters(server.address, "double")
        assert params["instances"] == tuning.instances
        assert params["intra_op_threads"] == tuning.threads
        assert params["max_batch_size"] == tuning.max_batch_size
        assert params["instances_chosen_by"] == tuning.summary()
        # both ends of the load, as timed: throughput and a lone batch's compute time
        assert params["autotune_rows_per_s"] == round(tuning.rows_per_s, 1)
        low_load = tuning.low_load_batch1_s
        assert low_load is not None and params["autotune_batch1_ms"] == round(1e3 * low_load, 3)
        assert ("solo_instance_threads" in params) == solo
        client = triton.InferenceServerClient(server.address)
        x = triton.InferInput("x", [2, 3], "FP32")
        x.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
        answer = client.infer("double", [x]).as_numpy("y")
        np.testing.assert_array_equal(answer, 2 * np.arange(6, dtype=np.float32).reshape(2, 3))
    assert any("instances auto: " + tuning.summary() in r.getMessage() for r in caplog.records)


def test_a_model_zeros_cannot_stand_for_is_not_timed_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "models"
    onnx_models.save(onnx_models.affine(["N", 3, "h", "w"]), root / "images" / "1" / "model.onnx")
    with running_server(root) as server:
        served = server.server.repository.get("images")
        assert served.tuning is None and len(served.runners) == 1
        params = model_parameters(server.address, "images")
        assert params["instances"] == 1
        assert params["instances_chosen_by"] == NOT_TIMED
        assert "not timed" in NOT_TIMED


def test_stated_instances_are_never_overridden(tmp_path: Path) -> None:
    root = digits_with(tmp_path, instances=2)
    with running_server(root) as server:
        served = server.server.repository.get("digits")
        assert served.tuning is None and len(served.runners) == 2
        params = model_parameters(server.address, "digits")
        assert params["instances"] == 2
        assert params["instances_chosen_by"] == "config"
        assert params["max_batch_size"] == 64  # as stated in config.yaml
        assert not served.config.solo_instance  # no solo instance beside a stated count
        assert "solo_instance_threads" not in params and "autotune_batch1_ms" not in params


def test_a_stated_max_batch_size_is_kept_when_instances_are_auto(tmp_path: Path) -> None:
    root = digits_with(tmp_path, instances="auto", max_batch_size=16)
    with running_server(root) as server:
        served = server.server.repository.get("digits")
        assert served.tuning is not None
        assert served.config.max_batch_size == 16
        assert {t.batch for t in served.tuning.trials} == {16}


def test_a_model_that_fails_while_timed_does_not_load(tmp_path: Path) -> None:
    root = tmp_path / "models"
    onnx_models.save(fails_when_run(), root / "fragile" / "1" / "model.onnx")
    onnx_models.save(onnx_models.doubler(["N", 3]), root / "double" / "1" / "model.onnx")
    with running_server(root) as server:
        client = triton.InferenceServerClient(server.address)
        rows = client.get_model_repository_index(as_json=True)["models"]
        index = {row["name"]: row for row in rows}
        assert index["fragile"]["state"] == "UNAVAILABLE"
        reason = index["fragile"]["reason"]
        assert "failed while being timed for instances: auto (batch 1)" in reason
        assert index["double"]["state"] == "READY"  # the others serve


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_zero_timing_budget_is_a_usage_error(how: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "service", "serve", "--model-repository", str(tmp_path)]
    env = None
    if how == "flag":
        command += ["--autotune-budget", "0"]
    else:
        import os

        env = {**os.environ, "CNNSERVE_AUTOTUNE_BUDGET": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "must be > 0 seconds" in done.stderr and "state instances" in done.stderr


def test_a_faster_lone_batch_is_served_by_a_solo_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real sessions, with the search's two timings replaced by known costs: splits with
    more instances compute more rows/s; a run with more threads answers a lone batch
    sooner (ResNet-18's shape on a CPU). Then the server keeps the most-instances split and
    one session with every core, and a lone request runs on that one."""
    cores = default_intra_op_threads(1)
    if cores < 2:
        pytest.skip("one core: a single split, nothing to choose between")

    def rows_per_s(self: Search[OnnxRunner], runners: list[OnnxRunner], batch: int) -> float:
        threads: int = runners[0].intra_op_threads
        return 1000.0 * batch * len(runners) / math.pow(threads, 0.3)

    def batch1_s(self: Search[OnnxRunner], runner: OnnxRunner) -> float:
        threads: int = runner.intra_op_threads
        return 0.040 / math.pow(threads, 0.8)

    monkeypatch.setattr(Search, "_rows_per_s", rows_per_s)
    monkeypatch.setattr(Search, "_batch1_s", batch1_s)
    root = tmp_path / "models"
    onnx_models.save(onnx_models.doubler(["N", 3]), root / "double" / "1" / "model.onnx")
    with running_server(root) as server:
        served = server.server.repository.get("double")
        assert served.tuning is not None and served.tuning.solo_threads == cores
        assert served.config.solo_instance
        assert [r.intra_op_threads for r in served.runners] == [1] * cores + [cores]
        params = model_parameters(server.address, "double")
        assert params["instances"] == cores and params["solo_instance_threads"] == cores
        assert params["autotune_batch1_ms"] == pytest.approx(40.0 / math.pow(cores, 0.8), abs=1e-3)
        assert f"solo instance of {cores} threads" in str(params["instances_chosen_by"])
        client = triton.InferenceServerClient(server.address)
        config = client.get_model_config("double", as_json=True)["config"]
        assert int(config["instance_group"][0]["count"]) == cores  # solo is not a group
        x = triton.InferInput("x", [1, 3], "FP32")
        x.set_data_from_numpy(np.ones((1, 3), np.float32))
        for _ in range(3):  # one client, one request at a time
            np.testing.assert_array_equal(
                client.infer("double", [x]).as_numpy("y"), 2 * np.ones((1, 3))
            )
