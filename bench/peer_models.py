"""The peers' benchmark models (../shared/peerbench), for benches that compare with the
figures measured on them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.run import ROOT

PEER_EXPORTER = ROOT.parent / "shared" / "peerbench" / "export_models.py"


def resnet18_onnx(folder: Path) -> Path:
    """The peers' ResNet-18 when their exporter is here, else ours (both need torch)."""
    folder.mkdir(parents=True, exist_ok=True)
    if PEER_EXPORTER.is_file():
        target = folder / "resnet18.onnx"
        if not target.is_file():
            subprocess.run([sys.executable, str(PEER_EXPORTER), "--out", str(folder)],
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        return target
    import torch

    from export.architectures import ResNet18
    from export.onnx_export import export_onnx

    target = folder / "ours" / "1" / "model.onnx"
    torch.manual_seed(0)
    export_onnx(ResNet18().eval(), torch.zeros(1, 3, 224, 224), target, "input", "logits")
    return target
