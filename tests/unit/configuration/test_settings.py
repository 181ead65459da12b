"""One schema for server settings: the CLI's defaults are ServerSettings' own, environment
variables override them, and a bad value is a usage error (exit 2), not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.__main__ import build_parser, main, serve_settings
from service.configuration.settings import SERVE_OPTIONS, ControlMode, EventLoop, ServerSettings
from tests.serving import REPO_ROOT


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for option in SERVE_OPTIONS:
        monkeypatch.delenv(f"CNNSERVE_{option.env}", raising=False)


def test_cli_defaults_are_the_schema_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert serve_settings(args) == ServerSettings()


def test_flags_and_environment_fill_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNSERVE_PORT", "9001")
    monkeypatch.setenv("CNNSERVE_MODEL_CONTROL_MODE", "poll")
    monkeypatch.setenv("CNNSERVE_BATCHING", "off")
    args = build_parser().parse_args(["serve", "--event-loop", "asyncio", "--no-metrics"])
    settings = serve_settings(args)
    assert settings.port == 9001
    assert settings.model_control_mode is ControlMode.POLL
    assert settings.batching is False
    assert settings.event_loop is EventLoop.ASYNCIO
    assert settings.metrics_port is None
    assert settings.model_repository == Path("models")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CNNSERVE_PORT", "eighty", "CNNSERVE_PORT='eighty'"),
        ("CNNSERVE_MODEL_CONTROL_MODE", "sometimes", "CNNSERVE_MODEL_CONTROL_MODE='sometimes'"),
        ("CNNSERVE_BATCHING", "maybe", "expected on or off"),
        ("CNNSERVE_GRACE_PERIOD", "long", "CNNSERVE_GRACE_PERIOD='long'"),
    ],
)
def test_a_bad_environment_variable_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_bad_flag_value_is_a_usage_error_from_the_real_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--model-control-mode", "sometimes"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--model-control-mode" in result.stderr and "Traceback" not in result.stderr
