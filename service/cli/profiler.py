"""`cnnserve profile`: find the served setting of one model by measuring it, in one command.

Triton leaves this to a separate tool (Model Analyzer driving perf_analyzer); here the
server itself is the tool. The model's folder is copied into a scratch repository, served
by a `cnnserve serve` child process in explicit control mode on a free loopback port, and
every setting of a small grid (instances x max_batch_size x max_queue_delay_us) is written
into its config.yaml and reloaded (RepositoryModelLoad). For each setting, a built-in
closed-loop load generator (grpc.aio, our own stubs, batch-1 requests of zeros) runs at
each concurrency and records throughput and p99 latency. The best setting is the one with
the most requests/s at the highest concurrency among those whose p99 stays within the
latency budget at every concurrency; its config.yaml (the model's own config with the
setting merged in), a table and a PNG (throughput against p99, when matplotlib is
installed) are written. The table is rewritten after every setting, so Ctrl-C leaves the
partial one. With `--url`, the server already running is measured as it is configured
(its repository is not ours to rewrite): the table only.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import yaml

from service.cli.client import ClientError, UsageError, wait_connected
from service.serving.layout import CONFIG_FILE
from service.tensors.datatypes import DATATYPES
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Setting:
    instances: int
    max_batch_size: int
    max_queue_delay_us: int

    @property
    def label(self) -> str:
        return (
            f"instances {self.instances}, max_batch_size {self.max_batch_size}, "
            f"delay {self.max_queue_delay_us} us"
        )

    def merged_into(self, config: dict[str, Any]) -> dict[str, Any]:
        merged = dict(config, instances=self.instances, max_batch_size=self.max_batch_size)
        batching = dict(merged.get("dynamic_batching") or {})
        batching["max_queue_delay_us"] = self.max_queue_delay_us
        merged["dynamic_batching"] = batching
        return merged


@dataclass(frozen=True)
class Level:
    concurrency: int
    rate: float  # answered requests per second
    p99_ms: float
    errors: int
    p50_ms: float = float("inf")  # at c=1: what a lone client waits


@dataclass(frozen=True)
class Row:
    setting: Setting | None  # None: a running server, as configured
    levels: tuple[Level, ...]

    @property
    def worst_p99_ms(self) -> float:
        return max(level.p99_ms for level in self.levels)

    @property
    def top_rate(self) -> float:
        return self.levels[-1].rate  # at the highest concurrency


def parse_list(text: str, what: str, minimum: int = 0) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--{what}: expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < minimum:
        raise UsageError(f"--{what}: values must be >= {minimum}, got {text!r}")
    return values


def grid(instances: Sequence[int], sizes: Sequence[int], delays: Sequence[int]) -> list[Setting]:
    return [Setting(i, b, d) for i in instances for b in sizes for d in delays]


def zeros_request(model: str, metadata: pb.ModelMetadataResponse) -> pb.ModelInferRequest:
    """One batch-1 request of zeros for every input (fixed dims needed: nothing to guess)."""
    request = pb.ModelInferRequest(model_name=model)
    for tensor in metadata.inputs:
        shape = [1 if index == 0 and dim == -1 else dim for index, dim in enumerate(tensor.shape)]
        if min(shape) < 0 or tensor.datatype == "BYTES":
            raise UsageError(
                f"model '{model}': input '{tensor.name}' has variable dims {list(tensor.shape)} "
                f"or datatype {tensor.datatype}; profile needs fixed numeric inputs"
            )
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        zeros = np.zeros(shape, DATATYPES[tensor.datatype].numpy)
        request.raw_input_contents.append(zeros.tobytes())
    return request


async def closed_loop(
    address: str, request: pb.ModelInferRequest, concurrency: int, seconds: float
) -> Level:
    """`concurrency` requests in flight for `seconds` (after a short warm-up)."""
    latencies: list[float] = []
    errors = 0
    counting = stop = False
    async with grpc.aio.insecure_channel(address) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer

        async def worker() -> None:
            nonlocal errors
            while not stop:
                began = time.perf_counter()
                try:
                    await infer(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += counting
                    continue
                if counting:
                    latencies.append(time.perf_counter() - began)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(min(0.5, seconds / 2))  # warm-up (pacing, not synchronisation)
        counting, began = True, time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - began
        stop = True
        await asyncio.gather(*tasks)
    if not latencies:
        return Level(concurrency, 0.0, float("inf"), errors)
    p50, p99 = (float(q) * 1e3 for q in np.percentile(latencies, [50, 99]))
    return Level(concurrency, len(latencies) / elapsed, p99, errors, p50)


def table(rows: Sequence[Row], concurrency: Sequence[int]) -> str:
    header = " | ".join(f"c={c}: req/s, p50 / p99 ms" for c in concurrency)
    lines = [f"| setting | {header} |", "|---|" + "---|" * len(concurrency)]
    for row in rows:
        cells = " | ".join(
            f"{lv.rate:,.0f}, {lv.p50_ms:.1f} / {lv.p99_ms:.1f}" for lv in row.levels
        )
        name = row.setting.label if row.setting else "as configured"
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Row], path: Path) -> bool:
    """Throughput against p99 per setting (one line through its concurrency levels)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(8, 5))
    for row in rows:
        axes.plot([lv.p99_ms for lv in row.levels], [lv.rate for lv in row.levels], marker="o",
                  label=row.setting.label if row.setting else "as configured")  # fmt: skip
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("requests/s")
    axes.set_title("cnnserve profile: throughput against p99, per setting (points: concurrency)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def choose(rows: Sequence[Row], budget_ms: float | None) -> Row:
    """The fastest row within the budget, or UsageError naming the closest."""
    fitting = [r for r in rows if budget_ms is None or r.worst_p99_ms <= budget_ms]
    if not fitting:
        closest = min(rows, key=lambda r: r.worst_p99_ms)
        name = closest.setting.label if closest.setting else "the running setting"
        raise ClientError(
            f"no setting meets the latency budget of {budget_ms} ms at every concurrency; "
            f"closest: {name} (p99 up to {closest.worst_p99_ms:.1f} ms)"
        )
    return max(fitting, key=lambda r: r.top_rate)


@contextmanager
def scratch_server(repository: Path, model: str, log: Path) -> Iterator[tuple[str, Path]]:
    """A `cnnserve serve` child in explicit mode on a copy of the model's folder; its log
    goes to `log`."""
    source = repository / model
    if not source.is_dir():
        raise UsageError(f"no model '{model}' in {repository}")
    with tempfile.TemporaryDirectory(prefix="cnnserve-profile-") as folder:
        copy = Path(folder) / model
        shutil.copytree(source, copy)
        command = [sys.executable, "-m", "service", "serve", "--model-repository", folder,
                   "--port", "0", "--no-metrics", "--no-http",
                   "--model-control-mode", "explicit"]  # fmt: skip
        with log.open("w") as errors:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert process.stdout is not None
            address = ""
            for line in process.stdout:
                if line.startswith("cnnserve listening on "):
                    address = line.split()[-1]
                    break
            if not address:
                raise ClientError(f"the scratch server did not start; its log: {log}")
            yield address, copy
        finally:
            process.terminate()
            process.wait(timeout=60)


T = TypeVar("T")


def _call(address: str, what: str, call: Callable[[pb_grpc.GRPCInferenceServiceStub], T]) -> T:
    """One unary call with the server's error as a one-line ClientError."""
    with grpc.insecure_channel(address) as channel:
        wait_connected(channel, address, 10)
        try:
            return call(pb_grpc.GRPCInferenceServiceStub(channel))
        except grpc.RpcError as exc:
            raise ClientError(f"{what}: {exc.code().name}: {exc.details()}") from None


def model_metadata(address: str, model: str) -> pb.ModelMetadataResponse:
    return _call(
        address, f"model '{model}'", lambda s: s.ModelMetadata(pb.ModelMetadataRequest(name=model))
    )


def reload(address: str, model: str) -> None:
    _call(
        address,
        f"loading model '{model}'",
        lambda s: s.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=model)),
    )


