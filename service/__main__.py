"""`cnnserve` / `python -m service`: serve, infer, export."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.hints import ShowDefaults, try_hint
from service.configuration.settings import (
    ENV_PREFIX,
    SERVE_OPTIONS,
    ServerSettings,
    SettingError,
    TlsSettings,
    default,
    env_default,
    env_value,
)
from service.eventloop import loop_factory
from service.runtime.heap import limit_malloc_arenas
from service.tensors.errors import CnnserveError

if TYPE_CHECKING:
    from service.cli.client import ClientSecurity
    from service.server import CnnserveServer
    from service.serving.loader import SchedulerFactory

log = logging.getLogger("cnnserve")


def _env(name: str, fallback: str = "") -> str:
    return env_value(name) or fallback


def _path_env(name: str) -> Path | None:
    value = _env(name)
    return Path(value) if value else None


def _client_security_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca-cert",
        type=Path,
        default=_path_env("CA_CERT"),
        help="use TLS, trusting this PEM CA (env CNNSERVE_CA_CERT)",
    )
    parser.add_argument(
        "--client-cert", type=Path, default=_path_env("CLIENT_CERT"), help="PEM, for mutual TLS"
    )
    parser.add_argument(
        "--client-key", type=Path, default=_path_env("CLIENT_KEY"), help="PEM, for mutual TLS"
    )


def _client_security(args: argparse.Namespace) -> ClientSecurity:
    from service.cli.client import ClientSecurity

    return ClientSecurity(
        ca_cert=args.ca_cert,
        cert=args.client_cert,
        key=args.client_key,
        token=_env("AUTH_TOKEN") or None,
    )


def _auth_token(path: Path | None) -> str | None:
    """From a file (a Kubernetes Secret mounted as a volume) or CNNSERVE_AUTH_TOKEN."""
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise SystemExit(f"cnnserve: cannot read the auth token file {path}: {exc}") from None
    return _env("AUTH_TOKEN") or None


def _tls(args: argparse.Namespace) -> TlsSettings | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise SystemExit("cnnserve: --tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise SystemExit("cnnserve: TLS needs both --tls-cert and --tls-key")
    return TlsSettings(args.tls_cert, args.tls_key, args.tls_client_ca)


def _serve_flags(serve: argparse.ArgumentParser) -> None:
    """Every setting of configuration.settings.SERVE_OPTIONS, with its environment default."""
    for option in SERVE_OPTIONS:
        value = env_default(option)  # SettingError: a usage error, reported by main
        metavar = "{" + ",".join(option.choices) + "}" if option.choices else None
        serve.add_argument(
            option.flag,
            dest=option.setting,
            type=option.parse,
            default=value,
            metavar=metavar,
            help=f"{option.help} (env {ENV_PREFIX}{option.env}; "
            f"default {option.shown(default(option.setting))})",
        )
    serve.add_argument(
        "--no-metrics", action="store_true", help="serve no metrics (for overhead comparison)"
    )
    serve.add_argument("--no-http", action="store_true", help="serve no KServe v2 REST port")
    serve.add_argument(
        "--ort-spinning",
        action="store_true",
        help="let onnxruntime's intra-op threads busy-wait (off by default: it starves gRPC)",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the gRPC port with other cnnserve processes (SO_REUSEPORT: the kernel "
        "spreads connections, not requests); off, a taken port is an error",
    )
    serve.add_argument("--tls-cert", type=Path, default=_path_env("TLS_CERT"), help="PEM")
    serve.add_argument("--tls-key", type=Path, default=_path_env("TLS_KEY"), help="PEM")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        default=_path_env("TLS_CLIENT_CA"),
        help="PEM CA: require client certificates signed by it (mutual TLS)",
    )
    serve.add_argument(
        "--auth-token-file",
        type=Path,
        default=_path_env("AUTH_TOKEN_FILE"),
        help="require 'authorization: Bearer <token>' (token read from this file, or from "
        "env CNNSERVE_AUTH_TOKEN); gRPC health stays open",
    )


def _client_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    infer = commands.add_parser(
        "infer",
        help="classify image files with a running server (sent as they are)",
        formatter_class=ShowDefaults,
    )
    infer.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files")
    infer.add_argument("--model", required=True, help="model name")
    infer.add_argument("--url", default=_env("URL", "127.0.0.1:8001"), help="host:port")
    infer.add_argument("--top-k", type=int, default=3, help="classes printed per image")
    infer.add_argument("--timeout", type=float, default=30.0, help="seconds")
    _client_security_flags(infer)
    health = commands.add_parser(
        "health",
        help="gRPC health check (exit 0 when SERVING): for container HEALTHCHECKs",
        formatter_class=ShowDefaults,
    )
    health.add_argument("--url", default=_env("URL", "127.0.0.1:8001"), help="host:port")
    health.add_argument("--service", default="", help='"" = the server, or a model name')
    health.add_argument("--timeout", type=float, default=3.0, help="seconds")
    _client_security_flags(health)


def _profile_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _profile_command(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    """Raises SettingError for a CNNSERVE_* variable that does not parse."""
    parser = argparse.ArgumentParser(prog="cnnserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve a model repository over KServe v2 gRPC and REST"
    )
    _serve_flags(serve)
    _client_parsers(commands)
    _profile_parser(commands)
    commands.add_parser(
        "export",
        help="train and export models (needs the export extra: make export-deps in a "
        "checkout, pip install 'cnnserve[export]' elsewhere)",
        add_help=False,
    )
    return parser


def serve_settings(args: argparse.Namespace) -> ServerSettings:
    """The settings `cnnserve serve` runs with: the schema's fields from the parsed flags."""
    values = {option.setting: getattr(args, option.setting) for option in SERVE_OPTIONS}
    if args.no_metrics:
        values["metrics_port"] = None
    if args.no_http:
        values["http_port"] = None
    return ServerSettings(
        **values,
        ort_spinning=args.ort_spinning,
        reuse_port=args.reuse_port,
        tls=_tls(args),
        auth_token=_auth_token(args.auth_token_file),
    )


