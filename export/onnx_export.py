"""Export to ONNX with a dynamic batch axis, check parity, write a repository entry."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
import yaml
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


class ExportError(RuntimeError):
    """torch.onnx.export could not turn the model into a graph: why, and what usually helps."""


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    argmax_agreement: float
    samples: int


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> None:
    """One self-contained file; axis 0 of input and output is the dynamic batch."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (dynamo=False) writes a plain graph with named dynamic axes,
    # which onnxruntime reads as symbolic dims, with no onnxscript rewrites involved.
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    except Exception as exc:  # the exporter raises many types
        raise ExportError(
            f"torch.onnx.export failed for {type(model).__name__} with an input of shape "
            f"{tuple(example.shape)}: {type(exc).__name__}: {exc}. Usual causes: the input "
            "shape does not fit the model, Python control flow that depends on tensor values, "
            "or an operator with no ONNX equivalent at opset 17."
        ) from exc
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    # Shape inference must reach the output with the batch axis still symbolic.
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    if not dims or dims[0].dim_param != "batch":
        raise ExportError(f"{path.name}: the output's first axis is not the dynamic batch")


def check_parity(
    model: nn.Module, path: Path, x: npt.NDArray[np.float32], output_name: str = OUTPUT_NAME
) -> Parity:
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run([output_name], {INPUT_NAME: x})[0]
    return Parity(
        max_abs_diff=float(np.abs(expected - actual).max()),
        argmax_agreement=float((expected.argmax(1) == actual.argmax(1)).mean()),
        samples=len(x),
    )


def write_repository_entry(
    root: Path,
    name: str,
    model: nn.Module,
    example: torch.Tensor,
    labels: tuple[str, ...],
    config: dict[str, Any],
    version: int = 1,
) -> Path:
    """models/<name>/{config.yaml, labels.txt, <version>/model.onnx}; the card comes after
    the checks (export.report.write_card)."""
    if not root.exists():
        raise FileNotFoundError(
            f"output folder {root} does not exist (create it, or point --out at a model repository)"
        )
    entry = root / name
    model_path = entry / str(version) / "model.onnx"
    export_onnx(model, example, model_path)
    (entry / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    (entry / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return model_path


def parity_dict(parity: Parity) -> dict[str, Any]:
    return asdict(parity)


def to_fp16(source: Path, target: Path) -> None:
    """An fp16 copy for GPUs (inputs and outputs stay fp32, cast inside the graph)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _sort_nodes(model.graph)  # the converter appends its input casts at the end
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    onnx.checker.check_model(onnx.load(str(target)))


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Topological order (ONNX requires it): a node after every producer of its inputs."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ExportError("the fp16 graph has a cycle or an input nobody produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def load_module(reference: str) -> nn.Module:
    """`package.module:name` -> an nn.Module: `name` is a module instance, or a class or
    function called with no arguments."""
    import importlib

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ExportError(f"--module must look like package.module:name, got {reference!r}")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"cannot import {reference}: {exc}") from exc
    model = found() if callable(found) and not isinstance(found, nn.Module) else found
    if not isinstance(model, nn.Module):
        raise ExportError(f"{reference} gave a {type(model).__name__}, not a torch nn.Module")
    return model
