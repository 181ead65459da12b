"""`python -m bench.overhead`: server CPU per request, cnnserve against the Python gRPC floor.

The floor (bench/floor.py) answers a fixed response without reading its input. cnnserve
serves compute-free models (ReduceMean over the input, config-less) at three payloads, so
what is measured is the serving path, not the model. One client for all:
tritonclient.grpc.aio, batch-1 requests, closed loop at c=32, in this process; the server's
CPU comes from /proc/<pid>/stat (user + system, all threads) over the measured window.
Rounds are interleaved (floor, unary, stream; then again) and the table takes each
target's median. Criterion: cnnserve unary <= 1.25x the floor's CPU per request at each
payload, and streaming below unary; exits 1 otherwise. `--profile` also samples the
cnnserve server with py-spy during one unary run per payload (per-thread CPU and the top
frames), written to bench/out/overhead/. A second floor, the "model floor" (bench/floor.py
`--model-repository`: read the input, run the same compute-free model's onnxruntime session
per request, answer; no batching, no checks), is measured beside it: what remains above it
is the serving machinery's own cost. `--queue-delay-us N` gives cnnserve's models
`dynamic_batching: {max_queue_delay_us: N}` (bigger batches, same per-request work).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tritonclient.grpc.aio as triton_aio
import tritonclient.http.aio as triton_http_aio
from onnx import TensorProto, helper

from bench.reliability import cpu_seconds
from bench.run import OUT, ROOT

FLOOR_RATIO = 1.25
CONCURRENCY = 32


@dataclass(frozen=True)
class Payload:
    name: str  # the served model's name
    datatype: str
    shape: tuple[int, ...]  # one request, batch 1 included

    @property
    def label(self) -> str:
        size = int(np.prod(self.shape)) * (4 if self.datatype == "FP32" else 1)
        return f"{self.datatype} {list(self.shape)} ({size // 1000} KB)"


PAYLOADS = (
    Payload("mean_fp32_small", "FP32", (1, 3, 32, 32)),
    Payload("mean_fp32_wide", "FP32", (1, 3, 48, 192)),
    Payload("mean_uint8_photo", "UINT8", (1, 224, 224, 3)),
)


def compute_free_model(payload: Payload) -> onnx.ModelProto:
    """mean = ReduceMean(x) per row: next to nothing to compute, so the path is measured."""
    elem = TensorProto.FLOAT if payload.datatype == "FP32" else TensorProto.UINT8
    dims: list[int | str] = ["N", *payload.shape[1:]]
    nodes = []
    source = "x"
    if payload.datatype != "FP32":
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        source = "xf"
    axes = list(range(1, len(payload.shape)))
    nodes.append(helper.make_node("ReduceMean", [source], ["mean"], axes=axes, keepdims=0))
    graph = helper.make_graph(
        nodes,
        payload.name,
        [helper.make_tensor_value_info("x", elem, dims)],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def build_repository(root: Path, queue_delay_us: int = 0) -> None:
    if root.exists():
        shutil.rmtree(root)
    for payload in PAYLOADS:
        path = root / payload.name / "1" / "model.onnx"
        path.parent.mkdir(parents=True)
        onnx.save(compute_free_model(payload), str(path))
        if queue_delay_us:
            (root / payload.name / "config.yaml").write_text(
                f"dynamic_batching:\n  max_queue_delay_us: {queue_delay_us}\n"
            )


class Process:
    """A server process started with `command`, its address read from its first lines."""

    def __init__(
        self, command: Sequence[str], marker: str, cwd: Path = ROOT, rest: bool = False
    ) -> None:
        env = {**os.environ, "CNNSERVE_HTTP_PORT": "0"}  # any free port (older commits: unread)
        self.process = subprocess.Popen(
            list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=env,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.address = self.rest = ""
        for line in self.process.stdout:
            if line.startswith(marker):
                self.address = line.split()[-1]
                if not rest:
                    break
            elif line.strip().startswith("KServe v2 REST on "):
                self.rest = line.split()[-1].removeprefix("http://")
                break
        if not self.address or (rest and not self.rest):
            raise RuntimeError(f"{command} did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


@dataclass(frozen=True)
class Measure:
    requests: int
    seconds: float
    server_cpu_s: float
    errors: int
    client_cpu_s: float = 0.0  # this process (the load generator) over the same window

    @property
    def cpu_us(self) -> float:
        return self.server_cpu_s / max(self.requests, 1) * 1e6

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def inputs_for(payload: Payload, rest: bool = False) -> list[Any]:
    rng = np.random.default_rng(0)
    data = (
        rng.random(payload.shape, dtype=np.float32)
        if payload.datatype == "FP32"
        else rng.integers(0, 256, payload.shape, dtype=np.uint8)
    )
    if rest:
        rest_tensor = triton_http_aio.InferInput("x", list(payload.shape), payload.datatype)
        rest_tensor.set_data_from_numpy(data, binary_data=True)
        return [rest_tensor]
    tensor = triton_aio.InferInput("x", list(payload.shape), payload.datatype)
    tensor.set_data_from_numpy(data)
    return [tensor]


async def closed_loop(
    address: str,
    model: str,
    payload: Payload,
    pid: int,
    stream: bool,
    warmup_s: float,
    duration_s: float,
    concurrency: int = CONCURRENCY,
    rest: bool = False,
) -> Measure:
    """`rest`: tritonclient.http.aio against the KServe v2 REST port (binary tensors)."""
    assert address.startswith("127.")
    client: Any = (
        triton_http_aio.InferenceServerClient(address)
        if rest
        else triton_aio.InferenceServerClient(address)
    )
    inputs = inputs_for(payload, rest)
    counting = False
    count = errors = 0
    stop = False

    async def unary_worker() -> None:
        nonlocal count, errors
        while not stop:
            try:
                await client.infer(model, inputs)
            except Exception:
                errors += 1
                continue
            count += counting

    async def stream_worker() -> None:
        nonlocal count, errors
        ready = asyncio.Queue[dict[str, Any]]()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            while True:
                item = await ready.get()
                if not item:
                    return
                yield item

        ready.put_nowait({"model_name": model, "inputs": inputs})
        responses = client.stream_infer(requests())
        async for result, error in responses:
            if error is not None or result is None:
                errors += 1
            else:
                count += counting
            ready.put_nowait({} if stop else {"model_name": model, "inputs": inputs})
            if stop:
                break

    worker = stream_worker if stream else unary_worker
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)  # bench pacing, not synchronisation
    counting, cpu, begin = True, cpu_seconds(pid), time.perf_counter()
    own = time.process_time()
    await asyncio.sleep(duration_s)
    used, elapsed, done = cpu_seconds(pid) - cpu, time.perf_counter() - begin, count
    own = time.process_time() - own
    stop = True
    await asyncio.gather(*tasks)
    await client.close()
    return Measure(done, elapsed, used, errors, own)


def profile(pid: int, seconds: float, out: Path) -> None:
    """py-spy (when installed) on the server: thread-level top frames, as a text record."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not installed: pip install py-spy to profile", file=sys.stderr)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--threads",
            "--format",
            "raw",
            "--output",
            str(out),
            "--rate",
            "200",
            "--nonblocking",
        ],
        capture_output=True,
        timeout=seconds + 60,
    )


