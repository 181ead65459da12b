"""`python -m bench.fuzz [--examples N]`: the long fuzz run against a real `cnnserve serve`
process on a loopback port (the strategies of tests/fuzzing.py, which `make test` runs a few
hundred times). Counts every status code; fails if any is INTERNAL or UNKNOWN, or if the
server is not SERVING at the end. Prints one markdown line for bench/README.md."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import grpc
from hypothesis import HealthCheck, given, settings

from service.cli.client import ClientError, health_check
from service.v2 import grpc_service_pb2 as pb
from tests.fuzzing import CLIENT_ERRORS, infer_requests, whole_messages
from tests.serving import EXAMPLE_MODELS, spawn_server

METHOD = "/inference.GRPCInferenceService/ModelInfer"
CRITERION = "no INTERNAL or UNKNOWN (only client-error codes or OK); SERVING at the end"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=10_000, help="per strategy")
    args = parser.parse_args()
    process, address = spawn_server(
        [sys.executable, "-m", "service", "serve", "--model-repository", str(EXAMPLE_MODELS),
         "--port", "0", "--no-metrics", "--no-http"]
    )  # fmt: skip
    codes: Counter[str] = Counter()
    bad: list[str] = []
    started = time.monotonic()
    try:
        with grpc.insecure_channel(address) as channel:
            send = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

            def call(data: bytes) -> None:
                try:
                    send(data, timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                codes[code.name] += 1
                if code != grpc.StatusCode.OK and code not in CLIENT_ERRORS:
                    bad.append(f"{code.name}: {data[:200]!r}")

            run = settings(
                max_examples=args.examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )

            @run
            @given(request=infer_requests())
            def structured(request: pb.ModelInferRequest) -> None:
                call(request.SerializeToString())

            @run
            @given(data=whole_messages)
            def raw(data: bytes) -> None:
                call(data)

            structured()
            raw()
        try:
            healthy = health_check(address, "", 10) == "SERVING"
        except ClientError as exc:  # the server died or stopped answering
            print(f"health check failed: {exc}", file=sys.stderr)
            healthy = False
    finally:
        process.terminate()
        process.wait(timeout=60)
    total = sum(codes.values())
    seconds = time.monotonic() - started
    summary = ", ".join(f"{name} {count}" for name, count in codes.most_common())
    passed = not bad and healthy
    print(
        f"| {total} | {len(bad)} | {'yes' if healthy else 'NO'} | {seconds:.0f} s | {summary} "
        f"| {CRITERION} | {'pass' if passed else '**FAIL**'} |"
    )
    for line in bad[:20]:
        print(line, file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
