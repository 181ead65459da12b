"""`python -m bench.investigations.ablation [--reps 5]`: the request path taken apart, in-process.

cnnserve's servicer (`ModelInfer`, a stand-in context) on the 12 KB compute-free model of
bench.overhead (`instances: 1`, metrics on), driven by c callers on one event loop; each
caller parses a request and serializes the answer, as gRPC would. Variants replace one part
with a constant: the batcher (the model's session run directly), the whole model (batcher
and onnxruntime), the request decoding, the answer encoding, or all three. Process CPU per
request, median of `--reps` interleaved repetitions, at c=4 (the batch sizes seen served)
and c=32. No criterion: it says where bench/README.md's "Serving cost per request" goes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.overhead import PAYLOADS, build_repository
from bench.run import OUT
from service.configuration.settings import ServerSettings
from service.eventloop import loop_factory
from service.frontends import grpc_api
from service.frontends import grpc_codec as codec
from service.server import CnnserveServer
from service.serving import model as model_module
from service.v2 import grpc_service_pb2 as pb


class StandInContext:
    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: object, message: str) -> None:
        raise RuntimeError(message)


async def measure(concurrency: int, reps: int) -> dict[str, float]:
    root = OUT / "ablation"
    build_repository(root)
    payload = PAYLOADS[0]
    (root / payload.name / "config.yaml").write_text("instances: 1\n")
    settings = ServerSettings(model_repository=root, port=0, metrics_port=0, http_port=None)
    server = CnnserveServer(settings)
    await server.start()
    servicer: Any = server._servicer
    request = pb.ModelInferRequest(model_name=payload.name)
    request.inputs.add(name="x", datatype="FP32", shape=list(payload.shape))
    request.raw_input_contents.append(np.zeros(payload.shape, np.float32).tobytes())
    wire = request.SerializeToString()
    served = server.repository.get(payload.name)
    decoded = codec.decode_infer_request(request, served.check_headers)
    outputs = [("mean", np.zeros((1, 1), np.float32))]
    answer = codec.encode_infer_response(
        model_name=payload.name, model_version="1", request_id="", outputs=outputs
    )
    real = (
        codec.decode_infer_request,
        grpc_api.InferenceServicer._encode,
        model_module.ServedModel.infer,
    )
    runner = served.runners[0]

    async def run_directly(self: Any, request: Any, *, deadline: float | None) -> Any:
        return list(
            zip(self._output_names, runner.run(request.inputs, self._output_names), strict=True)
        )

    async def no_model(self: Any, request: Any, *, deadline: float | None) -> Any:
        return outputs

    def no_decode(request: Any, check: Any, *shared_memory: Any) -> Any:
        return decoded

    def no_encode(self: Any, model: Any, decoded: Any, outputs: Any) -> Any:
        return answer

    variants: dict[str, dict[str, Callable[..., Any]]] = {
        "the whole path": {},
        "no batcher (session run directly)": {"infer": run_directly},
        "no model (no batcher, no onnxruntime)": {"infer": no_model},
        "no request decoding": {"decode": no_decode},
        "no answer encoding": {"encode": no_encode},
        "none of the three": {"decode": no_decode, "encode": no_encode, "infer": no_model},
    }

    def use(variant: dict[str, Callable[..., Any]]) -> None:
        setattr(grpc_api, "decode_infer_request", variant.get("decode", real[0]))  # noqa: B010
        grpc_api.InferenceServicer._encode = variant.get("encode", real[1])  # type: ignore[method-assign]
        model_module.ServedModel.infer = variant.get("infer", real[2])  # type: ignore[method-assign]

    context = StandInContext()

    async def callers(count: int) -> None:
        async def caller() -> None:
            for _ in range(count):
                parsed = pb.ModelInferRequest.FromString(wire)
                (await servicer.ModelInfer(parsed, context)).SerializeToString()

        await asyncio.gather(*(caller() for _ in range(concurrency)))

    per_caller = 8000 // concurrency
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for variant in variants.values():
            use(variant)
            await callers(50)
        for _ in range(reps):
            for name, variant in variants.items():
                use(variant)
                began = time.process_time()
                await callers(per_caller)
                cpu[name].append((time.process_time() - began) / (per_caller * concurrency) * 1e6)
    finally:
        use({})
        await server.aclose()
    return {name: statistics.median(values) for name, values in cpu.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    table: dict[int, dict[str, float]] = {}
    for concurrency in (4, 32):
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            table[concurrency] = runner.run(measure(concurrency, args.reps))
    print(f"{PAYLOADS[0].label}, in-process, process CPU us per request (median of {args.reps})")
    print("| variant | c=4 | c=32 |")
    print("|---|---|---|")
    for name in table[4]:
        print(f"| {name} | {table[4][name]:.1f} | {table[32][name]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
