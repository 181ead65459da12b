"""`python -m bench.investigations.micro`: the in-process costs behind bench/README.md's "Where
the time goes" (no gRPC, one process, this machine): a v2 request's protobuf parse, the codec's
decode and encode, the request path from `ServedModel.infer` through the batcher with 1000
requests in flight (batched) and one at a time (a batch each, so a thread hand-off each),
the round trip between two Python threads through a SimpleQueue (the hand-off's own
cost), and one onnxruntime `session.run` of the compute-free model at 1, 4 and 32 rows with
1 and 2 intra-op threads (the per-call cost a batch pays). Figures are medians of 5
repetitions; no criterion (it explains, it does not judge).
"""

from __future__ import annotations

import asyncio
import queue
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import numpy as np
import onnxruntime as ort

from bench.overhead import PAYLOADS, build_repository, compute_free_model
from bench.run import OUT
from service.configuration.settings import ServerSettings
from service.eventloop import loop_factory
from service.frontends.grpc_codec import decode_infer_request, encode_infer_response
from service.server import CnnserveServer
from service.v2 import grpc_service_pb2 as pb


def per_call_us(call: Callable[[], object], count: int = 20_000) -> float:
    call()
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            call()
        runs.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(runs)


async def per_request_cpu_us(
    make: Callable[[], Awaitable[object]], count: int, together: bool
) -> float:
    runs = []
    for _ in range(5):
        started = time.process_time()  # every thread of the process: the hand-off included
        if together:
            await asyncio.gather(*(make() for _ in range(count)))
        else:
            for _ in range(count):
                await make()
        runs.append((time.process_time() - started) / count * 1e6)
    return statistics.median(runs)


def ping_pong_us(count: int = 5_000) -> tuple[float, float]:
    """(wall, CPU) microseconds of one put/get round trip between two Python threads."""
    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        while (item := there.get()) is not None:
            back.put(item)

    thread = threading.Thread(target=echo)
    thread.start()
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        there.put(index)
        back.get()
    result = ((time.perf_counter() - wall) / count * 1e6, (time.process_time() - cpu) / count * 1e6)
    there.put(None)
    thread.join()
    return result


async def measure() -> None:
    root = OUT / "overhead" / "models"
    build_repository(root)
    payload = PAYLOADS[0]
    server = CnnserveServer(ServerSettings(model_repository=root, port=0, metrics_port=None))
    await server.start()
    try:
        request = pb.ModelInferRequest(model_name=payload.name)
        request.inputs.add(name="x", datatype="FP32", shape=list(payload.shape))
        request.raw_input_contents.append(np.zeros(payload.shape, np.float32).tobytes())
        wire = request.SerializeToString()
        model = server.repository.get(payload.name)
        decoded = decode_infer_request(request, model.check_headers)
        outputs = [("mean", np.zeros(1, np.float32))]
        print(f"{payload.label}, model {payload.name}")
        parse = per_call_us(lambda: pb.ModelInferRequest.FromString(wire))
        decode = per_call_us(lambda: decode_infer_request(request, model.check_headers))
        encode = per_call_us(
            lambda: encode_infer_response(
                model_name=payload.name, model_version="1", request_id="", outputs=outputs
            )
        )
        print(f"protobuf parse of the request      {parse:6.1f} us")
        print(f"codec decode (headers, check, np)  {decode:6.1f} us")
        print(f"codec encode (response)            {encode:6.1f} us")
        infer = lambda: model.infer(decoded, deadline=None)  # noqa: E731
        together = await per_request_cpu_us(infer, 1000, together=True)
        alone = await per_request_cpu_us(infer, 2000, together=False)
        print(f"model.infer, 1000 in flight (batched), CPU per request  {together:6.1f} us")
        print(f"model.infer, one at a time (a batch each), CPU per request {alone:6.1f} us")
    finally:
        await server.aclose()
    wall, cpu = ping_pong_us()
    print(f"thread round trip (SimpleQueue put/get): {wall:.1f} us wall, {cpu:.1f} us CPU")
    session_runs()


def session_runs() -> None:
    """CPU per `session.run` of the 12 KB compute-free model, as the server's sessions are
    set up (no spinning), by rows and intra-op threads."""
    payload = PAYLOADS[0]
    model = compute_free_model(payload).SerializeToString()
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
        for rows in (1, 4, 32):
            x = np.zeros((rows, *payload.shape[1:]), np.float32)
            runs = []
            for _ in range(5):
                began = time.process_time()
                for _ in range(2000):
                    session.run([output], {name: x})
                runs.append((time.process_time() - began) / 2000 * 1e6)
            print(f"session.run, {rows:2d} rows, {threads} intra-op thread(s): "
                  f"{statistics.median(runs):6.1f} us CPU")  # fmt: skip


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(measure())
    sys.exit(0)
