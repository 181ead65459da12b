"""What a Triton config.pbtxt declares beyond cnnserve's own keys (triton_model_config.py
reads it): kept with the model config, to serve it and to show it back in the ModelConfig
RPC. Plain data, no parsing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

WarmupData = Literal["zero_data", "random_data"]


@dataclass(frozen=True)
class VersionPolicy:
    """Which version folders serve: Triton's `latest {num_versions}` (the default, 1),
    `all {}` or `specific {versions}`."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those on disk (sorted)."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :] if ordered else []


@dataclass(frozen=True)
class WarmupInput:
    datatype: str
    dims: tuple[int, ...]
    data: WarmupData


@dataclass(frozen=True)
class WarmupSample:
    """One `model_warmup` entry: run `count` times (at least once) at load."""

    name: str
    batch_size: int
    inputs: Mapping[str, WarmupInput]
    count: int = 1


@dataclass(frozen=True)
class TritonDeclared:
    # Tensor name -> the shape the model itself has (Triton's `reshape`, without the batch
    # dimension): clients send and receive the declared `dims`.
    reshapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    formats: Mapping[str, str] = field(default_factory=dict)  # input -> FORMAT_NHWC | FORMAT_NCHW
    label_files: Mapping[str, str] = field(default_factory=dict)  # output -> label file
    model_file: str | None = None  # default_model_filename
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    warmup: tuple[WarmupSample, ...] = ()
    # Without `dynamic_batching`, Triton runs every request alone: so does cnnserve.
    dynamic_batching: bool = False
    # optimization.execution_accelerators.gpu_execution_accelerator: "cuda" or "tensorrt".
    accelerator: str | None = None
    accelerator_options: Mapping[str, str] = field(default_factory=dict)
    intra_op_threads: int | None = None  # parameters { key: "intra_op_thread_count" }
    inter_op_threads: int | None = None
