"""`python -m bench.floor`: the floor for a Python v2 server (bench only, never shipped).

A grpc.aio + uvloop servicer of cnnserve's own generated code whose ModelInfer answers a
fixed response without reading its input (the request is still parsed by gRPC, as for any
servicer). No batching, no model, no metrics: what any Python gRPC server pays per request.
Prints "floor listening on 127.0.0.1:PORT" and serves until SIGTERM.

`--spin-us N` burns N us of the handler's thread CPU in Python per request and `--await`
suspends the handler once (a future resolved by the next loop callback), as a batcher does:
what Python work and a suspension cost once served
(`python -m bench.investigations.floor_variants`).
`--model-repository DIR` makes it the least a model server does (the "model floor"): read
the first raw input and run the named model's onnxruntime session (DIR/<name>/1/model.onnx;
one thread, no spinning) on it, per request, on the loop, answering the fixed response.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

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


def spin(seconds: float) -> None:
    """Python work: this thread's CPU for `seconds`."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, spin_s: float = 0.0, suspend: bool = False, repository: Path | None = None
    ) -> None:
        self._response = fixed_response()
        self._spin_s = spin_s
        self._suspend = suspend
        self._sessions: dict[str, tuple[Any, str]] = {}  # model name -> (session, input)
        if repository is not None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            for path in sorted(repository.glob("*/1/model.onnx")):
                session = ort.InferenceSession(str(path), options)
                self._sessions[path.parent.parent.name] = (session, session.get_inputs()[0].name)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ModelInferResponse:
        if self._spin_s:
            spin(self._spin_s)
        if self._sessions:
            session, name = self._sessions[request.model_name]
            shape = list(request.inputs[0].shape)
            dtype = np.uint8 if request.inputs[0].datatype == "UINT8" else np.float32
            pixels = np.frombuffer(request.raw_input_contents[0], dtype).reshape(shape)
            session.run(None, {name: pixels})
        if self._suspend:
            loop = asyncio.get_running_loop()
            resumed: asyncio.Future[None] = loop.create_future()
            loop.call_soon(resumed.set_result, None)
            await resumed
        return self._response


async def serve(spin_s: float, suspend: bool, repository: Path | None) -> None:
    server = grpc.aio.server()
    servicer = FloorServicer(spin_s, suspend, repository)  # type: ignore[abstract]
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"floor listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spin-us", type=float, default=0.0, help="Python work per request")
    parser.add_argument("--await", dest="suspend", action="store_true", help="suspend once")
    parser.add_argument("--model-repository", type=Path, help="run the named model per request")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(args.spin_us * 1e-6, args.suspend, args.model_repository))
    sys.exit(0)
