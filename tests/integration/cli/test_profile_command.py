"""`cnnserve profile` end to end on a tiny model: it sweeps, writes a config.yaml that
loads, and says clearly what is wrong when it cannot (each a subprocess, as users run it)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from service.serving.loader import VersionLoader
from tests import onnx_models
from tests.serving import free_port

QUICK = ["--concurrency", "1,2", "--seconds", "0.3", "--instances", "1",
         "--max-batch-sizes", "1,4", "--queue-delays-us", "0"]  # fmt: skip


def profile(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service", "profile", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


def tiny_repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    onnx_models.save(onnx_models.doubler(["N", 3]), root / "double" / "1" / "model.onnx")
    return root


def test_profile_writes_a_config_that_loads(tmp_path: Path) -> None:
    root, out = tiny_repository(tmp_path), tmp_path / "out"
    done = profile("--model-repository", str(root), "--model", "double", "--out", str(out), *QUICK)
    assert done.returncode == 0, done.stderr
    assert "[2/2]" in done.stdout and "best: instances 1" in done.stdout
    table = (out / "profile.md").read_text()
    assert "max_batch_size 1" in table and "max_batch_size 4" in table and "c=2" in table
    assert "c=1: req/s, p50 / p99 ms" in table  # a lone client's wait beside throughput
    assert (out / "profile.png").stat().st_size > 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["instances"] == 1 and written["max_batch_size"] in (1, 4)
    # The written config serves: put it next to the model and load the version.
    shutil.copy(out / "config.yaml", root / "double" / "config.yaml")
    served = VersionLoader().load(root / "double", 1)
    try:
        assert served.config.max_batch_size == written["max_batch_size"]
        assert len(served.runners) == 1 and served.tuning is None
    finally:
        for runner in served.runners:
            runner.close()


def test_a_model_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    root = tiny_repository(tmp_path)
    done = profile("--model-repository", str(root), "--model", "nope", *QUICK)
    assert done.returncode == 2
    assert done.stderr.strip() == f"cnnserve profile: no model 'nope' in {root}"


def test_a_server_that_is_not_up_is_reported_in_one_line() -> None:
    done = profile("--url", f"127.0.0.1:{free_port()}", "--model", "double", *QUICK)
    assert done.returncode == 1
    assert "connection refused at 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr


def test_a_budget_no_setting_meets_names_the_closest(tmp_path: Path) -> None:
    root = tiny_repository(tmp_path)
    done = profile("--model-repository", str(root), "--model", "double", "--out",
                   str(tmp_path / "out"), "--latency-budget-ms", "0.000001", *QUICK)  # fmt: skip
    assert done.returncode == 1
    assert "no setting meets the latency budget of 1e-06 ms" in done.stderr
    assert "closest: instances 1, max_batch_size" in done.stderr
    assert not (tmp_path / "out" / "config.yaml").exists()
    assert (tmp_path / "out" / "profile.md").exists()  # the measurements are kept


def test_bad_numbers_are_usage_errors(tmp_path: Path) -> None:
    root = tiny_repository(tmp_path)
    for flags, message in (
        (["--seconds", "0"], "must be > 0"),
        (["--time-limit", "0"], "--seconds, --time-limit and --latency-budget-ms must be > 0"),
        (["--concurrency", "0"], "--concurrency: values must be >= 1"),
        (["--max-batch-sizes", "x"], "expected comma-separated integers"),
    ):
        done = profile("--model-repository", str(root), "--model", "double", *flags)
        assert done.returncode == 2 and message in done.stderr, (flags, done.stderr)


def test_the_time_limit_stops_the_sweep_and_keeps_what_was_measured(tmp_path: Path) -> None:
    root, out = tiny_repository(tmp_path), tmp_path / "out"
    done = profile("--model-repository", str(root), "--model", "double", "--out", str(out),
                   "--time-limit", "0.001", *QUICK)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "time limit: 1 of 2 settings measured" in done.stdout
    assert "max_batch_size 4" not in (out / "profile.md").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["max_batch_size"] == 1


# `cnnserve ...` with Ctrl-C as a terminal gives it. A suite started in the background
# (`make test &`) hands its children SIGINT ignored, as POSIX shells start background jobs,
# and Python then never raises KeyboardInterrupt (two such runs failed this test).
WITH_CTRL_C = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('service', run_name='__main__', alter_sys=True)"
)


def test_ctrl_c_leaves_the_partial_table(tmp_path: Path) -> None:
    root, out = tiny_repository(tmp_path), tmp_path / "out"
    command = [sys.executable, "-c", WITH_CTRL_C, "profile", "--model-repository", str(root),
               "--model", "double", "--out", str(out), "--concurrency", "1", "--seconds",
               "0.3", "--instances", "1", "--max-batch-sizes", "1,2,4,8,16,32",
               "--queue-delays-us", "0,100,1000"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:  # the first setting is measured and in the table
        if line.startswith("[1/18]"):
            break
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert "interrupted: the partial table is in" in rest
    rows = [r for r in (out / "profile.md").read_text().splitlines() if r.startswith("| inst")]
    assert 1 <= len(rows) < 18
    assert not (out / "config.yaml").exists()


def test_the_scratch_server_takes_no_port_but_its_own(tmp_path: Path) -> None:
    """A server already on the REST port (the default 8000 in real use) does not stop the
    scratch server: it serves gRPC on a free port and no REST or metrics at all."""
    root = tiny_repository(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "CNNSERVE_HTTP_PORT": str(taken.getsockname()[1])}
        done = profile("--model-repository", str(root), "--model", "double", "--out",
                       str(tmp_path / "out"), "--time-limit", "0.001", *QUICK, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
