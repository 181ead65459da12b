"""`python -m tests.held_server REPOSITORY [GRACE_S]`: the real `cnnserve serve` path
(signals, drain, exit status) with every model's runs held until a line arrives on stdin.

Prints "held <rows>" when the first batch reaches a runner, so a test knows a request has been
accepted and is in progress when it sends SIGTERM, without timing anything.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from service.__main__ import _serve
from service.batching.batcher import BatchObserver
from service.configuration.model_config import ModelConfig
from service.configuration.settings import ServerSettings
from service.runtime.onnx_runner import OnnxRunner
from service.runtime.scheduler import Scheduler
from tests.serving import GatedRunner, gated_scheduler


def main() -> None:
    gates: list[GatedRunner] = []

    def release_on_stdin() -> None:
        sys.stdin.readline()
        for gate in gates:
            gate.release()

    def announce_first_run(gate: GatedRunner) -> None:
        gate.entered.wait()
        print(f"held {gate.rows_seen[0]}", flush=True)  # and the rows of that batch

    held = gated_scheduler(gates)

    def make(
        config: ModelConfig, runners: Sequence[OnnxRunner], observer: BatchObserver | None
    ) -> Scheduler:
        scheduler = held(config, runners, observer)
        threading.Thread(target=announce_first_run, args=(gates[-1],), daemon=True).start()
        return scheduler

    threading.Thread(target=release_on_stdin, daemon=True).start()
    grace_s = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    settings = ServerSettings(
        model_repository=Path(sys.argv[1]), port=0, metrics_port=0, http_port=0,
        grace_period_s=grace_s,
    )  # fmt: skip
    sys.exit(0 if asyncio.run(_serve(settings, make)) else 1)  # as `cnnserve serve` exits


if __name__ == "__main__":
    main()
