"""promtool checks of the shipped rules, and the dashboard uses only metrics we define."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry

from service.telemetry.metrics import Metrics
from tests.serving import REPO_ROOT

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (make test installs Debian's `prometheus`)")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=PROMETHEUS)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules/cnnserve.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "tests/cnnserve.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def defined_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry, process=False)
    names = set()
    for family in registry.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
    # Families that exist only once labelled (histograms' series, counters' _total).
    for histogram in ("request", "queue", "compute", "decode"):
        base = f"cnnserve_{histogram}_duration_seconds"
        names |= {base + suffix for suffix in ("_bucket", "_sum", "_count")}
    names |= {"cnnserve_batch_size_bucket", "cnnserve_batch_size_sum", "cnnserve_batch_size_count"}
    names |= {"cnnserve_rejections_total"}
    names |= {"cnnserve_gpu_memory_used_bytes", "cnnserve_gpu_memory_total_bytes"}
    return names


def test_dashboard_and_rules_use_only_defined_metric_names() -> None:
    dashboard = (REPO_ROOT / "deploy" / "grafana" / "dashboards" / "cnnserve.json").read_text()
    rules = (PROMETHEUS / "rules" / "cnnserve.rules.yml").read_text()
    used = set(re.findall(r"\bcnnserve_[a-z_]+", dashboard + rules))
    unknown = used - defined_names()
    assert not unknown, f"not defined in service/telemetry/metrics.py: {sorted(unknown)}"
    panels = json.loads(dashboard)["panels"]
    titles = " ".join(p["title"] for p in panels)
    for needed in ("Throughput", "latency", "Queue wait", "Batch size", "Queue depth",
                   "Errors by code", "ready", "GPU memory"):  # fmt: skip
        assert needed in titles
