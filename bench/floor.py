"""`python -m bench.floor`: the floor for a Python v2 server (bench only, never shipped).

A grpc.aio + uvloop servicer of cnnserve's own generated code whose ModelInfer answers a
fixed response without reading its input (the request is still parsed by gRPC, as for any
servicer). No batching, no model, no metrics: what any Python gRPC server pays per request.
Prints "floor listening on 127.0.0.1:PORT" and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
import numpy as np

from service.eventloop import loop_factory
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc


def fixed_response() -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="floor", model_version="1")
    response.outputs.add(name="mean", datatype="FP32", shape=[1])
    response.raw_output_contents.append(np.zeros(1, np.float32).tobytes())
    return response


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self._response = fixed_response()

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ModelInferResponse:
        return self._response


async def serve() -> None:
    server = grpc.aio.server()
    servicer = FloorServicer()  # type: ignore[abstract]  # only ModelInfer is served
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"floor listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve())
    sys.exit(0)
