"""`cnnserve profile`: its flags and its run (service/cli/profiler.py measures)."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.hints import ShowDefaults


def add_profile_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profile = commands.add_parser(
        "profile",
        formatter_class=ShowDefaults,
        help="measure served settings of one model and write the best config.yaml",
        description="Sweeps instances x max_batch_size x max_queue_delay_us on a scratch "
        "server (or measures --url as it is) with a closed-loop load; writes config.yaml, "
        "profile.md and profile.png to --out. Ctrl-C leaves the partial table.",
    )
    profile.add_argument("--model", required=True, help="model name")
    where = profile.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-repository", type=Path, help="profile on a scratch server")
    where.add_argument("--url", help="host:port of a running server: measure it as it is")
    profile.add_argument("--concurrency", default="1,8,32", help="requests in flight")
    profile.add_argument("--latency-budget-ms", type=float, default=None, help="p99 bound")
    profile.add_argument("--seconds", type=float, default=3.0, help="per concurrency level")
    profile.add_argument("--instances", default=None, help="default: 1 and the core count")
    profile.add_argument("--max-batch-sizes", default="1,8,32", help="settings swept")
    profile.add_argument("--queue-delays-us", default="0,1000", help="settings swept")
    profile.add_argument("--out", type=Path, default=Path("profile"), help="output folder")
    profile.add_argument("--time-limit", type=float, default=600.0, help="seconds, at most")


def profile_command(args: argparse.Namespace) -> int:
    """`profile`: exit 0 with a config written, 2 usage, 1 failure, 130 interrupted."""
    from service.cli.client import UsageError
    from service.cli.profiler import Sweep, parse_list, profile_repository, profile_running
    from service.runtime.onnx_runner import default_intra_op_threads

    budget = args.latency_budget_ms
    if args.seconds <= 0 or args.time_limit <= 0 or (budget is not None and budget <= 0):
        raise UsageError("--seconds, --time-limit and --latency-budget-ms must be > 0")
    cores = default_intra_op_threads(1)
    sweep = Sweep(
        model=args.model,
        concurrency=tuple(parse_list(args.concurrency, "concurrency", 1)),
        seconds=args.seconds,
        latency_budget_ms=budget,
        out=args.out,
        instances=tuple(parse_list(args.instances or f"1,{cores}", "instances", 1)),
        max_batch_sizes=tuple(parse_list(args.max_batch_sizes, "max-batch-sizes", 1)),
        queue_delays_us=tuple(parse_list(args.queue_delays_us, "queue-delays-us", 0)),
        time_limit_s=args.time_limit,
    )
    try:
        if args.url:
            profile_running(args.url, sweep)
        else:
            profile_repository(args.model_repository, sweep)
    except KeyboardInterrupt:
        return 130
    return 0
