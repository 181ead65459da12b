"""`cnnserve export train` writes a repository entry that the server then serves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from export.data import digits_split
from tests.serving import REPO_ROOT, running_server


def test_export_train_writes_a_servable_entry(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "export",
            "train",
            "--out",
            str(tmp_path),
            "--epochs",
            "3",
            "--name",
            "tiny",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "test accuracy" in result.stdout
    assert "max abs diff" in result.stdout and "argmax agreement" in result.stdout
    entry = tmp_path / "tiny"
    for name in ("config.yaml", "labels.txt", "model_card.json", "1/model.onnx"):
        assert (entry / name).is_file(), name
    with running_server(tmp_path) as server:
        client = triton.InferenceServerClient(server.address)
        x = np.ascontiguousarray(digits_split().test_x[:5])
        tensor = triton.InferInput("image", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x)
        scores = client.infer("tiny", [tensor]).as_numpy("probabilities")
        assert scores is not None and scores.shape == (5, 10)
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_export_into_missing_folder_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "train",
            "--out",
            str(tmp_path / "no" / "such"),
            "--epochs",
            "1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "does not exist" in result.stderr
