"""The model repository: discover models, pick versions, load them, look them up.

Layout: `<root>/<model>/<version>/model.onnx` with optional `<root>/<model>/config.yaml`
and `<root>/<model>/labels.txt`. Versions are positive integers; the highest is served.
A model that fails to load is kept in the index as UNAVAILABLE with its reason, and every
other model serves.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import onnx

from service.batcher import BatchObserver, BatchPolicy, DynamicBatcher
from service.config import ModelConfig, ModelOverrides, load_model_overrides
from service.errors import CnnserveError, ModelLoadError, NotFound, Unavailable
from service.metrics import Metrics
from service.model import ServedModel
from service.preprocess import BoundPreprocess, attach, bind, parse_preprocessing
from service.runtime import OnnxRunner, default_intra_op_threads
from service.scheduler import Scheduler
from service.signature import infer_config, onnx_signature
from service.warmup import warm_up

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
# Model names become folder names: refuse anything that could leave the repository root.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

SchedulerFactory = Callable[[ModelConfig, Sequence[OnnxRunner], BatchObserver | None], Scheduler]


def batch_policy(config: ModelConfig, *, batching: bool = True) -> BatchPolicy:
    """The batcher's policy from a model config. batching=False (or an unbatched model):
    every request runs alone, as sent, through the same queue and backpressure."""
    merge = batching and config.batched
    batching_config = config.dynamic_batching
    return BatchPolicy(
        max_batch_size=max(1, config.max_batch_size),
        max_queue_size=batching_config.max_queue_size,
        max_queue_delay_s=batching_config.max_queue_delay_us / 1e6,
        preferred_batch_sizes=batching_config.preferred_batch_sizes,
        merge=merge,
    )


def scheduler_factory(*, batching: bool = True) -> SchedulerFactory:
    def make(
        config: ModelConfig, runners: Sequence[OnnxRunner], observer: BatchObserver | None
    ) -> Scheduler:
        return DynamicBatcher(
            runners, batch_policy(config, batching=batching), name=config.name, observer=observer
        )

    return make


default_scheduler = scheduler_factory()


class ModelState(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelEntry:
    name: str
    reason: str = ""
    versions: list[int] = field(default_factory=list)
    served: ServedModel | None = None

    @property
    def state(self) -> ModelState:
        return ModelState.READY if self.served is not None else ModelState.UNAVAILABLE


def valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name)) and ".." not in name


def discover_versions(model_dir: Path) -> list[int]:
    versions = []
    for child in model_dir.iterdir():
        numbered = child.is_dir() and child.name.isdigit() and int(child.name) > 0
        if numbered and (child / MODEL_FILE).is_file():
            versions.append(int(child.name))
    return sorted(versions)


def read_labels(model_dir: Path) -> tuple[str, ...]:
    path = model_dir / LABELS_FILE
    if not path.is_file():
        return ()
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


@dataclass(frozen=True)
class PreprocessedGraph:
    config: ModelConfig  # image input as clients send it (UINT8 pixels or BYTES)
    preprocess: BoundPreprocess
    graph: bytes  # the model with the preprocessing subgraph in front


def preprocessed_graph(name: str, path: Path, overrides: ModelOverrides) -> PreprocessedGraph:
    """Bind the `preprocessing` key to the model and splice its subgraph into the graph."""
    assert overrides.preprocessing is not None
    spec = parse_preprocessing(name, overrides.preprocessing)
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise ModelLoadError(f"cannot read {path.name}: {exc}") from exc
    config = overrides.apply(infer_config(name, *onnx_signature(proto)))
    pre = bind(name, spec, config.inputs, config.batched)
    graph = attach(proto, pre).SerializeToString()
    client = pre.client_spec
    if not config.batched:  # the model's fixed batch of 1 stays in the declared shape
        client = replace(client, dims=(1, *client.dims))
    inputs = tuple(client if s.name == pre.input_name else s for s in config.inputs)
    config = replace(config, inputs=inputs, encoded_inputs=(pre.input_name,))
    return PreprocessedGraph(config, pre, graph)


def load_model(
    model_dir: Path,
    version: int,
    make_scheduler: SchedulerFactory,
    metrics: Metrics | None = None,
    ort_spinning: bool = False,
) -> ServedModel:
    """Blocking: build the sessions and config, warm up. Call from a thread."""
    started = time.monotonic()
    name = model_dir.name
    overrides = load_model_overrides(name, model_dir / CONFIG_FILE)
    path = model_dir / str(version) / MODEL_FILE
    prepared = (
        preprocessed_graph(name, path, overrides) if overrides.preprocessing is not None else None
    )
    instances = overrides.instances or 1
    # One session per instance, each with its share of the cores: concurrent runs on one
    # shared session would contend for a single intra-op thread pool.
    runners = [
        OnnxRunner(
            path,
            model_bytes=prepared.graph if prepared else None,
            device=overrides.device or "auto",
            intra_op_threads=default_intra_op_threads(instances),
            provider_options=overrides.provider_options,
            spin=ort_spinning,
        )
        for _ in range(instances)
    ]
    first = runners[0]
    if prepared is None:
        config = overrides.apply(infer_config(name, first.inputs(), first.outputs()))
    else:
        config = prepared.config
    pre = prepared.preprocess if prepared else None
    warmed = warm_up(runners, config)
    log.info(
        "model %s version %d: provider %s (available %s), %d instance(s) x %d threads, "
        "max_batch_size %d, warmed at %s, inputs %s, preprocessing %s",
        name,
        version,
        first.provider,
        first.providers,
        instances,
        first.intra_op_threads,
        config.max_batch_size,
        warmed,
        [(s.name, s.datatype, config.full_shape(s)) for s in config.inputs],
        pre.spec if pre else None,
    )
    model_metrics = metrics.for_model(name, str(version)) if metrics is not None else None
    scheduler = make_scheduler(config, runners, model_metrics)
    if model_metrics is not None:
        if isinstance(scheduler, DynamicBatcher):
            batcher = scheduler
            model_metrics.track_queue(
                lambda: batcher.queued_rows,
                lambda: batcher.busy_instances,
                batcher.policy.max_queue_size,
            )
        model_metrics.loaded(time.monotonic() - started)
    return ServedModel(
        config=config,
        version=version,
        runners=runners,
        scheduler=scheduler,
        labels=read_labels(model_dir),
        preprocess=pre,
        metrics=model_metrics,
    )


class ModelRepository:
    def __init__(
        self,
        root: Path,
        make_scheduler: SchedulerFactory = default_scheduler,
        metrics: Metrics | None = None,
        ort_spinning: bool = False,
    ) -> None:
        self.root = root.resolve()
        self._make_scheduler = make_scheduler
        self.metrics = metrics
        self._ort_spinning = ort_spinning
        self._entries: dict[str, ModelEntry] = {}

    async def load_all(self) -> None:
        if not self.root.is_dir():
            raise NotFound(f"model repository {self.root} is not a directory")
        for model_dir in sorted(self.root.iterdir()):
            if model_dir.is_dir() and not model_dir.name.startswith("."):
                self._entries[model_dir.name] = await self._load_entry(model_dir)

    async def _load_entry(self, model_dir: Path) -> ModelEntry:
        name = model_dir.name
        if not valid_model_name(name):
            return ModelEntry(name, f"invalid model name '{name}'")
        versions = discover_versions(model_dir)
        if not versions:
            reason = f"no version folder with {MODEL_FILE} under {model_dir}"
            log.error("model %s not loaded: %s", name, reason)
            return ModelEntry(name, reason, versions)
        version = versions[-1]
        try:
            served = await asyncio.to_thread(
                load_model,
                model_dir,
                version,
                self._make_scheduler,
                self.metrics,
                self._ort_spinning,
            )
            await served.start()
        except CnnserveError as exc:
            log.error("model %s version %d not loaded: %s", name, version, exc.message)
            if self.metrics is not None:
                self.metrics.model_ready.labels(name, str(version)).set(0)
            return ModelEntry(name, exc.message, versions)
        return ModelEntry(name, "", versions, served)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def entry(self, name: str) -> ModelEntry:
        found = self._entries.get(name)
        if found is None:
            raise NotFound(f"unknown model '{name}'; the repository serves {sorted(self._entries)}")
        return found

    def get(self, name: str, version: str = "") -> ServedModel:
        """The served model for a request, or NotFound / Unavailable saying why not."""
        entry = self.entry(name)
        if entry.served is None:
            raise Unavailable(f"model '{name}' is not ready: {entry.reason}")
        served = entry.served
        if version and version != str(served.version):
            raise NotFound(
                f"model '{name}' version '{version}' is not served (served version: "
                f"{served.version})"
            )
        return served

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except CnnserveError:
            return False
        return True

    async def aclose(self) -> None:
        for entry in self._entries.values():
            if entry.served is not None:
                await entry.served.aclose()
