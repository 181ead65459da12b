"""A Triton model repository served unchanged (issue 30): config.pbtxt with reshape, labels,
dynamic batching, instance groups, version policy, warm-up and default_model_filename;
answers equal in-process onnxruntime; get_model_config shows the completed config. Each bad
config.pbtxt leaves its model UNAVAILABLE with the reason, and every other model serves."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper

from service.serving.repository import ModelRepository
from tests.serving import model_parameters, running_server

DENSENET = """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 8
version_policy: { specific: { versions: [ 1 ] } }
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 48 ]
    reshape { shape: [ 3, 4, 4 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 10 ]
    reshape { shape: [ 10, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [ { name: "zeros" batch_size: 2 inputs { key: "data_0" value: {
  data_type: TYPE_FP32 dims: [ 48 ] zero_data: true } } } ]
"""
LABELS = [f"class_{i}" for i in range(10)]


def conv_model(seed: int, batch: str | int = "N") -> onnx.ModelProto:
    """A densenet-shaped head: [batch, 3, 4, 4] -> Conv -> [batch, 10, 1, 1]."""
    weights = np.random.default_rng(seed).standard_normal((10, 3, 4, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["data_0", "w"], ["fc6_1"])], "head",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [batch, 3, 4, 4])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [batch, 10, 1, 1])],
        [numpy_helper.from_array(weights, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def add_model(root: Path, name: str, config: str | None, file: str = "model.onnx",
              versions: tuple[int, ...] = (1,)) -> Path:  # fmt: skip
    folder = root / name
    for version in versions:
        target = folder / str(version) / file
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(conv_model(version), str(target))
    if config is not None:
        (folder / "config.pbtxt").write_text(config.replace("densenet_onnx", name))
    return folder


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    densenet = add_model(root, "densenet_onnx", DENSENET, versions=(1, 2))
    (densenet / "densenet_labels.txt").write_text("\n".join(LABELS) + "\n")
    # default_model_filename, and Triton's folder form (<version>/model.onnx/model.onnx).
    threads = 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }'
    named = f'default_model_filename: "head.onnx"\ninstance_group [ {{ count: 2 }} ]\n{threads}'
    add_model(root, "named_file", named, file="head.onnx")
    add_model(root, "folder_form", 'platform: "onnxruntime_onnx"', file="model.onnx/model.onnx")
    bad = {
        "syntax": 'name: "syntax"\nmax_batch_size: 8\ninput [ { name: "data_0" \n',
        "misnamed": 'name: "densenet"',
        "unknown_field": "max_batch_size: 8\nsequence_batch { }",
        "wrong_type": 'input [ { name: "data_0" data_type: TYPE_INT32 dims: [ 3, 4, 4 ] } ]',
        "wrong_dims": 'input [ { name: "data_0" data_type: TYPE_FP32 dims: [ 3, 5, 4 ] } ]',
        "missing_version": "version_policy { specific { versions: [ 4 ] } }",
        "two_configs": 'platform: "onnxruntime_onnx"',
        "tensorrt": "instance_group [ { kind: KIND_GPU } ]\noptimization { execution_accelerators "
        '{ gpu_execution_accelerator [ { name: "tensorrt" } ] } }',
        "bad_warmup": 'max_batch_size: 2\nmodel_warmup [ { name: "w" inputs { key: "data_0" '
        "value: { data_type: TYPE_FP32 dims: [ 3, 4, 5 ] zero_data: true } } } ]",
    }
    for name, config in bad.items():
        add_model(root, name, config)
    (root / "two_configs" / "config.yaml").write_text("max_batch_size: 8\n")
    return root


def reference(version: int, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(conv_model(version).SerializeToString())
    (out,) = session.run(["fc6_1"], {"data_0": pixels.reshape(-1, 3, 4, 4)})
    return np.asarray(out).reshape(-1, 10)


def infer(client: triton.InferenceServerClient, model: str, pixels: np.ndarray,
          **output: int) -> triton.InferResult:  # fmt: skip
    tensor = triton.InferInput("data_0", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    return client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("fc6_1", **output)])


def test_a_triton_repository_is_served_unchanged(repository: Path) -> None:
    pixels = np.random.default_rng(1).random((3, 48), dtype=np.float32)
    with running_server(repository) as server:
        client = triton.InferenceServerClient(server.address)
        answer = infer(client, "densenet_onnx", pixels)
        assert answer.get_response().model_version == "1"  # version_policy, not the highest
        np.testing.assert_allclose(answer.as_numpy("fc6_1"), reference(1, pixels), rtol=1e-5)
        top = infer(client, "densenet_onnx", pixels[:1], class_count=2).as_numpy("fc6_1")
        best = int(np.argmax(reference(1, pixels[:1])))
        assert top[0][0].decode().endswith(f":{best}:{LABELS[best]}")
        for name in ("named_file", "folder_form"):  # batch of [3, 4, 4] straight to the file
            tensor = triton.InferInput("data_0", [1, 3, 4, 4], "FP32")
            tensor.set_data_from_numpy(pixels[:1].reshape(1, 3, 4, 4))
            got = client.infer(name, [tensor]).as_numpy("fc6_1")
            np.testing.assert_allclose(got.reshape(1, 10), reference(1, pixels[:1]), rtol=1e-5)
        config = client.get_model_config("densenet_onnx", as_json=True)["config"]
        metadata = client.get_model_metadata("named_file", as_json=True)
        served_as = model_parameters(server.address, "named_file")
        client.close()
    assert (served_as["instances"], served_as["intra_op_threads"]) == (2, 1)
    assert config["version_policy"] == {"specific": {"versions": ["1"]}}
    (model_input,) = config["input"]
    assert model_input["dims"] == ["48"] and model_input["reshape"] == {"shape": ["3", "4", "4"]}
    assert model_input["format"] == "FORMAT_NCHW"
    (output,) = config["output"]
    assert output["dims"] == ["10"] and output["label_filename"] == "densenet_labels.txt"
    assert output["reshape"] == {"shape": ["10", "1", "1"]}
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["instance_group"][0]["count"] == 2
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["model_warmup"][0]["inputs"]["data_0"]["zero_data"] is True
    # Auto-complete: what a config.pbtxt leaves out comes from the ONNX file.
    assert metadata["inputs"] == [
        {"name": "data_0", "datatype": "FP32", "shape": ["-1", "3", "4", "4"]}
    ]


def test_each_bad_config_is_unavailable_with_its_reason(repository: Path) -> None:
    with running_server(repository) as server:
        client = triton.InferenceServerClient(server.address)
        index = {
            row["name"]: row for row in client.get_model_repository_index(as_json=True)["models"]
        }
        ready = [name for name in index if client.is_model_ready(name)]
        client.close()
    assert sorted(ready) == ["densenet_onnx", "folder_form", "named_file"]
    reasons = {name: index[name].get("reason", "") for name in index if name not in ready}
    assert "config.pbtxt is not valid text format: line 4" in reasons["syntax"]
    assert "name 'densenet' does not match the model's folder 'misnamed'" in reasons["misnamed"]
    assert "line 2: unknown field 'sequence_batch'" in reasons["unknown_field"]
    assert "'data_0' is declared INT32, the ONNX file has FP32" in reasons["wrong_type"]
    assert "declared with dims [3, 5, 4], the ONNX file has [3, 4, 4]" in reasons["wrong_dims"]
    assert (
        "names version(s) [4], which its folder has not (it has [1])" in reasons["missing_version"]
    )
    assert "both config.yaml and config.pbtxt" in reasons["two_configs"]
    assert "this onnxruntime has no TensorRT execution provider" in reasons["tensorrt"]
    assert (
        "input 'data_0' is FP32 [3, 4, 5], the model takes FP32 [3, 4, 4]" in reasons["bad_warmup"]
    )


def test_poll_mode_retries_a_bad_config_pbtxt_once_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    folder = add_model(root, "head", "max_batch_size: 8\ninput [ { name: ")
    loads: list[str] = []
    real_load = ModelRepository.load

    async def counting_load(self: ModelRepository, name: str) -> None:
        loads.append(name)
        await real_load(self, name)

    monkeypatch.setattr(ModelRepository, "load", counting_load)
    with running_server(root, model_control_mode="poll", poll_interval_s=3600) as server:
        poller = server.server.poller
        assert poller is not None
        client = triton.InferenceServerClient(server.address)
        assert not client.is_model_ready("head") and loads == ["head"]
        server.call(poller.poll_once())
        assert loads == ["head"]  # the same broken files: not retried
        (folder / "config.pbtxt").write_text("max_batch_size: 8\ndynamic_batching { }\n")
        server.call(poller.poll_once())
        assert client.is_model_ready("head") and loads == ["head", "head"]
        client.close()


def test_without_dynamic_batching_each_request_runs_alone(tmp_path: Path) -> None:
    root = tmp_path / "models"
    add_model(root, "alone", "max_batch_size: 8")
    add_model(root, "batched", "max_batch_size: 8\ndynamic_batching { }")
    with running_server(root) as server:
        alone = server.server.repository.get("alone")
        batched = server.server.repository.get("batched")
        assert not alone.config.dynamic_batching_on and batched.config.dynamic_batching_on
    shutil.rmtree(root)


def served(client: triton.InferenceServerClient, version: str) -> tuple[str, np.ndarray]:
    pixels = np.ones((1, 3, 4, 4), dtype=np.float32)
    tensor = triton.InferInput("data_0", [1, 3, 4, 4], "FP32")
    tensor.set_data_from_numpy(pixels)
    answer = client.infer("heads", [tensor], model_version=version)
    return answer.get_response().model_version, answer.as_numpy("fc6_1").reshape(1, 10)


def test_version_policies_serve_several_versions_each_routed_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = add_model(root, "heads", "version_policy { latest { num_versions: 2 } }",
                       versions=(1, 2, 3))  # fmt: skip
    ones = np.ones((1, 48), dtype=np.float32)
    with running_server(root, model_control_mode="explicit") as server:
        client = triton.InferenceServerClient(server.address)
        client.load_model("heads")
        ready = [(row["version"], row["state"]) for row in
                 client.get_model_repository_index(as_json=True)["models"]]  # fmt: skip
        assert ready == [("2", "READY"), ("3", "READY")]
        assert served(client, "")[0] == "3"  # no version asked: the highest
        for version in ("2", "3"):
            got_version, got = served(client, version)
            assert got_version == version
            np.testing.assert_allclose(got, reference(int(version), ones), rtol=1e-5)
        assert client.get_model_metadata("heads", as_json=True)["versions"] == ["2", "3"]
        with pytest.raises(triton.InferenceServerException, match="served versions: 2, 3"):
            served(client, "1")
        counts = {
            stat["version"]: stat["inference_count"]
            for stat in client.get_inference_statistics("heads", as_json=True)["model_stats"]
        }
        assert counts == {"2": "1", "3": "2"}  # each version its own series

        # A new version: the policy moves on, version 2 retires once 3 and 4 serve.
        onnx.save(conv_model(4), str(_version_file(folder, 4)))
        client.load_model("heads")
        assert [
            row["version"] for row in client.get_model_repository_index(as_json=True)["models"]
        ] == ["3", "4"]
        # A corrupt version under `all`: the others serve, it is listed with its reason.
        (folder / "config.pbtxt").write_text("version_policy { all { } }")
        _version_file(folder, 5).write_bytes(b"not onnx")
        with pytest.raises(triton.InferenceServerException, match="version 5 not loaded"):
            client.load_model("heads")
        index = client.get_model_repository_index(as_json=True)["models"]
        assert [(r["version"], r["state"]) for r in index] == [
            ("1", "READY"),
            ("2", "READY"),
            ("3", "READY"),
            ("4", "READY"),
            ("5", "UNAVAILABLE"),
        ]
        client.unload_model("heads")
        assert not client.is_model_ready("heads") and not client.is_model_ready("heads", "3")
        client.close()


def _version_file(folder: Path, version: int) -> Path:
    path = folder / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