def summarize(raw: Path, top: int = 8) -> list[str]:
    """py-spy's raw (collapsed) stacks -> samples per thread and the top inclusive frames of
    our own code (service/), as lines for the report."""
    threads: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        threads[frames[0]] = threads.get(frames[0], 0) + int(count)
        for frame in {f.split(" (")[0] for f in frames[1:] if "service/" in f}:
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
    total = sum(threads.values()) or 1
    lines = [f"  {name}: {100 * n / total:.0f} % of samples" for name, n in
             sorted(threads.items(), key=lambda kv: -kv[1])[:4]]  # fmt: skip
    lines += [f"    {100 * n / total:4.1f} % {frame}" for frame, n in
              sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]]  # fmt: skip
    return lines


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far by thread (/proc/<pid>/task/*/stat, user + system), keyed by the
    OS name and id; the event loop's thread is the process's first ("main")."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        key = "main (event loop)" if task.name == str(pid) else f"{name}[{task.name}]"
        fields = stat.rsplit(")", 1)[1].split()
        found[key] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def run(
    rounds: int,
    duration_s: float,
    with_profile: bool,
    base: Path | None = None,
    concurrency: int = CONCURRENCY,
    with_rest: bool = False,
    queue_delay_us: int = 0,
) -> int:
    repository = OUT / "overhead"
    build_repository(repository / "models", queue_delay_us)
    serve = [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--model-repository",
        str(repository / "models"),
        "--port",
        "0",
        "--no-metrics",
    ]
    floor = Process([sys.executable, "-m", "bench.floor"], "floor listening on ")
    # The least a model server does: read the input, run the session, answer (no batching).
    model_floor = Process(
        [sys.executable, "-m", "bench.floor", "--model-repository", str(repository / "models")],
        "floor listening on ",
    )
    server = Process(serve, "cnnserve listening on ", rest=with_rest)
    # --base: the same unary runs against another commit's server, for a before/after
    before = Process(serve, "cnnserve listening on ", cwd=base) if base is not None else None
    targets = [
        ("floor", floor, False),
        ("model floor", model_floor, False),
        ("unary", server, False),
        ("stream", server, True),
    ]
    if with_rest:
        targets.append(("rest", server, False))
    if before is not None:
        targets.append(("base unary", before, False))
    results: dict[tuple[str, str], list[Measure]] = {}
    try:
        for _ in range(rounds):
            for payload in PAYLOADS:
                for target, process, stream in targets:
                    model = "floor" if target == "floor" else payload.name
                    rest = target == "rest"
                    measure = asyncio.run(
                        closed_loop(
                            process.rest if rest else process.address,
                            model,
                            payload,
                            process.process.pid,
                            stream,
                            1.0,
                            duration_s,
                            concurrency,
                            rest,
                        )
                    )
                    results.setdefault((payload.name, target), []).append(measure)
                    print(
                        f"{payload.label} {target}: {measure.cpu_us:.0f} us/req, "
                        f"{measure.rate:,.0f} req/s, errors {measure.errors}",
                        flush=True,
                    )
        if with_profile:
            profile_server(floor, repository, "floor", floor=True)
            profile_server(server, repository, "cnnserve")
    finally:
        floor.stop()
        model_floor.stop()
        server.stop()
        if before is not None:
            before.stop()
    return report(results, rounds, concurrency)


def profile_server(server: Process, repository: Path, label: str, floor: bool = False) -> None:
    """Per-thread CPU per request (and, for cnnserve, py-spy's top frames) under the same
    unary load, from a child process."""
    for payload in PAYLOADS:
        model = "floor" if floor else payload.name
        load = subprocess.Popen(  # the same load, from a child, while py-spy samples
            [
                sys.executable,
                "-c",
                "import asyncio, sys; from bench.overhead import *; "
                f"m = asyncio.run(closed_loop({server.address!r}, {model!r}, "
                f"PAYLOADS[{PAYLOADS.index(payload)}], {server.process.pid}, False, 1.0, 9.0)); "
                "print(m.rate)",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # past the child's warm-up (pacing, not synchronisation)
        before, started = thread_cpu(server.process.pid), time.perf_counter()
        raw = repository / f"profile-{label}-{payload.name}.txt"
        if floor:
            time.sleep(8.0)  # the measured window (pacing)
        else:
            profile(server.process.pid, 8, raw)
        after, seconds = thread_cpu(server.process.pid), time.perf_counter() - started
        out, _ = load.communicate(timeout=120)
        requests = float(out.split()[-1]) * seconds
        shares = {k: after[k] - before.get(k, 0.0) for k in after}
        top = sorted(shares.items(), key=lambda kv: -kv[1])[:6]
        print(
            f"{label}, {payload.label}: CPU per request by thread: "
            + ", ".join(f"{name} {cpu / requests * 1e6:.0f} us" for name, cpu in top),
            flush=True,
        )
        if raw.exists() and not floor:
            print("\n".join(summarize(raw)), flush=True)


def report(
    results: dict[tuple[str, str], list[Measure]], rounds: int, concurrency: int = CONCURRENCY
) -> int:
    print(
        "\n| payload | floor: us/req (req/s) | unary: us/req (req/s) | unary / floor | "
        "stream: us/req (req/s) | stream / unary | model floor: us/req | unary / model floor |"
        "\n|---|---|---|---|---|---|---|---|"
    )
    ok = True
    for payload in PAYLOADS:
        cells = {}
        for target in ("floor", "unary", "stream", "model floor"):
            runs = results[(payload.name, target)]
            cells[target] = (
                statistics.median(m.cpu_us for m in runs),
                statistics.median(m.rate for m in runs),
            )
        unary_ratio = cells["unary"][0] / cells["floor"][0]
        stream_ratio = cells["stream"][0] / cells["unary"][0]
        ok = ok and unary_ratio <= FLOOR_RATIO and stream_ratio < 1.0
        print(
            f"| {payload.label} | {cells['floor'][0]:.0f} ({cells['floor'][1]:,.0f}) | "
            f"{cells['unary'][0]:.0f} ({cells['unary'][1]:,.0f}) | {unary_ratio:.2f} | "
            f"{cells['stream'][0]:.0f} ({cells['stream'][1]:,.0f}) | {stream_ratio:.2f} | "
            f"{cells['model floor'][0]:.0f} | {cells['unary'][0] / cells['model floor'][0]:.2f} |"
        )
    for payload in PAYLOADS:
        rest_runs = results.get((payload.name, "rest"))
        if rest_runs:  # no criterion: REST beside gRPC, as measured
            rest_us = statistics.median(m.cpu_us for m in rest_runs)
            unary_us = statistics.median(m.cpu_us for m in results[(payload.name, "unary")])
            print(f"{payload.label}: REST {rest_us:.0f} us/req "
                  f"({statistics.median(m.rate for m in rest_runs):,.0f} req/s), "
                  f"REST / gRPC unary = {rest_us / unary_us:.2f}")  # fmt: skip
    for payload in PAYLOADS:
        base_runs = results.get((payload.name, "base unary"))
        if base_runs:
            base_us = statistics.median(m.cpu_us for m in base_runs)
            this_us = statistics.median(m.cpu_us for m in results[(payload.name, "unary")])
            print(f"{payload.label}: unary this / base = {this_us / base_us:.2f} "
                  f"({this_us:.0f} vs {base_us:.0f} us/req)")  # fmt: skip
    print(
        f"\nmedian of {rounds} interleaved rounds, c={concurrency}; criterion: unary <= "
        f"{FLOOR_RATIO}x the floor, stream < unary: {'pass' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window per run")
    parser.add_argument("--profile", action="store_true", help="py-spy the unary runs too")
    parser.add_argument(
        "--base", metavar="REV", help="also measure unary on commit REV (a git worktree)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        help="requests in flight (the criterion is stated at the default)",
    )
    parser.add_argument(
        "--rest", action="store_true", help="also measure the REST front end (tritonclient.http)"
    )
    parser.add_argument("--queue-delay-us", type=int, default=0, help="cnnserve's models only")
    args = parser.parse_args()
    if args.base is None:
        return run(
            args.rounds, args.seconds, args.profile, concurrency=args.concurrency,
            with_rest=args.rest, queue_delay_us=args.queue_delay_us,
        )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder) / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), args.base],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            return run(
                args.rounds, args.seconds, args.profile, base, args.concurrency, args.rest,
                args.queue_delay_us,
            )  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
