"""A served model version: its config, onnxruntime runner, scheduler and labels.

`ServedModel` is the core that the gRPC servicer calls: `check_headers` checks a request
against the signature (before its payload is decoded), `infer` hands it to the scheduler
and picks the requested outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.codec import DecodedRequest, TensorHeader
from service.config import ModelConfig
from service.runtime import OnnxRunner
from service.scheduler import Scheduler
from service.signature import check_inputs, select_outputs


@dataclass
class ServedModel:
    config: ModelConfig
    version: int
    runners: list[OnnxRunner]  # one per instance
    scheduler: Scheduler
    labels: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def runner(self) -> OnnxRunner:
        """The first instance: all instances share device and provider."""
        return self.runners[0]

    def check_headers(self, headers: Sequence[TensorHeader]) -> int:
        """The signature check, run by the codec before payloads are decoded."""
        return check_inputs(self.config, headers)

    async def infer(
        self, request: DecodedRequest, *, deadline: float | None
    ) -> list[tuple[str, npt.NDArray[np.generic]]]:
        names = select_outputs(self.config, request.outputs)
        results = await self.scheduler.submit(
            request.inputs, names, batch_size=request.batch_size, deadline=deadline
        )
        return [(name, results[name]) for name in names]

    async def aclose(self) -> None:
        await self.scheduler.aclose()
