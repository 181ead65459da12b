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
from service.cli.profile_command import add_profile_parser
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
    from service.workers.link import WorkerLink

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


def build_parser() -> argparse.ArgumentParser:
    """Raises SettingError for a CNNSERVE_* variable that does not parse."""
    parser = argparse.ArgumentParser(prog="cnnserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve a model repository over KServe v2 gRPC and REST"
    )
    _serve_flags(serve)
    _client_parsers(commands)
    add_profile_parser(commands)
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


async def _serve(
    settings: ServerSettings,
    make_scheduler: SchedulerFactory | None = None,
    link: WorkerLink | None = None,
) -> bool:
    """Serve until signalled; True when every accepted inference was answered. With `link`,
    as one worker of a `--workers` supervisor (service/workers/)."""
    from service.server import CnnserveServer
    from service.workers.fleet_client import SupervisorFleet

    fleet = SupervisorFleet(link) if link is not None else None
    try:
        server = CnnserveServer(settings, make_scheduler, fleet=fleet)
        await server.start()
        stop = _stop_on_signal()  # before the "listening" line: a SIGTERM right after it drains
        if fleet is None:
            for line in _banner(server):
                print(line, flush=True)
            return await serve_until_signalled(server, stop)
        assert server.http is not None and server.http.worker_port is not None
        await fleet.register(
            pid=os.getpid(),
            worker_port=server.http.worker_port,
            metrics_port=server.metrics_port,
            banner=_banner(server),  # the supervisor prints it, once for all its workers
        )
        return await serve_until_signalled(server, stop, announce=log.info, worker=True)
    finally:
        if fleet is not None:
            await fleet.aclose()


def _banner(server: CnnserveServer) -> list[str]:
    # The "listening on" line is read by tests and `make run` users: keep its format.
    lines = [f"cnnserve listening on {server.address}"]
    if server.http is not None and server.settings.http_port is not None:
        lines.append(f"  KServe v2 REST on {server.http_url}")
    if server.metrics_port is not None and server.fleet is None:
        lines.append(f"  metrics on http://{server.settings.host}:{server.metrics_port}/metrics")
    for entry in server.repository.entries():
        state = entry.state.value + (f" ({entry.reason})" if entry.reason else "")
        served = entry.served
        versions = ", ".join(str(v) for v in sorted(entry.versions))
        label = "versions" if len(entry.versions) > 1 else "version"
        detail = f" {label} {versions} on {served.runner.provider}" if served else ""
        lines.append(f"  model {entry.name}: {state}{detail}")
    ready = [entry.name for entry in server.repository.entries() if entry.served is not None]
    lines.append(try_hint(server.address, ready))
    return lines


def _stop_on_signal() -> asyncio.Event:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    return stop


async def serve_until_signalled(
    server: CnnserveServer,
    stop: asyncio.Event,
    announce: Callable[[str], object] = print,
    worker: bool = False,
) -> bool:
    """First SIGTERM/SIGINT (`stop`): drain (NOT_SERVING, refuse new requests, finish the
    accepted ones within the grace period) and return whether every accepted inference was
    answered. A second one: exit at once, status 1."""
    loop = asyncio.get_running_loop()
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # A worker's signals come from its supervisor, and may come twice (the
        # supervisor's and a group-wide `kill`): it drains; the supervisor escalates.
        loop.add_signal_handler(sig, _still_draining if worker else _exit_now, sig)
    log.info("signal received: draining (a second signal exits at once)")
    drained = await server.aclose()
    # The exit status tells the operator (and the Pod's last state) whether work was cut off.
    if drained:
        announce("cnnserve stopped: every accepted inference was answered")
    else:
        announce("cnnserve stopped: the grace period ended with inferences running")
    return drained


def _still_draining(sig: signal.Signals) -> None:
    log.info("%s while draining: still draining (the supervisor's second signal kills)", sig.name)


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
        return _serve_command(serve_settings(args), args_list)
    if args.command in ("health", "infer"):
        return _one_line_errors(args.command, lambda: _client_command(args))
    if args.command == "profile":
        from service.cli.profile_command import profile_command

        return _one_line_errors(args.command, lambda: profile_command(args))
    return 2


def _serve_command(settings: ServerSettings, argv: list[str]) -> int:
    """`serve`: exit 0 when every accepted inference was answered, 1 otherwise."""
    from service.workers.link import WorkerLink, die_with_supervisor, worker_settings

    link = WorkerLink.from_env(os.environ)
    if link is not None:  # a worker of a --workers supervisor
        die_with_supervisor(link)
        settings = worker_settings(settings, link)
    elif settings.workers > 1:
        from service.workers.supervisor import supervise

        if settings.shared_memory != "none":  # a region registered on one worker only
            print("cnnserve serve: --shared-memory system needs --workers 1: regions are "
                  "registered in one process, and connections spread over the workers",
                  file=sys.stderr)  # fmt: skip
            return 2
        try:  # the supervisor serves no inference: the default loop is enough
            return asyncio.run(supervise(settings, argv))
        except OSError as exc:  # a port in use
            print(f"cnnserve: {exc}", file=sys.stderr)
            return 1
    limit_malloc_arenas()  # before any thread: a reload leaves memory where it was
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            drained = runner.run(_serve(settings, link=link))
    except OSError as exc:  # a port in use, an unreadable repository
        print(f"cnnserve: {exc}", file=sys.stderr)
        return 1
    except CnnserveError as exc:  # e.g. an unreadable TLS certificate
        print(f"cnnserve: {exc.message}", file=sys.stderr)
        return 1
    return 0 if drained else 1


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
