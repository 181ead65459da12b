"""Export to ONNX with a dynamic batch axis, check parity, write a repository entry."""

from __future__ import annotations

import json
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
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def check_parity(model: nn.Module, path: Path, x: npt.NDArray[np.float32]) -> Parity:
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
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
    card: dict[str, Any],
    version: int = 1,
) -> Path:
    """models/<name>/{config.yaml, labels.txt, model_card.json, <version>/model.onnx}."""
    if not root.parent.exists():
        raise FileNotFoundError(f"output folder {root.parent} does not exist")
    entry = root / name
    model_path = entry / str(version) / "model.onnx"
    export_onnx(model, example, model_path)
    (entry / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    (entry / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (entry / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return model_path


def parity_dict(parity: Parity) -> dict[str, Any]:
    return asdict(parity)
