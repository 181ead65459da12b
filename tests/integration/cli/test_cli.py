"""The `cnnserve` command line as a user runs it: serve (flags and env), infer, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from export.data import digits_split
from tests.digits import served_session
from tests.serving import EXAMPLE_MODELS, REPO_ROOT, free_port, spawn_server


@pytest.fixture(scope="module")
def served_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {
        **os.environ,
        "CNNSERVE_PORT": "0",
        "CNNSERVE_METRICS_PORT": "0",
        "CNNSERVE_MODEL_REPOSITORY": str(EXAMPLE_MODELS),
    }
    process, address = spawn_server([sys.executable, "-m", "service", "serve"], env)
    yield process, address
    if process.poll() is None:
        process.kill()
        process.wait()


def test_infer_command_prints_top_k(
    served_process: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    _, address = served_process
    split = digits_split()
    predicted = served_session().run(None, {"image": split.test_x[:20]})[0].argmax(axis=1)
    chosen = [i for i in range(20) if predicted[i] == split.test_y[i]][:4]
    paths = []
    for index in chosen:  # the file's bytes go to the server as they are
        path = tmp_path / f"digit{index}.png"
        Image.fromarray(split.test_x[index, :, :, 0]).save(path)
        paths.append(path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "infer",
            "--url",
            address,
            "--model",
            "digits",
            "--top-k",
            "2",
            *map(str, paths),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == len(chosen)
    for line, index in zip(out, chosen, strict=True):
        top = line.split(": ", 1)[1].split(", ")
        assert len(top) == 2
        assert top[0].split()[0] == str(split.test_y[index]), line


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=REPO_ROOT, capture_output=True, text=True
    )


NOWHERE = "127.0.0.1:{port}"  # a loopback port that nothing listens on


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["infer", "--model", "nosuch", "{png}"], 1, "NOT_FOUND: unknown model 'nosuch'"),
        (["infer", "--model", "digits", "{garbage}"], 1, "INVALID_ARGUMENT: "),
        # Refused at once (a TCP probe), not after the connection timeout (the default 10 s).
        (["infer", "--model", "digits", "--url", NOWHERE, "{png}"], 1,
         "connection refused at 127.0.0.1:"),
        (["infer", "--model", "digits", "--url", "http://127.0.0.1:8001/", "{png}"], 2,
         "not a URL with 'http://': try --url 127.0.0.1:8001"),
        (["infer", "--model", "digits", "{missing}"], 2, "cannot read "),
        (["infer", "--model", "digits", "--top-k", "0", "{png}"], 2, "--top-k must be"),
        (["infer", "{png}"], 2, "the following arguments are required: --model"),
        (["health", "--service", "nosuch"], 1, "NOT_FOUND: the server has no health status"),
        (["health", "--url", NOWHERE], 1, "connection refused at 127.0.0.1:"),
        (["health", "--url", "grpc://127.0.0.1:8001"], 2, "try --url 127.0.0.1:8001"),
        (["health", "--timeout", "soon"], 2, "invalid float value"),
    ],
)  # fmt: skip
def test_client_errors_are_one_line_with_an_exit_code(
    served_process: tuple[subprocess.Popen[str], str],
    tmp_path: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    _, address = served_process
    png = tmp_path / "digit.png"
    Image.fromarray(digits_split().test_x[0, :, :, 0]).save(png)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    files = {"png": png, "garbage": garbage, "missing": tmp_path / "missing.png"}
    command = [arg.format(port=free_port(), **files) for arg in args]
    if "--url" not in command:
        command[1:1] = ["--url", address]
    result = cli(*command)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_health_of_a_serving_server_exits_0(
    served_process: tuple[subprocess.Popen[str], str],
) -> None:
    _, address = served_process
    result = cli("health", "--url", address, "--service", "digits")
    assert result.returncode == 0
    assert result.stdout.strip() == f"digits at {address}: SERVING"


def test_sigterm_stops_cleanly(served_process: tuple[subprocess.Popen[str], str]) -> None:
    process, _ = served_process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def test_export_without_torch_says_which_extra() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from service.__main__ import main\n"
        "sys.exit(main(['export', 'train']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "make export-deps" in result.stderr  # a checkout: the make target, not PyPI


@pytest.mark.parametrize(("flag", "what"), [("--metrics-port", "metrics"), ("--http-port", "HTTP")])
def test_a_busy_port_is_a_clear_error_with_the_make_run_form(flag: str, what: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        others = ["--metrics-port", "0"] if flag == "--http-port" else ["--http-port", "0"]
        result = subprocess.run(
            [sys.executable, "-m", "service", "serve", "--model-repository", str(EXAMPLE_MODELS),
             "--port", "0", *others, flag, str(port)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot serve {what} on 127.0.0.1:{port}" in result.stderr
    assert f'make run ARGS="{flag} 0"' in result.stderr
    assert "Traceback" not in result.stderr


def test_a_grpc_port_another_server_holds_is_refused() -> None:
    """grpc-core enables SO_REUSEPORT by default: without turning it off, a second server
    on the port of a running one (here a grpc server in this process, with the defaults)
    bound it too and shared its connections."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    holder = grpc.server(ThreadPoolExecutor(1))
    port = holder.add_insecure_port("127.0.0.1:0")
    holder.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "service", "serve", "--model-repository", str(EXAMPLE_MODELS),
             "--port", str(port), "--http-port", "0", "--metrics-port", "0"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.stop(None)
    assert result.returncode == 1
    assert f"cannot serve gRPC on 127.0.0.1:{port}: the address is in use" in result.stderr
    assert "make run PORT=" in result.stderr and "Traceback" not in result.stderr


