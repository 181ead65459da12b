"""Loading one served version from its folder: config, preprocessing splice, onnxruntime
sessions (one per instance), warm-up, metrics and scheduler. Blocking: the registry runs
it in a thread. The request path never imports this module (import-linter checks it): the
registry receives a `VersionLoader` from the server's wiring."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from service.batching.batcher import BatchObserver, BatchPolicy, DynamicBatcher
from service.configuration.declared import TritonDeclared
from service.configuration.model_config import (
    AUTO,
    DeviceRequest,
    ModelConfig,
    ModelOverrides,
)
from service.configuration.settings import default
from service.configuration.signature import infer_config, onnx_signature
from service.images.device_decode import DecodeChoice, DeviceImageDecoder, choose_decode
from service.images.preprocess import BoundPreprocess, attach, bind, parse_preprocessing
from service.runtime.autotune import Search, Tuning
from service.runtime.onnx_runner import CUDA, OnnxRunner, default_intra_op_threads
from service.runtime.scheduler import Scheduler
from service.runtime.warmup import run_warmup_samples, timeable, warm_up, zero_feeds
from service.serving.layout import model_path, read_labels, read_overrides
from service.serving.model import ServedModel
from service.serving.reshape import splice_reshapes
from service.telemetry.metrics import Metrics
from service.tensors.errors import ModelLoadError

log = logging.getLogger(__name__)

# instances: auto on a model that zeros cannot stand for: one instance, said so.
NOT_TIMED = (
    "auto: not timed (an input has a variable dimension or is BYTES, so zeros would not "
    "stand for real requests): 1 instance"
)

SchedulerFactory = Callable[[ModelConfig, Sequence[OnnxRunner], BatchObserver | None], Scheduler]


def batch_policy(config: ModelConfig, *, batching: bool = True) -> BatchPolicy:
    """The batcher's policy from a model config. batching=False (or an unbatched model):
    every request runs alone, as sent, through the same queue and backpressure."""
    merge = batching and config.dynamic_batching_on
    batching_config = config.dynamic_batching
    return BatchPolicy(
        max_batch_size=max(1, config.max_batch_size),
        max_queue_size=batching_config.max_queue_size,
        max_queue_delay_s=batching_config.max_queue_delay_us / 1e6,
        preferred_batch_sizes=batching_config.preferred_batch_sizes,
        merge=merge,
        solo_instance=config.solo_instance,
    )


def scheduler_factory(*, batching: bool = True) -> SchedulerFactory:
    def make(
        config: ModelConfig, runners: Sequence[OnnxRunner], observer: BatchObserver | None
    ) -> Scheduler:
        return DynamicBatcher(
            runners, batch_policy(config, batching=batching), name=config.name, observer=observer
        )

    return make


@dataclass(frozen=True)
class PreprocessedGraph:
    config: ModelConfig  # image input as clients send it (UINT8 pixels or BYTES)
    preprocess: BoundPreprocess
    graph: bytes  # the model with the preprocessing subgraph in front


def _read_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise ModelLoadError(f"cannot read {path.name}: {exc}") from exc


def reshaped_graph(name: str, path: Path, overrides: ModelOverrides) -> bytes:
    """A config.pbtxt's `reshape`s spliced into the graph (service/serving/reshape.py)."""
    assert overrides.triton is not None
    proto = _read_onnx(path)
    own = ModelOverrides(max_batch_size=overrides.max_batch_size)
    model = own.apply(infer_config(name, *onnx_signature(proto)))
    declared = {s.name: s for s in (*(overrides.inputs or ()), *(overrides.outputs or ()))}
    return splice_reshapes(proto, model, declared, overrides.triton.reshapes).SerializeToString()


def _graph(
    name: str, path: Path, overrides: ModelOverrides
) -> tuple[PreprocessedGraph | None, bytes | None]:
    """The graph the sessions run when it is not the file as it is: preprocessing spliced
    in front (config.yaml), or a config.pbtxt's reshapes."""
    if overrides.preprocessing is not None:
        prepared = preprocessed_graph(name, path, overrides)
        return prepared, prepared.graph
    if overrides.triton is not None and overrides.triton.reshapes:
        return None, reshaped_graph(name, path, overrides)
    return None, None


