"""Static checks of deploy/: hadolint, Kubernetes schemas (kubernetes-validate), the CRDs'
published fields, compose, and that the numbers in the manifests agree with the server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.serving import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
BIN = Path(sys.executable).parent
BUILTIN = [
    "k8s/deployment.yaml",
    "k8s/service.yaml",
    "k8s/hpa.yaml",
    "k8s/prometheus-adapter-rules.yaml",
]


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (it is a dev dependency: make test installs it)")
    return found


def test_hadolint_dockerfile() -> None:
    result = subprocess.run(
        [tool("hadolint"), "Dockerfile"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_builtin_kinds_validate_strictly() -> None:
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", *[str(DEPLOY / f) for f in BUILTIN]],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 6, result.stdout


def _strict(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


METADATA = {"type": "object", "required": ["name"]}
ANY: dict[str, Any] = {}
# The fields of the published CRDs that these manifests use (monitoring.coreos.com/v1
# PodMonitor; serving.kserve.io/v1alpha1 ServingRuntime; v1beta1 InferenceService).
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitor": _strict(
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": ANY,
            "metadata": METADATA,
            "spec": _strict(
                {
                    "selector": _strict({"matchLabels": {"type": "object"}}, ["matchLabels"]),
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": _strict(
                            {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            },
                            ["port"],
                        ),
                    },
                },
                ["selector", "podMetricsEndpoints"],
            ),
        },
        ["apiVersion", "kind", "metadata", "spec"],
    ),
    "ServingRuntime": _strict(
        {
            "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
            "kind": ANY,
            "metadata": METADATA,
            "spec": _strict(
                {
                    "annotations": {"type": "object"},
                    "supportedModelFormats": {
                        "type": "array",
                        "items": _strict(
                            {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "autoSelect": {"type": "boolean"},
                                "priority": {"type": "integer"},
                            },
                            ["name"],
                        ),
                    },
                    "protocolVersions": {
                        "type": "array",
                        "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                    },
                    "containers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "required": ["name", "image"]},
                    },
                },
                ["supportedModelFormats", "containers"],
            ),
        },
        ["apiVersion", "kind", "metadata", "spec"],
    ),
    "InferenceService": _strict(
        {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": ANY,
            "metadata": METADATA,
            "spec": _strict(
                {
                    "predictor": _strict(
                        {
                            "model": _strict(
                                {
                                    "modelFormat": _strict(
                                        {"name": {"type": "string"}, "version": {"type": "string"}},
                                        ["name"],
                                    ),
                                    "runtime": {"type": "string"},
                                    "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
                                    "storageUri": {"type": "string"},
                                    "resources": {"type": "object"},
                                },
                                ["modelFormat"],
                            )
                        },
                        ["model"],
                    )
                },
                ["predictor"],
            ),
        },
        ["apiVersion", "kind", "metadata", "spec"],
    ),
}


@pytest.mark.parametrize(
    "path", ["k8s/podmonitor.yaml", "kserve/servingruntime.yaml", "kserve/inferenceservice.yaml"]
)
def test_custom_resources_use_published_fields(path: str) -> None:
    for document in documents(DEPLOY / path):
        jsonschema.validate(document, CRD_SCHEMAS[document["kind"]])


def test_serving_runtime_is_what_kserve_expects() -> None:
    (runtime,) = documents(DEPLOY / "kserve" / "servingruntime.yaml")
    spec = runtime["spec"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["onnx"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert "/mnt/models" in container["args"]
    assert [p["name"] for p in container["ports"]] == ["h2c"]
    (service,) = documents(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]


def test_drain_timeline_fits_the_grace_period() -> None:
    (deployment,) = documents(DEPLOY / "k8s" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(env["CNNSERVE_GRACE_PERIOD"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    liveness = container["livenessProbe"]
    # A draining server answers NOT_SERVING: liveness must tolerate the whole drain.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > pre_stop + drain
    assert {"grpc"} == set(container["readinessProbe"]) - {"periodSeconds", "failureThreshold"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    # The image serves those ports (its CNNSERVE_* defaults) and exposes each of them.
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text()
    assert "EXPOSE 8000 8001 8002" in dockerfile
    for variable, port in (("HTTP_PORT", 8000), ("PORT", 8001), ("METRICS_PORT", 8002)):
        assert f"CNNSERVE_{variable}={port}" in dockerfile


def test_hpa_metric_is_the_one_the_adapter_serves() -> None:
    hpa = next(
        d for d in documents(DEPLOY / "k8s" / "hpa.yaml") if d["kind"] == "HorizontalPodAutoscaler"
    )
    (adapter,) = documents(DEPLOY / "k8s" / "prometheus-adapter-rules.yaml")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == rules[0]["name"]["as"]
    assert "cnnserve_queue_depth" in rules[0]["seriesQuery"]


def test_compose_parses_and_wires_the_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"cnnserve", "prometheus", "grafana"}
    assert services["cnnserve"]["build"]["context"] == ".."
    assert (DEPLOY / services["cnnserve"]["build"]["context"] / "Dockerfile").is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), source
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["cnnserve:8002"]
