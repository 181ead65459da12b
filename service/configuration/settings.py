"""Server settings: one schema, one set of defaults, read by the CLI and by embedders.

`ServerSettings` holds every default once. `SERVE_OPTIONS` says how each setting is given
on the command line and in the environment (`CNNSERVE_<ENV>`); `cnnserve serve` builds its
flags from it, so a default is never written twice. A value that does not parse (flag or
environment variable) is a usage error naming where it came from, never a traceback.
Modes are enums: the CLI offers their values as the only choices.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from service.tensors.errors import ConfigError, FailedPrecondition

ENV_PREFIX = "CNNSERVE_"


class ControlMode(StrEnum):
    """Triton's model control modes. NONE: what loads at start serves until exit.
    EXPLICIT: RepositoryModelLoad/Unload (tritonclient's load_model/unload_model).
    POLL: the repository is rescanned every poll interval; new versions load by themselves."""

    NONE = "none"
    EXPLICIT = "explicit"
    POLL = "poll"

    def require_explicit(self, action: str) -> None:
        """Load and unload RPCs are for explicit mode only, as in Triton."""
        if self is not ControlMode.EXPLICIT:
            raise FailedPrecondition(
                f"cannot {action} models: model control mode is '{self.value}' "
                "(start the server with --model-control-mode explicit)"
            )


class SharedMemory(StrEnum):
    """Triton's shared memory extension: off, or system (POSIX) shared memory regions."""

    NONE = "none"
    SYSTEM = "system"


class EventLoop(StrEnum):
    AUTO = "auto"  # uvloop when installed (service/eventloop.py)
    ASYNCIO = "asyncio"


@dataclass(frozen=True)
class TlsSettings:
    """Server certificate and key (PEM); with `client_ca`, clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def read_tls_file(path: Path, what: str) -> bytes:
    """A certificate or key's bytes, or a ConfigError naming which file and why."""
    try:
        data: bytes = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
    return data


@dataclass(frozen=True)
class ServerSettings:
    """Process-wide settings (the defaults live here and nowhere else)."""

    model_repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = 8001
    grace_period_s: float = 30.0
    batching: bool = True  # False: every request runs alone, as sent (for comparison)
    metrics_port: int | None = 8002  # Prometheus /metrics; 0 = any free port; None = off
    http_port: int | None = 8000  # KServe v2 REST; 0 = any free port; None = off
    event_loop: EventLoop = EventLoop.AUTO
    ort_spinning: bool = False  # onnxruntime intra-op threads busy-wait (bench/README.md)
    # Share the gRPC port with other cnnserve processes (SO_REUSEPORT; the kernel spreads
    # connections). Off: a taken port is an error, not a silent share.
    reuse_port: bool = False
    model_control_mode: ControlMode = ControlMode.NONE
    poll_interval_s: float = 15.0  # poll mode: seconds between repository rescans
    # gRPC limits both ways; a bigger message is refused with RESOURCE_EXHAUSTED. 64 MiB
    # holds a batch of 64 uint8 224x224x3 images (9.6 MB) many times over.
    max_message_bytes: int = 64 * 1024 * 1024
    # instances: auto (service/runtime/autotune.py): seconds of in-process timing per model load.
    autotune_budget_s: float = 2.0
    # Encoded images: the pixels all rows of one request may declare (ten 12 MP photos).
    max_decode_pixels: int = 120_000_000
    # Server processes on the same ports (service/workers/): 1 = this process serves.
    workers: int = 1
    # Triton's system shared memory extension (service/serving/shared_memory.py); off unless
    # asked for, as in Triton.
    shared_memory: SharedMemory = SharedMemory.NONE
    tls: TlsSettings | None = None
    auth_token: str | None = field(default=None, repr=False)  # never logged


def default(name: str) -> Any:
    """The default of a ServerSettings field."""
    found = next(f for f in fields(ServerSettings) if f.name == name)
    assert found.default is not MISSING
    return found.default


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        # ArgumentTypeError: argparse shows its message (a ValueError it replaces).
        raise argparse.ArgumentTypeError(
            f"must be > 0 seconds, got {text}; to skip the timing, state instances "
            "in the model's config.yaml"
        )
    return value


def worker_count(text: str) -> int:
    """--workers: a positive number, or `auto` (one worker per WORKER_CORES cores)."""
    if text == "auto":
        return auto_workers(available_cores())
    try:
        value = int(text)
    except ValueError:
        message = f"expected a number of workers or auto, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (or auto), got {value}")
    return value