def _labels(model_dir: Path, triton: TritonDeclared | None) -> tuple[str, ...]:
    if triton is not None and triton.label_files:
        return read_labels(model_dir, next(iter(triton.label_files.values())))
    return read_labels(model_dir)


def preprocessed_graph(name: str, path: Path, overrides: ModelOverrides) -> PreprocessedGraph:
    """Bind the `preprocessing` key to the model and splice its subgraph into the graph."""
    assert overrides.preprocessing is not None
    spec = parse_preprocessing(name, overrides.preprocessing)
    proto = _read_onnx(path)
    config = overrides.apply(infer_config(name, *onnx_signature(proto)))
    pre = bind(name, spec, config.inputs, config.batched)
    graph = attach(proto, pre).SerializeToString()
    client = pre.client_spec
    if not config.batched:  # the model's fixed batch of 1 stays in the declared shape
        client = replace(client, dims=(1, *client.dims))
    inputs = tuple(client if s.name == pre.input_name else s for s in config.inputs)
    config = replace(config, inputs=inputs, encoded_inputs=(pre.input_name,))
    return PreprocessedGraph(config, pre, graph)


class VersionLoader:
    """Builds a ServedModel (not started) from `<model_dir>/<version>`."""

    def __init__(
        self,
        make_scheduler: SchedulerFactory | None = None,
        metrics: Metrics | None = None,
        *,
        ort_spinning: bool = False,
        autotune_budget_s: float = default("autotune_budget_s"),
        max_decode_pixels: int = default("max_decode_pixels"),
    ) -> None:
        self._make_scheduler = make_scheduler or scheduler_factory()
        self._metrics = metrics
        self._ort_spinning = ort_spinning
        self._autotune_budget_s = autotune_budget_s
        self._max_decode_pixels = max_decode_pixels

    def load(self, model_dir: Path, version: int) -> ServedModel:
        """Blocking: read the config, build the sessions, warm up. Call from a thread."""
        started = time.monotonic()
        name = model_dir.name
        overrides = read_overrides(model_dir)
        triton = overrides.triton
        path = model_path(model_dir, version, triton.model_file if triton else None)
        prepared, graph = _graph(name, path, overrides)
        runners = self._runners(path, overrides, graph)
        first = runners[0]
        if prepared is None:
            config = overrides.apply(infer_config(name, first.inputs(), first.outputs()))
        else:
            config = prepared.config
        tuning = None
        chosen_by = "config"
        threads_stated = triton is not None and triton.intra_op_threads is not None
        if overrides.instances in (None, AUTO) and not threads_stated:
            if timeable(config):
                config, runners, tuning = self._tune(path, overrides, graph, config, runners)
                first = runners[0]
                chosen_by = tuning.summary()
            else:
                chosen_by = NOT_TIMED
        # On CUDA every batch size gets its cuDNN algorithm search at load, not on a request.
        warmed = warm_up(runners, config, every_size=first.provider == CUDA)
        run_warmup_samples(runners, config)
        pre = prepared.preprocess if prepared else None
        decode, device_decoder = _decoding(overrides, pre, first)
        _log_loaded(config, version, runners, warmed, pre, tuning, decode)
        model_metrics = self._metrics.for_model(name, str(version)) if self._metrics else None
        try:
            scheduler = self._make_scheduler(config, runners, model_metrics)
        except BaseException:
            if model_metrics is not None:  # the series it created go with the failed load
                model_metrics.release()
            raise
        return ServedModel(
            config=config,
            version=version,
            runners=runners,
            scheduler=scheduler,
            labels=_labels(model_dir, triton),
            preprocess=pre,
            metrics=model_metrics,
            load_seconds=time.monotonic() - started,
            tuning=tuning,
            instances_chosen_by=chosen_by,
            max_decode_pixels=self._max_decode_pixels,
            decode=decode,
            device_decoder=device_decoder,
        )

    def _runners(
        self, path: Path, overrides: ModelOverrides, graph: bytes | None
    ) -> list[OnnxRunner]:
        """One session per instance, each with its share of the cores: concurrent runs on
        one shared session would contend for a single intra-op thread pool."""
        instances = overrides.instances if isinstance(overrides.instances, int) else 1
        stated = overrides.triton.intra_op_threads if overrides.triton else None
        threads = stated or default_intra_op_threads(instances)
        return [self._runner(path, overrides, graph, threads) for _ in range(instances)]

    def _runner(
        self, path: Path, overrides: ModelOverrides, graph: bytes | None, threads: int
    ) -> OnnxRunner:
        triton = overrides.triton
        tensorrt = triton is not None and triton.accelerator == "tensorrt"
        return OnnxRunner(
            path,
            model_bytes=graph,
            device=overrides.device or "auto",
            intra_op_threads=threads,
            provider_options=overrides.provider_options,
            spin=self._ort_spinning,
            io_binding=overrides.io_binding,
            tensorrt_options=triton.accelerator_options if triton and tensorrt else None,
        )

    def _tune(
        self,
        path: Path,
        overrides: ModelOverrides,
        graph: bytes | None,
        config: ModelConfig,
        probe: list[OnnxRunner],
    ) -> tuple[ModelConfig, list[OnnxRunner], Tuning]:
        """`instances: auto`: time the model and serve the best split of the cores (and,
        unless stated, max_batch_size). On CUDA one instance per device: only the batch."""
        on_cuda = probe[0].provider == CUDA
        threads = probe[0].intra_op_threads
        spare = list(probe)  # already built: the search's first split (1 x every core) reuses it

        def make(n: int) -> OnnxRunner:
            reusable = next((r for r in spare if r.intra_op_threads == n), None)
            if reusable is not None:
                spare.remove(reusable)
                return reusable
            return self._runner(path, overrides, graph, n)

        search = Search(
            config.name,
            make,
            lambda size: zero_feeds(config, size if config.batched else 0),
            [spec.name for spec in config.outputs],
            cores=default_intra_op_threads(1),
            batch_limit=config.max_batch_size if config.batched else 1,
            batch_stated=overrides.max_batch_size is not None or not config.batched,
            budget_s=self._autotune_budget_s,
            splits=[(1, threads)] if on_cuda else None,
        )
        try:
            tuning, runners = search.run()
        finally:
            for runner in spare:  # built and never asked for
                runner.close()
        chosen = replace(
            config, instances=tuning.instances, solo_instance=tuning.solo_threads is not None
        )
        if overrides.max_batch_size is None and config.batched:
            chosen = replace(chosen, max_batch_size=tuning.max_batch_size)
        return chosen, runners, tuning


