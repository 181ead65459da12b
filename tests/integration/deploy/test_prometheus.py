"""A real Prometheus scrapes a live server under a short bounded load; every PromQL
expression of the Grafana dashboard and the rule files must return data.

Prometheus comes from Debian's `prometheus` package (`make test` installs it if absent).
Alert expressions are `<query> <comparison> <threshold>`: their <query> must return data
(whether they fire is promtool's job, tests/unit/telemetry/test_prometheus_rules.py). Expressions on
GPU memory are checked only where NVML sees a GPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import yaml
from PIL import Image

from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.serving import REPO_ROOT, ServerThread, free_port, running_server

DEPLOY = REPO_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "cnnserve.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cnnserve.json"
COMPARISON = re.compile(r"\s(>|<|>=|<=|==|!=)\s*[0-9.]+\s*$")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def rule_expressions() -> list[str]:
    expressions = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            expr = " ".join(str(rule["expr"]).split())
            if "alert" in rule:
                expressions.append(COMPARISON.sub("", expr))
            else:
                expressions += [expr, rule["record"]]  # the rule and the series it records
    return expressions


def for_query(expr: str) -> str:
    """Grafana's variables as the dashboard resolves them for "All" models."""
    return expr.replace("$__rate_interval", "1m").replace('"$model"', '".*"')


def query(base: str, expr: str) -> list[object]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    result: list[object] = body["data"]["result"]
    return result


def load(address: str, stop: threading.Event, limit: int = 50_000) -> None:
    """Bounded mixed load: pixels, PNG files, and requests whose timeout is already over."""
    png = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(png, format="PNG")
    pixels = pb.ModelInferRequest(model_name="digits")
    pixels.inputs.add(name="image", datatype="UINT8", shape=[2, 8, 8, 1])
    pixels.raw_input_contents.append(bytes(128))
    encoded = pb.ModelInferRequest(model_name="digits")
    encoded.inputs.add(name="image", datatype="BYTES", shape=[1])
    encoded.raw_input_contents.append(len(png.getvalue()).to_bytes(4, "little") + png.getvalue())
    expired = pb.ModelInferRequest()
    expired.CopyFrom(pixels)
    expired.parameters["timeout"].int64_param = 1  # 1 us: always past -> DEADLINE_EXCEEDED
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for count in range(limit):
            if stop.is_set():
                return
            request = (pixels, encoded, expired)[count % 3] if count % 10 else expired
            with contextlib.suppress(grpc.RpcError):
                stub.ModelInfer(request, timeout=10)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerThread]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (make test installs Debian's `prometheus`)")
    root = tmp_path_factory.mktemp("prometheus")
    with running_server() as server:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "cnnserve",
                    "static_configs": [{"targets": [f"127.0.0.1:{server.server.metrics_port}"]}],
                }
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        process = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=(root / "prometheus.log").open("w"),
        )  # fmt: skip
        stop = threading.Event()
        loader = threading.Thread(target=load, args=(server.address, stop), daemon=True)
        loader.start()
        try:
            yield f"http://127.0.0.1:{port}", server
        finally:
            stop.set()
            loader.join(timeout=30)
            process.terminate()
            process.wait(timeout=30)


def exposes_gpu_memory(server: ServerThread) -> bool:
    """Whether the server itself exports GPU memory (NVML sees a GPU): read from its own
    /metrics, so the answer does not depend on whether Prometheus has scraped yet."""
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return "cnnserve_gpu_memory_total_bytes" in answer.read().decode()


def test_every_dashboard_and_rule_expression_returns_data(
    prometheus: tuple[str, ServerThread],
) -> None:
    base, server = prometheus
    expressions = [for_query(e) for e in dashboard_expressions() + rule_expressions()]
    gpu = [e for e in expressions if "cnnserve_gpu_memory" in e]
    assert gpu, "the dashboard shows GPU memory"
    pending = set(expressions if exposes_gpu_memory(server) else set(expressions) - set(gpu))
    deadline = time.monotonic() + 120  # the first scrape lands ~5 s after start
    while pending and time.monotonic() < deadline:
        for expr in sorted(pending):
            try:
                if query(base, expr):
                    pending.discard(expr)
            except OSError:
                break  # Prometheus not up yet
        if pending:
            time.sleep(0.5)  # poll interval between rounds of queries
    assert not pending, f"no data for: {sorted(pending)}"
    assert len(expressions) >= 30
