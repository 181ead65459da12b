"""`cnnserve` / `python -m service`: serve, infer, export."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from service.config import ServerSettings
from service.eventloop import loop_factory


def _env(name: str, default: str) -> str:
    return ServerSettings.env_default(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model repository over KServe v2 gRPC")
    serve.add_argument(
        "--model-repository",
        type=Path,
        default=Path(_env("MODEL_REPOSITORY", "models")),
        help="folder of models (env CNNSERVE_MODEL_REPOSITORY; default: models)",
    )
    serve.add_argument(
        "--host", default=_env("HOST", "127.0.0.1"), help="bind address (env CNNSERVE_HOST)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=int(_env("PORT", "8001")),
        help="gRPC port, 0 = any free port (env CNNSERVE_PORT; default 8001)",
    )
    serve.add_argument(
        "--batching",
        choices=("on", "off"),
        default=_env("BATCHING", "on"),
        help="dynamic batching (env CNNSERVE_BATCHING); off runs each request alone",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "8002")),
        help="Prometheus /metrics HTTP port, 0 = any free port (env CNNSERVE_METRICS_PORT)",
    )
    serve.add_argument(
        "--no-metrics", action="store_true", help="serve no metrics (for overhead comparison)"
    )
    serve.add_argument(
        "--event-loop",
        choices=("auto", "asyncio"),
        default=_env("EVENT_LOOP", "auto"),
        help="auto: uvloop when installed (env CNNSERVE_EVENT_LOOP)",
    )
    serve.add_argument(
        "--ort-spinning",
        action="store_true",
        help="let onnxruntime's intra-op threads busy-wait (off by default: it starves gRPC)",
    )
    serve.add_argument(
        "--grace-period",
        type=float,
        default=float(_env("GRACE_PERIOD", "30")),
        help="seconds to finish accepted requests on SIGTERM (env CNNSERVE_GRACE_PERIOD)",
    )

    infer = commands.add_parser(
        "infer", help="classify image files with a running server (sent as they are)"
    )
    infer.add_argument("images", nargs="+", type=Path, help="PNG or JPEG files")
    infer.add_argument("--model", required=True)
    infer.add_argument("--url", default=_env("URL", "127.0.0.1:8001"), help="host:port")
    infer.add_argument("--top-k", type=int, default=3)

    health = commands.add_parser(
        "health", help="gRPC health check (exit 0 when SERVING): for container HEALTHCHECKs"
    )
    health.add_argument("--url", default=_env("URL", "127.0.0.1:8001"), help="host:port")
    health.add_argument("--service", default="", help='"" = the server, or a model name')
    health.add_argument("--timeout", type=float, default=3.0, help="seconds")

    commands.add_parser(
        "export",
        help="train and export models (needs the export extra: pip install 'cnnserve[export]')",
        add_help=False,
    )
    return parser


async def _serve(settings: ServerSettings) -> None:
    from service.server import CnnserveServer

    server = CnnserveServer(settings)
    await server.start()
    # The "listening on" line is read by tests and `make run` users: keep its format.
    print(f"cnnserve listening on {server.address}", flush=True)
    if server.metrics_port is not None:
        host = settings.host
        print(f"  metrics on http://{host}:{server.metrics_port}/metrics", flush=True)
    for entry in server.repository.entries():
        state = entry.state.value + (f" ({entry.reason})" if entry.reason else "")
        served = entry.served
        detail = f" version {served.version} on {served.runner.provider}" if served else ""
        print(f"  model {entry.name}: {state}{detail}", flush=True)
    print(
        f"  try: cnnserve infer --url {server.address} --model <name> image.png\n"
        f'       python -c "import tritonclient.grpc as g; '
        f"print(g.InferenceServerClient('{server.address}').get_server_metadata())\"",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["export"]:
        try:
            from export.__main__ import main as export_main
        except ImportError as exc:
            print(
                f"cnnserve export needs the export extra ({exc.name} is missing): "
                "pip install 'cnnserve[export]'",
                file=sys.stderr,
            )
            return 2
        return export_main(args_list[1:])
    args = build_parser().parse_args(args_list)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        settings = ServerSettings(
            model_repository=args.model_repository,
            host=args.host,
            port=args.port,
            grace_period_s=args.grace_period,
            batching=args.batching == "on",
            metrics_port=None if args.no_metrics else args.metrics_port,
            event_loop=args.event_loop,
            ort_spinning=args.ort_spinning,
        )
        try:
            with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
                runner.run(_serve(settings))
        except OSError as exc:  # a port in use, an unreadable repository
            print(f"cnnserve: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "health":
        from service.client import health_check

        status = health_check(args.url, args.service, args.timeout)
        print(f"{args.service or 'server'} at {args.url}: {status}")
        return 0 if status == "SERVING" else 1
    if args.command == "infer":
        from service.client import classify_files

        for line in classify_files(args.url, args.model, args.images, args.top_k):
            print(line)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
