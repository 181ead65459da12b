"""A Triton config.pbtxt read into cnnserve's model config: every field an ONNX model's
config uses is served as Triton serves it, and a field cnnserve does not serve is refused
with its name and line, never ignored."""

from __future__ import annotations

import pytest

from service.configuration.declared import VersionPolicy, WarmupInput
from service.configuration.model_config import DynamicBatching, TensorSpec
from service.configuration.triton_model_config import read_triton_config
from service.tensors.errors import ConfigError

FULL = """
name: "densenet"
backend: "onnxruntime"
max_batch_size: 8
version_policy { latest { num_versions: 1 } }
default_model_filename: "net.onnx"
input [ { name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 48 ]
          reshape { shape: [ 3, 4, 4 ] } } ]
output [ { name: "fc6_1" data_type: TYPE_FP32 dims: [ 10 ] reshape { shape: [ 10, 1, 1 ] }
           label_filename: "labels.txt" } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
  preserve_ordering: true
  default_queue_policy { max_queue_size: 64 default_timeout_microseconds: 20000
                         allow_timeout_override: false timeout_action: REJECT }
}
instance_group [ { name: "g" count: 2 kind: KIND_GPU gpus: [ 1 ] },
                 { count: 1 kind: KIND_GPU gpus: 1 } ]
parameters { key: "intra_op_thread_count" value: { string_value: "3" } }
parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
optimization { execution_accelerators { gpu_execution_accelerator [ {
  name: "cuda" parameters { key: "cudnn_conv_algo_search" value: "HEURISTIC" } } ] }
  input_pinned_memory { enable: true } }
model_warmup [ { name: "w" batch_size: 2 count: 3 inputs { key: "data_0" value: {
  data_type: TYPE_FP32 dims: [ 48 ] random_data: true } } } ]
model_transaction_policy { decoupled: false }
"""


def test_every_served_field_is_read() -> None:
    overrides = read_triton_config("densenet", FULL)
    assert overrides.max_batch_size == 8
    assert overrides.inputs == (TensorSpec("data_0", "FP32", (48,)),)
    assert overrides.outputs == (TensorSpec("fc6_1", "FP32", (10,)),)
    assert overrides.device == "cuda:1" and overrides.instances == 3
    assert overrides.dynamic_batching == DynamicBatching(
        max_queue_delay_us=500, preferred_batch_sizes=(4, 8), max_queue_size=64,
        default_timeout_us=20000,
    )  # fmt: skip
    assert overrides.provider_options == {"cudnn_conv_algo_search": "HEURISTIC"}
    triton = overrides.triton
    assert triton is not None
    assert triton.reshapes == {"data_0": (3, 4, 4), "fc6_1": (10, 1, 1)}
    assert triton.formats == {"data_0": "FORMAT_NCHW"}
    assert triton.label_files == {"fc6_1": "labels.txt"}
    assert triton.model_file == "net.onnx"
    assert triton.version_policy == VersionPolicy("latest", num_versions=1)
    assert triton.dynamic_batching
    assert (triton.intra_op_threads, triton.inter_op_threads) == (3, 1)
    (sample,) = triton.warmup
    assert (sample.name, sample.batch_size, sample.count) == ("w", 2, 3)
    assert sample.inputs == {"data_0": WarmupInput("FP32", (48,), "random_data")}


def test_what_it_leaves_out_is_left_to_the_onnx_file() -> None:
    overrides = read_triton_config("m", 'platform: "onnxruntime_onnx"')
    assert overrides.inputs is None and overrides.outputs is None
    assert overrides.max_batch_size is None and overrides.instances is None
    assert overrides.triton is not None and not overrides.triton.dynamic_batching


@pytest.mark.parametrize(
    ("policy", "expected", "selected"),
    [
        ("latest { num_versions: 2 }", VersionPolicy("latest", 2), [2, 3]),
        ("all { }", VersionPolicy("all"), [1, 2, 3]),
        ("specific { versions: [ 1, 3 ] }", VersionPolicy("specific", versions=(1, 3)), [1, 3]),
    ],
)
def test_version_policies(policy: str, expected: VersionPolicy, selected: list[int]) -> None:
    triton = read_triton_config("m", f"version_policy {{ {policy} }}").triton
    assert triton is not None and triton.version_policy == expected
    assert expected.select([3, 1, 2]) == selected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "other"', "line 1: name 'other' does not match the model's folder 'm'"),
        ('platform: "tensorflow_graphdef"', "cnnserve serves only 'onnxruntime_onnx'"),
        ('backend: "python"', "cnnserve serves only 'onnxruntime'"),
        ('\n\nmax_batch_sise: 4', "line 3: unknown field 'max_batch_sise'"),
        ("sequence_batching { }", "field 'sequence_batching' is not supported by cnnserve"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: 3 optional: true } ]',
         "field 'input.optional' is not supported"),
        ('input [ { name: "x" data_typ: TYPE_FP32 } ]', "unknown field 'input.data_typ'"),
        ('input [ { name: "x" data_type: TYPE_FLOAT dims: 3 } ]', "must be one of"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 0 ] } ]', "positive or -1"),
        ("instance_group [ { kind: KIND_GPU gpus: [ 0, 1 ] } ]", "one GPU"),
        ("instance_group [ { kind: KIND_GPU } , { kind: KIND_CPU } ]", "on one device"),
        ("instance_group [ { kind: KIND_MODEL } ]", "must be one of"),
        ("dynamic_batching { default_queue_policy { timeout_action: DELAY } }", "DELAY"),
        ("dynamic_batching { priority_levels: 2 }", "'dynamic_batching.priority_levels' is not"),
        ('parameters { key: "execution_mode" value: { string_value: "1" } }',
         "parameter 'execution_mode' is not supported"),
        ("optimization { execution_accelerators { cpu_execution_accelerator [ { } ] } }",
         "'optimization.execution_accelerators.cpu_execution_accelerator' is not supported"),
        ('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "x" } ] } }',
         "cnnserve knows 'cuda' and 'tensorrt'"),
        ("optimization { cuda { graphs: true } }", "'optimization.cuda' is not supported"),
        ("model_transaction_policy { decoupled: true }", "decoupled: true' is not supported"),
        ("version_policy { specific { } }", "needs versions >= 1"),
        ("max_batch_size: 4 max_batch_size: 8", "given more than once"),
        ("max_batch_size: -1", "must be >= 0"),
        ('max_batch_size: "8"', "takes an integer"),
        ("model_warmup [ { inputs { key: \"x\" value: { input_data_file: \"f\" } } } ]",
         "'model_warmup.inputs.value.input_data_file' is not supported"),
        ("input {", "not valid text format: line 1, column 8"),
    ],
)  # fmt: skip
def test_refused_with_the_field_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        read_triton_config("m", text)
    assert message in str(caught.value)
    assert str(caught.value).startswith("model 'm': config.pbtxt")