@dataclass(frozen=True)
class Sweep:
    """What `cnnserve profile` was asked for."""

    model: str
    concurrency: tuple[int, ...]
    seconds: float
    latency_budget_ms: float | None
    out: Path
    instances: tuple[int, ...]
    max_batch_sizes: tuple[int, ...]
    queue_delays_us: tuple[int, ...]
    time_limit_s: float = 600.0  # no setting is started that would end past it


def measure(address: str, model: str, sweep: Sweep) -> tuple[Level, ...]:
    request = zeros_request(model, model_metadata(address, model))
    return tuple(
        asyncio.run(closed_loop(address, request, c, sweep.seconds)) for c in sweep.concurrency
    )


def profile_repository(repository: Path, sweep: Sweep, say: Callable[[str], None] = print) -> Row:
    """Sweep the grid on a scratch server; write config.yaml, the table and the PNG."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    log = sweep.out / "server.log"
    with scratch_server(repository, sweep.model, log) as (address, folder):
        config_path = folder / CONFIG_FILE
        base = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
        batched = _int_param(model_metadata(address, sweep.model), "max_batch_size") > 0
        settings = grid(sweep.instances, sweep.max_batch_sizes if batched else (0,),
                        sweep.queue_delays_us if batched else (0,))  # fmt: skip
        rows = _sweep(address, config_path, base, settings, sweep, say)
    best = choose(rows, sweep.latency_budget_ms)
    assert best.setting is not None
    (sweep.out / CONFIG_FILE).write_text(yaml.safe_dump(best.setting.merged_into(base)))
    drawn = plot(rows, sweep.out / "profile.png")
    say(table(rows, sweep.concurrency))
    say(f"best: {best.setting.label}; wrote {sweep.out / CONFIG_FILE}, profile.md"
        + (", profile.png" if drawn else " (install matplotlib for profile.png)"))  # fmt: skip
    return best


def _sweep(
    address: str,
    config_path: Path,
    base: dict[str, Any],
    settings: Sequence[Setting],
    sweep: Sweep,
    say: Callable[[str], None],
) -> list[Row]:
    """Each setting in turn, within the time limit (a setting is not started when the mean
    so far says it would end past the limit); the table is rewritten after each."""
    started = time.monotonic()
    say(f"profiling {sweep.model}: {len(settings)} settings x {len(sweep.concurrency)} "
        f"concurrencies, at most {sweep.time_limit_s:.0f} s")  # fmt: skip
    rows: list[Row] = []
    try:
        for index, setting in enumerate(settings, 1):
            spent = time.monotonic() - started
            if rows and spent + spent / len(rows) > sweep.time_limit_s:
                say(f"time limit: {len(rows)} of {len(settings)} settings measured")
                break
            config_path.write_text(yaml.safe_dump(setting.merged_into(base)))
            reload(address, sweep.model)
            rows.append(Row(setting, measure(address, sweep.model, sweep)))
            (sweep.out / "profile.md").write_text(table(rows, sweep.concurrency))
            left = (time.monotonic() - started) / index * (len(settings) - index)
            say(f"[{index}/{len(settings)}] {setting.label}: {rows[-1].top_rate:,.0f} req/s, "
                f"p99 {rows[-1].worst_p99_ms:.1f} ms (about {left:.0f} s left)")  # fmt: skip
    except KeyboardInterrupt:
        say(f"interrupted: the partial table is in {sweep.out / 'profile.md'}")
        raise
    return rows


def profile_running(url: str, sweep: Sweep, say: Callable[[str], None] = print) -> Row:
    """A server that is already running, as configured: the table only."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    row = Row(None, measure(url, sweep.model, sweep))
    (sweep.out / "profile.md").write_text(table([row], sweep.concurrency))
    say(table([row], sweep.concurrency))
    choose([row], sweep.latency_budget_ms)  # says so when the budget is not met
    return row


def _int_param(metadata: pb.ModelMetadataResponse, key: str) -> int:
    return int(metadata.parameters[key].int64_param) if key in metadata.parameters else 0