# `--workers auto`: one worker per WORKER_CORES cores. Each worker spends about a core on its
# event loop and gRPC threads; the rest of its share runs onnxruntime. Measured on 2 cores
# (bench/README.md, workers): 2 workers served less than 1, so below 2 x WORKER_CORES it is 1.
WORKER_CORES = 4


def auto_workers(cores: int) -> int:
    return max(1, cores // WORKER_CORES)


def available_cores() -> int:
    """The cores this process sizes itself to: CNNSERVE_CORES when a supervisor gave this
    worker its share, else the CPUs it may run on."""
    share = os.environ.get(ENV_PREFIX + "CORES")
    if share:
        return max(1, int(share))
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(f"expected on or off, got {text!r}")
    return text == "on"


@dataclass(frozen=True)
class Option:
    """How one setting is given: `--<flag>` and `CNNSERVE_<ENV>`, parsed by `parse`."""

    setting: str  # the ServerSettings field
    flag: str
    env: str
    parse: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] = ()

    def shown(self, value: Any) -> str:
        if isinstance(value, bool) and self.parse is on_off:
            return "on" if value else "off"
        return str(value)


SERVE_OPTIONS: tuple[Option, ...] = (
    Option("model_repository", "--model-repository", "MODEL_REPOSITORY", Path,
           "folder of models"),
    Option("host", "--host", "HOST", str, "bind address"),
    Option("port", "--port", "PORT", int, "gRPC port, 0 = any free port"),
    Option("batching", "--batching", "BATCHING", on_off,
           "dynamic batching; off runs each request alone", ("on", "off")),
    Option("metrics_port", "--metrics-port", "METRICS_PORT", int,
           "Prometheus /metrics HTTP port, 0 = any free port"),
    Option("http_port", "--http-port", "HTTP_PORT", int,
           "KServe v2 REST port, 0 = any free port (--no-http: none)"),
    Option("event_loop", "--event-loop", "EVENT_LOOP", EventLoop,
           "auto: uvloop when installed", tuple(EventLoop)),
    Option("grace_period_s", "--grace-period", "GRACE_PERIOD", float,
           "seconds to finish accepted requests on SIGTERM"),
    Option("model_control_mode", "--model-control-mode", "MODEL_CONTROL_MODE", ControlMode,
           "none: serve what loads at start; explicit: RepositoryModelLoad/Unload; "
           "poll: rescan the repository", tuple(ControlMode)),
    Option("poll_interval_s", "--poll-interval", "POLL_INTERVAL", float,
           "poll mode: seconds between rescans"),
    Option("max_message_bytes", "--max-message-bytes", "MAX_MESSAGE_BYTES", int,
           "largest gRPC message either way"),
    Option("autotune_budget_s", "--autotune-budget", "AUTOTUNE_BUDGET", positive_seconds,
           "instances: auto: seconds of timing per model load"),
    Option("max_decode_pixels", "--max-decode-pixels", "MAX_DECODE_PIXELS", int,
           "encoded images: pixels all rows of one request may declare"),
    Option("shared_memory", "--shared-memory", "SHARED_MEMORY", SharedMemory,
           "system: accept Triton's system shared memory regions (off by default)",
           tuple(SharedMemory)),
    Option("workers", "--workers", "WORKERS", worker_count,
           "server processes sharing the ports (SO_REUSEPORT); auto = one per "
           f"{WORKER_CORES} cores"),
)  # fmt: skip


class SettingError(ValueError):
    """A flag or environment value that does not parse: a usage error (exit 2)."""


def env_value(env: str) -> str | None:
    return os.environ.get(ENV_PREFIX + env)


def env_default(option: Option) -> Any:
    """The environment's value for `option` if set (parsed), else the settings default."""
    text = env_value(option.env)
    if text is None:
        return default(option.setting)
    try:
        value = option.parse(text)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise SettingError(f"{ENV_PREFIX}{option.env}={text!r}: {exc}") from None
    return value