def test_reuse_port_lets_two_servers_share_the_grpc_port() -> None:
    """What --workers will build on, and bench.investigations.workers uses."""

    def serve(port: int) -> tuple[subprocess.Popen[str], int]:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--model-repository", str(EXAMPLE_MODELS),
             "--port", str(port), "--no-http", "--no-metrics", "--reuse-port"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("cnnserve listening on "):
                return process, int(line.rsplit(":", 1)[1])
        raise AssertionError(f"the server exited ({process.wait()}) before listening")

    first, port = serve(0)
    try:
        second, shared = serve(port)
        second.terminate()
        assert second.wait(timeout=60) == 0 and shared == port
    finally:
        first.terminate()
        first.wait(timeout=60)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "server.pem"], "TLS needs both --tls-cert and --tls-key"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
    ],
)
def test_incomplete_tls_flags_are_a_clear_error(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "0", "--no-metrics", *flags],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr


def test_unreadable_tls_files_are_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "0", "--no-metrics",
         "--model-repository", str(EXAMPLE_MODELS),
         "--tls-cert", str(missing), "--tls-key", str(missing)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot read the TLS key" in result.stderr
    assert "Traceback" not in result.stderr


def cli_help(*command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "service", *command, "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_serve_help_lists_every_variable_and_both_protocols() -> None:
    text = cli_help("serve")
    for variable in ("CNNSERVE_PORT", "CNNSERVE_HTTP_PORT", "CNNSERVE_MODEL_REPOSITORY"):
        assert variable in text
    top = " ".join(
        subprocess.run(
            [sys.executable, "-m", "service", "--help"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        ).stdout.split()
    )  # fmt: skip
    assert "KServe v2 gRPC and REST" in top


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (("infer",), ["host:port (default: 127.0.0.1:8001)", "(default: 3)", "(default: 30.0)"]),
        (("health",), ["(default: 127.0.0.1:8001)", "seconds (default: 3.0)"]),
        (("export", "train"), ["at most (default: 100)", "default: auto", "(default: 20)"]),
        (("export", "onnx"), ["model repository (default: models)"]),
    ],
)
def test_help_shows_the_defaults(command: tuple[str, ...], shown: list[str]) -> None:
    text = cli_help(*command)
    for fragment in shown:
        assert fragment in text
