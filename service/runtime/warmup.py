"""Warm-up at load: run each batch size the batcher will form before the model is READY.

The first run at a new shape pays onnxruntime's one-off costs (memory arena growth on the
CPU; cuDNN algorithm search and allocations on CUDA), which would otherwise land on the
first live requests. The batcher forms any size from 1 to max_batch_size; running all of
them would make loading a large CNN slow on the CPU, so there the set is the powers of two
up to max_batch_size, max_batch_size itself and every preferred batch size. On CUDA, where
each new shape runs its own cuDNN algorithm search and a run is cheap, every size is run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from service.configuration.declared import WarmupSample
from service.configuration.model_config import ModelConfig, dims_agree
from service.runtime.scheduler import Runner
from service.tensors.datatypes import DATATYPES
from service.tensors.errors import ConfigError

log = logging.getLogger(__name__)


def warmup_batch_sizes(config: ModelConfig, *, every_size: bool = False) -> list[int]:
    if not config.batched:
        return [0]  # 0: the model's own fixed shape, no batch axis
    if every_size:  # CUDA: each new shape triggers its own cuDNN algorithm search
        return list(range(1, config.max_batch_size + 1))
    sizes = {config.max_batch_size, *config.dynamic_batching.preferred_batch_sizes}
    power = 1
    while power < config.max_batch_size:
        sizes.add(power)
        power *= 2
    return sorted(sizes)


def timeable(config: ModelConfig) -> bool:
    """Whether zeros of the declared shapes make a representative input (no variable image
    size, no encoded images or strings)."""
    specs = config.inputs
    return not any(-1 in s.dims for s in specs) and not any(s.datatype == "BYTES" for s in specs)


def zero_feeds(config: ModelConfig, size: int) -> dict[str, npt.NDArray[np.generic]]:
    """Zeros for every input at batch `size` (0: the unbatched model's own shape)."""
    return {
        spec.name: np.zeros(
            (size, *spec.dims) if size else spec.dims, dtype=DATATYPES[spec.datatype].numpy
        )
        for spec in config.inputs
    }


def warm_up(
    runners: Sequence[Runner], config: ModelConfig, *, every_size: bool = False
) -> list[int]:
    """Run every runner at every warm-up size; returns the sizes run ([] if skipped)."""
    if not timeable(config):
        # A variable image size or string input: no representative shape to warm with.
        log.info("model %s: warm-up skipped (variable dims or BYTES input)", config.name)
        return []
    sizes = warmup_batch_sizes(config, every_size=every_size)
    output_names = [spec.name for spec in config.outputs]
    started = time.monotonic()
    for size in sizes:
        feeds = zero_feeds(config, size)
        for runner in runners:
            runner.run(feeds, output_names)
    log.info(
        "model %s: warmed up %d instance(s) at batch sizes %s in %.2f s",
        config.name,
        len(runners),
        sizes,
        time.monotonic() - started,
    )
    return sizes


def sample_feeds(config: ModelConfig, sample: WarmupSample) -> dict[str, npt.NDArray[np.generic]]:
    """A config.pbtxt `model_warmup` sample as feeds: every input, its declared datatype and
    dims (the batch dimension added when the model batches), zeros or random data."""
    rng = np.random.default_rng(0)
    feeds: dict[str, npt.NDArray[np.generic]] = {}
    where = f"model '{config.name}': model_warmup '{sample.name}'"
    missing = sorted({s.name for s in config.inputs} - set(sample.inputs))
    if missing:
        raise ConfigError(f"{where} gives no data for input(s) {missing}")
    for name, given in sample.inputs.items():
        spec = config.input(name)
        if spec is None:
            raise ConfigError(f"{where}: the model has no input '{name}'")
        if given.datatype != spec.datatype or not dims_agree(given.dims, spec.dims):
            raise ConfigError(
                f"{where}: input '{name}' is {given.datatype} {list(given.dims)}, the model "
                f"takes {spec.datatype} {list(spec.dims)}"
            )
        shape = (sample.batch_size, *given.dims) if config.batched else given.dims
        dtype = DATATYPES[spec.datatype].numpy
        feeds[name] = (
            np.zeros(shape, dtype=dtype)
            if given.data == "zero_data"
            else (rng.random(shape) * (1 if np.issubdtype(dtype, np.floating) else 2)).astype(dtype)
        )
    if config.batched and sample.batch_size > config.max_batch_size:
        raise ConfigError(f"{where}: batch_size {sample.batch_size} > max_batch_size")
    return feeds


def run_warmup_samples(runners: Sequence[Runner], config: ModelConfig) -> None:
    """The config.pbtxt's own warm-up samples, after cnnserve's, on every instance."""
    samples = config.triton.warmup if config.triton else ()
    output_names = [spec.name for spec in config.outputs]
    for sample in samples:
        feeds = sample_feeds(config, sample)
        for runner in runners:
            for _ in range(sample.count):
                runner.run(feeds, output_names)
        log.info("model %s: warm-up sample '%s' run %d time(s)", config.name, sample.name,
                 sample.count)  # fmt: skip
