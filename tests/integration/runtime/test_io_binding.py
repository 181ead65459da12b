"""A model served with `io_binding: true` on the CPU EP: the IO-binding path (the one CUDA
takes by default) answers exactly what in-process onnxruntime answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from tests.digits import served_session
from tests.serving import EXAMPLE_MODELS, running_server


def test_io_binding_serves_the_same_answers(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "digits", repository / "digits")
    config = repository / "digits" / "config.yaml"
    config.write_text(config.read_text() + "io_binding: true\n")
    pixels = np.random.default_rng(3).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    with running_server(repository) as server:
        served = server.server.repository.get("digits")
        assert all(runner.io_binding for runner in served.runners)
        client = triton.InferenceServerClient(server.address)
        image = triton.InferInput("image", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels)
        got = client.infer("digits", [image]).as_numpy("probabilities")
        client.close()
    (want,) = served_session().run(["probabilities"], {"image": pixels})
    np.testing.assert_array_equal(got, want)
