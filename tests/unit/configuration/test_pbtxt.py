"""service/configuration/pbtxt.py reads protobuf text format as protobuf does: each config
below, parsed here and printed back canonically, is the message protobuf's own parser makes
of the original (Triton's ModelConfig, protos/); syntax errors name their line and column."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from service.configuration.pbtxt import Message, PbtxtError, Scalar, parse
from service.v2 import model_config_pb2 as mc

CONFIGS = [
    # Triton's densenet_onnx example, as its docs write it.
    """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
""",
    # The other spellings: repeated fields written out, `<>`, separators, comments, maps,
    # adjacent strings, hex and negative numbers, an empty message, `name: {`.
    """
# a comment
name: 'res' "net"  ; platform: "onnxruntime_onnx",
max_batch_size: 0x10
version_policy: { all { } }
input { name: "x" data_type: TYPE_UINT8 dims: -1 dims: 224 dims: 3 }  # trailing comment
input < name: "y\\u00e9\\n\\"q\\"" data_type: TYPE_FP16 dims: [] >
instance_group: [ { count: 2 kind: KIND_GPU gpus: [ 0 ] }, { kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { timeout_action: REJECT allow_timeout_override: true }
}
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters [ { key: "inter_op_thread_count" value { string_value: "1" } } ]
optimization { execution_accelerators { gpu_execution_accelerator : [ {
  name : "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "x" value: {
  data_type: TYPE_UINT8 dims: [ 224, 3 ] random_data: true } } } ]
""",
]


def canonical(message: Message, indent: str = "") -> str:
    lines = []
    for field in message.fields:
        if isinstance(field.value, Scalar):
            value = field.value
            text = value.text
            if value.kind == "string":
                text = (
                    '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
                )
            lines.append(f"{indent}{field.name}: {text}")
        else:
            lines.append(f"{indent}{field.name} {{")
            lines.append(canonical(field.value, indent + "  "))
            lines.append(f"{indent}}}")
    return "\n".join(line for line in lines if line)


@pytest.mark.parametrize("text", CONFIGS)
def test_parse_agrees_with_protobuf(text: str) -> None:
    theirs = text_format.Parse(text, mc.ModelConfig())
    ours = text_format.Parse(canonical(parse(text)), mc.ModelConfig())
    assert ours == theirs
    assert theirs.ListFields()  # the corpus is not trivially empty


def test_lines_are_recorded() -> None:
    message = parse('name: "a"\n\ninput {\n  name: "x"\n}\n')
    assert [(f.name, f.line) for f in message.fields] == [("name", 1), ("input", 3)]
    (inner,) = message.all("input")
    assert isinstance(inner.value, Message) and inner.value.fields[0].line == 4


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ('name: "a"\ninput {\n  name: "x"\n', "line 4, column 1", "expected a field name or '}'"),
        ('name "a"', "line 1, column 6", "expected ':' or '{' after name"),
        ('name: "unterminated\n', "line 1, column 7", "unexpected '\"'"),
        ("dims: [1, 2\nname: 3", "line 2, column 1", "expected ',' or ']'"),
        ("input [ 1 ]", "line 1, column 9", "':' before the list"),
        ("name: }", "line 1, column 7", "expected a value"),
        ("max_batch_size: 8 $", "line 1, column 19", "unexpected '$'"),
    ],
)
def test_syntax_errors_name_line_and_column(text: str, where: str, what: str) -> None:
    with pytest.raises(PbtxtError) as caught:
        parse(text)
    assert where in str(caught.value) and what in str(caught.value)
    with pytest.raises(text_format.ParseError):  # protobuf refuses each one too
        text_format.Parse(text, mc.ModelConfig())
