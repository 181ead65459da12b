"""The image's entrypoint and HEALTHCHECK, run outside a container with the Dockerfile's
own command lines and environment. Only what a container runtime would bind is changed:
the model mount (/models -> the example repository) and the published ports (free ports)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.serving import EXAMPLE_MODELS, REPO_ROOT, free_port, spawn_server


def final_stage() -> list[str]:
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    return instructions[last_from:]


def image_env(stage: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in stage:
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(stage: list[str], instruction: str) -> list[str]:
    for line in stage:
        found = re.search(rf"{instruction}\s+(\[.*\])\s*$", line)
        if line.startswith(instruction.split()[0]) and found:
            command: list[str] = json.loads(found.group(1))
            return command
    raise AssertionError(f"no exec-form {instruction} in the final stage")


def test_entrypoint_serves_and_healthcheck_answers() -> None:
    stage = final_stage()
    assert any(line.startswith("USER ") and "root" not in line for line in stage)
    entrypoint = exec_form(stage, "ENTRYPOINT")
    healthcheck = exec_form(stage, "HEALTHCHECK .* CMD")
    env = image_env(stage)
    assert env["CNNSERVE_MODEL_REPOSITORY"] == "/models"
    assert env["CNNSERVE_HTTP_PORT"] == "8000"
    grpc_port, metrics_port, http_port = free_port(), free_port(), free_port()
    env.update(
        CNNSERVE_MODEL_REPOSITORY=str(EXAMPLE_MODELS),  # the volume a container mounts
        CNNSERVE_PORT=str(grpc_port),
        CNNSERVE_METRICS_PORT=str(metrics_port),
        CNNSERVE_HTTP_PORT=str(http_port),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    process, address = spawn_server(entrypoint, env)
    try:
        assert address == f"0.0.0.0:{grpc_port}"
        check = [arg.replace(":8001", f":{grpc_port}") for arg in healthcheck]
        result = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SERVING" in result.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready") as ready:
            assert ready.status == 200  # the REST port the image exposes serves too
        # Exec form: the signal reaches the server, which drains and exits 0.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        down = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
        assert down.returncode == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