def _decoding(
    overrides: ModelOverrides, pre: BoundPreprocess | None, runner: OnnxRunner
) -> tuple[DecodeChoice | None, DeviceImageDecoder | None]:
    """Where encoded images are decoded (`decode`), from the provider actually running."""
    if pre is None:
        return None, None
    choice = choose_decode(overrides.decode or AUTO, runner.provider)
    if choice.kind == "cpu":
        return choice, None
    # On CUDA the decoder runs on the model's device; elsewhere (only in tests, which
    # exercise the plumbing on the CPU) on the CPU.
    device_id = DeviceRequest.parse(overrides.device or AUTO).index
    return choice, DeviceImageDecoder(pre, device_id if runner.provider == CUDA else None)


def _log_loaded(
    config: ModelConfig,
    version: int,
    runners: Sequence[OnnxRunner],
    warmed: Sequence[int],
    pre: BoundPreprocess | None,
    tuning: Tuning | None,
    decode: DecodeChoice | None,
) -> None:
    first = runners[0]
    if tuning is not None:
        log.info("model %s version %d: instances auto: %s", config.name, version, tuning.summary())
    if decode is not None:
        log.info(
            "model %s version %d: encoded images decoded on the %s (%s)",
            config.name,
            version,
            decode.kind,
            decode.chosen_by,
        )
    solo = f" + a solo instance x {runners[-1].intra_op_threads}" if config.solo_instance else ""
    log.info(
        "model %s version %d: provider %s (available %s), io binding %s, "
        "%d instance(s) x %d threads%s, max_batch_size %d, warmed at %s, inputs %s, "
        "preprocessing %s",
        config.name,
        version,
        first.provider,
        first.providers,
        first.io_binding,
        len(runners) - config.solo_instance,
        first.intra_op_threads,
        solo,
        config.max_batch_size,
        list(warmed),
        [(s.name, s.datatype, config.full_shape(s)) for s in config.inputs],
        pre.spec if pre else None,
    )
