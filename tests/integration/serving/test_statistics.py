"""Triton's ModelStatistics through tritonclient, and /metrics by status code, from the
same observations."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.serving import running_server


def test_statistics_and_metrics_agree() -> None:
    with running_server() as server:
        client = triton.InferenceServerClient(server.address)
        for _ in range(3):
            tensor = triton.InferInput("image", [2, 8, 8, 1], "UINT8")
            tensor.set_data_from_numpy(np.zeros((2, 8, 8, 1), np.uint8))
            client.infer("digits", [tensor])
        bad = triton.InferInput("image", [1, 8, 8, 1], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 8, 8, 1), np.float32))
        with pytest.raises(InferenceServerException):
            client.infer("digits", [bad])
        with pytest.raises(InferenceServerException):
            client.infer("no-such-model", [bad])

        stats = client.get_inference_statistics("digits", as_json=True)["model_stats"]
        assert [(s["name"], s["version"]) for s in stats] == [("digits", "1")]
        digits = stats[0]
        assert digits["inference_count"] == "6"  # rows of successful requests
        assert digits["inference_stats"]["success"]["count"] == "3"
        assert digits["inference_stats"]["fail"]["count"] == "1"
        executions = int(digits["execution_count"])
        assert 1 <= executions <= 3
        assert sum(int(b["compute_infer"]["count"]) for b in digits["batch_stats"]) == executions
        # Per request, as Triton counts them; perf_analyzer requires the three to agree.
        inference = digits["inference_stats"]
        assert inference["compute_infer"]["count"] == "3"
        assert inference["compute_input"]["count"] == inference["compute_output"]["count"] == "3"
        assert int(digits["last_inference"]) > 0
        with pytest.raises(InferenceServerException):
            client.get_inference_statistics("no-such-model")

        url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        counts = {
            (s.labels["model"], s.labels["code"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "cnnserve_request_duration_seconds_count"
        }
        assert counts[("digits", "OK")] == 3
        assert counts[("digits", "INVALID_ARGUMENT")] == 1
        assert counts[("", "NOT_FOUND")] == 1  # unknown names are not labels
        assert "cnnserve_model_ready" in text and "process_cpu_seconds_total" in text
