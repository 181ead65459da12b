"""The plain records a request travels as, between a protocol's edge and the core.

The front ends (the gRPC servicer and its codec; any other protocol) decode their wire
messages into these and encode the core's results from them; the core (model, signature,
batcher, runtime) sees nothing else, so it imports no protobuf and no protocol library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

ParamValue = bool | int | float | str  # a request, input or output parameter's value
NO_PARAMETERS: Mapping[str, ParamValue] = MappingProxyType({})

# The per-request records are NamedTuples: built once per request on the hot path, where a
# frozen dataclass's __init__ pays one object.__setattr__ per field.


class RequestedOutput(NamedTuple):
    name: str
    parameters: Mapping[str, ParamValue] = NO_PARAMETERS


class TensorHeader(NamedTuple):
    """What a request declares about one input, before its contents are read."""

    name: str
    datatype: str
    shape: tuple[int, ...]


# Checks the declared inputs against a model's signature and returns the batch size;
# run before any payload is decoded, so a wrong shape is reported as a wrong shape.
HeaderCheck = Callable[[Sequence[TensorHeader]], int]


# What a model answers: (output name, array) in the order the outputs were asked for.
NamedOutputs = Sequence[tuple[str, npt.NDArray[np.generic]]]


class DecodedRequest(NamedTuple):
    """An inference request whose inputs passed the model's header check and were decoded."""

    id: str
    inputs: dict[str, npt.NDArray[np.generic]]
    batch_size: int
    outputs: tuple[RequestedOutput, ...]
    parameters: Mapping[str, ParamValue]


@dataclass(frozen=True)
class OnnxTensor:
    """What onnxruntime says about one graph input or output (a NodeArg, decoupled)."""

    name: str
    ort_type: str
    shape: tuple[int | str | None, ...]
