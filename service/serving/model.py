"""A served model version: its config, onnxruntime runners, scheduler, labels, decoding.

`ServedModel` is the core that the gRPC servicer calls: `check_headers` checks a request
against the signature (before its payload is decoded), `infer` decodes encoded images (in
this model's decode threads), hands the request to the scheduler, picks the requested
outputs and applies Triton's classification extension.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.configuration.model_config import ModelConfig
from service.configuration.settings import default
from service.configuration.signature import InputCheck, select_outputs
from service.images.decode import decode_rows, read_headers
from service.images.device_decode import DecodeChoice, DeviceImageDecoder
from service.images.preprocess import BoundPreprocess
from service.runtime.autotune import Tuning
from service.runtime.onnx_runner import OnnxRunner, default_intra_op_threads
from service.runtime.scheduler import Arrays, Feed, Feeds, Scheduler
from service.runtime.threads import name_os_thread
from service.telemetry.metrics import ModelMetrics
from service.tensors.errors import InvalidArgument
from service.tensors.records import DecodedRequest, RequestedOutput, TensorHeader

CLASSIFICATION = "classification"  # Triton's output parameter: return the top k classes


@dataclass
class ServedModel:
    config: ModelConfig
    version: int
    runners: list[OnnxRunner]  # one per instance
    scheduler: Scheduler
    labels: tuple[str, ...] = ()
    preprocess: BoundPreprocess | None = None
    metrics: ModelMetrics | None = None
    load_seconds: float = 0.0
    tuning: Tuning | None = None  # instances: auto, what the timing at load chose
    instances_chosen_by: str = "config"  # ModelMetadata: the timing's summary, or why not
    max_decode_pixels: int = default("max_decode_pixels")  # encoded images, per request
    decode: DecodeChoice | None = None  # where encoded images are decoded (preprocessing)
    device_decoder: DeviceImageDecoder | None = None  # decode: gpu
    _decoder: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _users: int = field(default=0, init=False, repr=False)
    _unused: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _input_check: InputCheck = field(init=False, repr=False)
    _output_names: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._input_check = InputCheck(self.config)
        self._output_names = tuple(spec.name for spec in self.config.outputs)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def runner(self) -> OnnxRunner:
        """The first instance: all instances share device and provider."""
        return self.runners[0]

    @property
    def instance_count(self) -> int:
        """The instances that share the load: a solo instance (the last runner) is not one."""
        return len(self.runners) - self.config.solo_instance

    async def start(self) -> None:
        """Start the decode threads and the scheduler; if that fails, release them."""
        try:
            if self.preprocess is not None:
                self._decoder = ThreadPoolExecutor(
                    max_workers=default_intra_op_threads(1),  # the cores this process may use
                    thread_name_prefix=f"decode-{self.name}",
                    initializer=name_os_thread,
                    initargs=("decode",),
                )
            await self.scheduler.start()
        except BaseException:
            await self.aclose()
            if self.metrics is not None:
                self.metrics.release()
            raise

    def acquire(self) -> None:
        """A request starts using this version: its retirement waits for the release."""
        self._users += 1
        self._unused.clear()

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._unused.set()

    async def retire(self) -> None:
        """Close once the requests that hold this version have finished (after a swap)."""
        if self._users:
            await self._unused.wait()
        await self.aclose()

    async def aclose(self) -> None:
        """Finish accepted requests, stop the threads, release the sessions."""
        await self.scheduler.aclose()
        if self._decoder is not None:
            await asyncio.to_thread(self._decoder.shutdown, wait=True)
            self._decoder = None
        for runner in self.runners:
            runner.close()
        if self.device_decoder is not None:
            self.device_decoder.close()

    def check_headers(self, headers: Sequence[TensorHeader]) -> int:
        """The signature check, run by the codec before payloads are decoded."""
        return self._input_check(headers)

    async def infer(
        self, request: DecodedRequest, *, deadline: float | None
    ) -> list[tuple[str, npt.NDArray[np.generic]]]:
        if not request.outputs:  # the common case: every output, as computed
            results = await self._submit(request, request.inputs, self._output_names, deadline)
            return [(name, results[name]) for name in self._output_names]
        names = select_outputs(self.config, request.outputs)
        classify = {out.name: _class_count(out) for out in request.outputs}
        results = await self._submit(request, request.inputs, names, deadline)
        outputs: list[tuple[str, npt.NDArray[np.generic]]] = []
        for name in names:
            k = classify.get(name, 0)
            outputs.append((name, self._classify(results[name], k) if k else results[name]))
        return outputs

    async def _submit(
        self,
        request: DecodedRequest,
        inputs: Mapping[str, npt.NDArray[np.generic]],
        names: tuple[str, ...],
        deadline: float | None,
    ) -> Arrays:
        """Decode encoded images (in the decode threads), then queue for the scheduler."""
        pre = self.preprocess
        feeds: Feeds = inputs
        if pre is not None and inputs[pre.input_name].dtype == np.object_:
            assert self._decoder is not None
            self.scheduler.check_admission(request.batch_size, deadline)
            images = list(inputs[pre.input_name].reshape(-1))
            # Headers only, on the loop: ~40 us a photo (bench/README.md, "Photos").
            headers = read_headers(pre, images, self.max_decode_pixels)
            loop = asyncio.get_running_loop()
            started = loop.time()
            pixels: Feed
            if self.device_decoder is not None:  # one batched call, rows on the device
                pixels = await loop.run_in_executor(
                    self._decoder, self.device_decoder.decode, images, headers
                )
            else:
                pixels = await decode_rows(pre, images, self._decoder)
            feeds = {**inputs, pre.input_name: pixels}
            if self.metrics is not None:
                self.metrics.decoded(loop.time() - started)
        return await self.scheduler.submit(
            feeds, names, batch_size=request.batch_size, deadline=deadline
        )

    def _classify(self, scores: npt.NDArray[np.generic], k: int) -> npt.NDArray[np.object_]:
        """Top k per row as BYTES "<score>:<index>[:<label>]", as Triton returns them."""
        batch = scores.shape[0] if self.config.batched else 1
        rows = np.asarray(scores).reshape(batch, -1)
        k = min(k, rows.shape[1])
        top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
        labels = self.labels
        out = np.empty((rows.shape[0], k), dtype=np.object_)
        for r in range(rows.shape[0]):
            for j, index in enumerate(top[r]):
                text = f"{float(rows[r, index]):f}:{int(index)}"
                if int(index) < len(labels):
                    text += f":{labels[int(index)]}"
                out[r, j] = text.encode()
        return out if self.config.batched else out.reshape(k)


def _class_count(output: RequestedOutput) -> int:
    value = output.parameters.get(CLASSIFICATION)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(
            f"output '{output.name}': parameter '{CLASSIFICATION}' must be a positive int64 "
            f"class count, got {value!r}"
        )
    return value