async def _serve(settings: ServerSettings, make_scheduler: SchedulerFactory | None = None) -> bool:
    from service.server import CnnserveServer

    server = CnnserveServer(settings, make_scheduler)
    await server.start()
    stop = _stop_on_signal()  # before the "listening" line: a SIGTERM right after it drains
    # The "listening on" line is read by tests and `make run` users: keep its format.
    print(f"cnnserve listening on {server.address}", flush=True)
    if server.http is not None:
        print(f"  KServe v2 REST on {server.http_url}", flush=True)
    if server.metrics_port is not None:
        host = settings.host
        print(f"  metrics on http://{host}:{server.metrics_port}/metrics", flush=True)
    for entry in server.repository.entries():
        state = entry.state.value + (f" ({entry.reason})" if entry.reason else "")
        served = entry.served
        detail = f" version {served.version} on {served.runner.provider}" if served else ""
        print(f"  model {entry.name}: {state}{detail}", flush=True)
    ready = [entry.name for entry in server.repository.entries() if entry.served is not None]
    print(try_hint(server.address, ready), flush=True)
    return await serve_until_signalled(server, stop)


def _stop_on_signal() -> asyncio.Event:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    return stop


async def serve_until_signalled(server: CnnserveServer, stop: asyncio.Event) -> bool:
    """First SIGTERM/SIGINT (`stop`): drain (NOT_SERVING, refuse new requests, finish the
    accepted ones within the grace period) and return whether every accepted inference was
    answered. A second one: exit at once, status 1."""
    loop = asyncio.get_running_loop()
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _exit_now, sig)
    log.info("signal received: draining (a second signal exits at once)")
    drained = await server.aclose()
    # The exit status tells the operator (and the Pod's last state) whether work was cut off.
    if drained:
        print("cnnserve stopped: every accepted inference was answered", flush=True)
    else:
        print("cnnserve stopped: the grace period ended with inferences running", flush=True)
    return drained


def _exit_now(sig: signal.Signals) -> None:
    # os._exit: threads blocked in onnxruntime would keep a normal exit waiting.
    print(f"cnnserve: second {sig.name}: exiting without finishing requests", flush=True)
    os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["export"]:
        try:
            from export.__main__ import main as export_main
        except ImportError as exc:
            from service.cli.hints import install_hint

            print(
                f"cnnserve export needs the export extra ({exc.name} is missing): "
                f"{install_hint('export', 'export-deps')}",
                file=sys.stderr,
            )
            return 2
        return export_main(args_list[1:])
    try:
        parser = build_parser()
    except SettingError as exc:  # a CNNSERVE_* variable that does not parse
        print(f"cnnserve: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        settings = serve_settings(args)
        limit_malloc_arenas()  # before any thread: a reload leaves memory where it was
        try:
            with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
                drained = runner.run(_serve(settings))
        except OSError as exc:  # a port in use, an unreadable repository
            print(f"cnnserve: {exc}", file=sys.stderr)
            return 1
        except CnnserveError as exc:  # e.g. an unreadable TLS certificate
            print(f"cnnserve: {exc.message}", file=sys.stderr)
            return 1
        return 0 if drained else 1
    if args.command in ("health", "infer"):
        return _one_line_errors(args.command, lambda: _client_command(args))
    if args.command == "profile":
        return _one_line_errors(args.command, lambda: _profile_command(args))
    return 2


def _one_line_errors(command: str, run: Callable[[], int]) -> int:
    """The client commands' errors: one line on stderr; exit 2 for a usage error, 1 for
    what the server said (or could not be reached)."""
    from service.cli.client import ClientError, UsageError

    try:
        return run()
    except UsageError as exc:
        print(f"cnnserve {command}: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"cnnserve {command}: {exc}", file=sys.stderr)
        return 1


def _client_command(args: argparse.Namespace) -> int:
    """`health` (exit 0 when SERVING) and `infer` (prints the top classes)."""
    from service.cli.client import classify_files, health_check

    if args.command == "health":
        status = health_check(args.url, args.service, args.timeout, _client_security(args))
        print(f"{args.service or 'server'} at {args.url}: {status}")
        return 0 if status == "SERVING" else 1
    lines = classify_files(
        args.url, args.model, args.images, args.top_k, _client_security(args), args.timeout
    )
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
