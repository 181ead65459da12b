"""The model repository: discover models, pick versions, load them, look them up.

Layout: `<root>/<model>/<version>/model.onnx` with optional `<root>/<model>/config.yaml`
and `<root>/<model>/labels.txt`. Versions are positive integers; the highest is served.
A model that fails to load is kept in the index as UNAVAILABLE with its reason, and every
other model serves. Model names are folder names: a name that is not a plain folder name,
or that resolves outside the root, is refused.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import onnx

from service.batcher import BatchObserver, BatchPolicy, DynamicBatcher
from service.config import ModelConfig, ModelOverrides, load_model_overrides
from service.errors import (
    CnnserveError,
    FailedPrecondition,
    InvalidArgument,
    ModelLoadError,
    NotFound,
    Unavailable,
)
from service.heap import release_free_heap
from service.metrics import Metrics
from service.model import ServedModel
from service.preprocess import BoundPreprocess, attach, bind, parse_preprocessing
from service.runtime import CUDA, OnnxRunner, default_intra_op_threads
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


class ControlMode(StrEnum):
    """Triton's model control modes. NONE: what loads at start serves until exit.
    EXPLICIT: RepositoryModelLoad/Unload (tritonclient's load_model/unload_model).
    POLL: the repository is rescanned every poll interval; new versions load by themselves."""

    NONE = "none"
    EXPLICIT = "explicit"
    POLL = "poll"


# A version's files as last seen: (path, mtime_ns, size) of model.onnx and config.yaml.
FileStamp = tuple[tuple[str, int, int], ...]
ModelListener = Callable[[str, bool], Awaitable[None]]


@dataclass
class ModelEntry:
    name: str
    reason: str = ""
    served: ServedModel | None = None
    stamp: FileStamp = ()  # of the served version's files
    # Versions that failed to load, with why, and the files that failed (not retried by the
    # poller until they change).
    failures: dict[int, tuple[str, FileStamp]] = field(default_factory=dict)

    @property
    def state(self) -> ModelState:
        return ModelState.READY if self.served is not None else ModelState.UNAVAILABLE


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: ModelState
    reason: str


def valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name)) and ".." not in name


def file_stamp(model_dir: Path, version: int) -> FileStamp:
    stamps = []
    for path in (model_dir / str(version) / MODEL_FILE, model_dir / CONFIG_FILE):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


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
            io_binding=overrides.io_binding,
        )
        for _ in range(instances)
    ]
    first = runners[0]
    if prepared is None:
        config = overrides.apply(infer_config(name, first.inputs(), first.outputs()))
    else:
        config = prepared.config
    pre = prepared.preprocess if prepared else None
    # On CUDA every batch size gets its cuDNN algorithm search at load, not on a request.
    warmed = warm_up(runners, config, every_size=first.provider == CUDA)
    log.info(
        "model %s version %d: provider %s (available %s), io binding %s, "
        "%d instance(s) x %d threads, "
        "max_batch_size %d, warmed at %s, inputs %s, preprocessing %s",
        name,
        version,
        first.provider,
        first.providers,
        first.io_binding,
        instances,
        first.intra_op_threads,
        config.max_batch_size,
        warmed,
        [(s.name, s.datatype, config.full_shape(s)) for s in config.inputs],
        pre.spec if pre else None,
    )
    model_metrics = metrics.for_model(name, str(version)) if metrics is not None else None
    scheduler = make_scheduler(config, runners, model_metrics)
    return ServedModel(
        config=config,
        version=version,
        runners=runners,
        scheduler=scheduler,
        labels=read_labels(model_dir),
        preprocess=pre,
        metrics=model_metrics,
        load_seconds=time.monotonic() - started,
    )


class ModelRepository:
    """The models served, by name; loads, reloads and unloads them.

    A new version is loaded and warmed beside the one serving, then swapped in at once
    (one assignment on the event loop). Requests hold a lease on the version they started
    on, so the old one is closed only after its last request has finished. A version that
    fails to load leaves the one serving in place, with the failure in `index()`.
    """

    def __init__(
        self,
        root: Path,
        make_scheduler: SchedulerFactory = default_scheduler,
        metrics: Metrics | None = None,
        ort_spinning: bool = False,
        control_mode: ControlMode = ControlMode.NONE,
        on_change: ModelListener | None = None,
    ) -> None:
        self.root = root.resolve()
        self._make_scheduler = make_scheduler
        self.metrics = metrics
        self._ort_spinning = ort_spinning
        self.control_mode = control_mode
        self._on_change = on_change
        self._entries: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.polls = 0  # completed rescans (poll mode)
        self._polled = asyncio.Condition()

    async def load_all(self) -> None:
        if not self.root.is_dir():
            raise NotFound(f"model repository {self.root} is not a directory")
        for model_dir in sorted(self.root.iterdir()):
            if model_dir.is_dir() and not model_dir.name.startswith("."):
                await self._load_logged(model_dir.name)

    async def _load_logged(self, name: str) -> None:
        """Load at start-up or on a poll: a failure is recorded and logged, not raised."""
        try:
            await self.load(name)
        except CnnserveError as exc:
            log.error("%s", exc.message)
            self._entries.setdefault(name, ModelEntry(name, exc.message))

    def model_dir(self, name: str) -> Path:
        """The folder of model `name`, refusing any name that could leave the root."""
        path = self._checked_path(name)
        if not path.is_dir():
            raise NotFound(f"no model folder '{name}' in the model repository {self.root}")
        return path

    def _checked_path(self, name: str) -> Path:
        if not valid_model_name(name):
            raise InvalidArgument(
                f"invalid model name {name!r}: use letters, digits, '_', '.' and '-' "
                "(no path separators, no '..', at most 128 characters)"
            )
        path = self.root / name
        if not path.resolve().is_relative_to(self.root):  # a symlink pointing outside
            raise InvalidArgument(f"model '{name}' resolves outside the model repository")
        return path

    def check_control(self, action: str) -> None:
        if self.control_mode is not ControlMode.EXPLICIT:
            raise FailedPrecondition(
                f"cannot {action} models: model control mode is '{self.control_mode.value}' "
                "(start the server with --model-control-mode explicit)"
            )

    async def load(self, name: str) -> None:
        """Load (or reload) the highest version of `name`; raise why if it cannot."""
        model_dir = self.model_dir(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self._entries.setdefault(name, ModelEntry(name))
            versions = discover_versions(model_dir)
            if not versions:
                entry.reason = f"no version folder with {MODEL_FILE} under {model_dir}"
                raise ModelLoadError(f"model {name} not loaded: {entry.reason}")
            version = versions[-1]
            stamp = file_stamp(model_dir, version)
            served = entry.served
            if served is not None and served.version == version and entry.stamp == stamp:
                return  # already serving exactly these files
            try:
                fresh = await asyncio.to_thread(
                    load_model,
                    model_dir,
                    version,
                    self._make_scheduler,
                    self.metrics,
                    self._ort_spinning,
                )
                await self._start(fresh)
            except CnnserveError as exc:
                entry.failures[version] = (exc.message, stamp)
                if served is None:
                    entry.reason = exc.message
                    if self.metrics is not None:
                        self.metrics.model_ready.labels(name, str(version)).set(0)
                keeps = f"; version {served.version} keeps serving" if served else ""
                raise ModelLoadError(
                    f"model {name} version {version} not loaded: {exc.message}{keeps}"
                ) from exc
            entry.served, entry.stamp, entry.reason = fresh, stamp, ""
            entry.failures.pop(version, None)
            if fresh.metrics is not None:
                fresh.metrics.activate(fresh.scheduler, fresh.load_seconds)
            fresh.scheduler.add_failure_listener(
                lambda reason: self._scheduler_failed(name, version, reason)
            )
            log.info("model %s version %d serving", name, version)
            await self._notify(name, True)
            if served is not None:
                self._retire_later(served, out_of_service=False)

    @staticmethod
    async def _start(fresh: ServedModel) -> None:
        """Start a loaded version; one that cannot start releases what it holds."""
        try:
            await fresh.start()
        except BaseException:
            await fresh.aclose()
            if fresh.metrics is not None:
                fresh.metrics.release()
            raise

    def _scheduler_failed(self, name: str, version: int, reason: str) -> None:
        """The serving version's scheduler died (it has failed its queued requests and
        refuses new ones): take it out of service with the reason, as a failed load would.
        Poll mode retries it only once its files change; explicit mode on the next load."""
        entry = self._entries.get(name)
        served = None if entry is None else entry.served
        if entry is None or served is None or served.version != version:
            return
        entry.served, entry.reason = None, reason
        entry.failures[version] = (reason, entry.stamp)
        entry.stamp = ()
        self._track(self._notify(name, False))
        self._retire_later(served, out_of_service=True)

    async def unload(self, name: str, reason: str = "unloaded") -> None:
        """Stop serving `name`: new requests get UNAVAILABLE; accepted ones finish first."""
        self._checked_path(name)  # the same name checks as load
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.entry(name)
            served, entry.served, entry.stamp = entry.served, None, ()
            entry.reason = reason
            await self._notify(name, False)
            if served is not None:
                await self._retire(served, out_of_service=True)
        log.info("model %s unloaded", name)

    async def poll_once(self) -> None:
        """Rescan the root: load new models and changed versions, unload removed models.
        A version that failed is retried only once its files change."""
        present = {d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")}
        for name in sorted(present):
            if not valid_model_name(name):
                continue
            entry = self._entries.get(name)
            versions = discover_versions(self.root / name)
            if not versions:
                continue
            stamp = file_stamp(self.root / name, versions[-1])
            if entry is not None:
                serving = entry.served is not None and entry.served.version == versions[-1]
                failed = entry.failures.get(versions[-1])
                if (serving and entry.stamp == stamp) or (failed and failed[1] == stamp):
                    continue
            await self._load_logged(name)
        for name, entry in list(self._entries.items()):
            if name not in present and entry.served is not None:
                await self.unload(name, "removed from the model repository")
        async with self._polled:
            self.polls += 1
            self._polled.notify_all()

    async def wait_for_polls(self, count: int) -> None:
        """Until `count` rescans have completed (for observers: tests, tools)."""
        async with self._polled:
            await self._polled.wait_for(lambda: self.polls >= count)

    async def poll_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)  # the poll period itself, not synchronisation
            try:
                await self.poll_once()
            except OSError as exc:  # the repository folder vanished or is unreadable
                log.error("model repository poll failed: %s", exc)

    async def _notify(self, name: str, ready: bool) -> None:
        if self._on_change is not None:
            await self._on_change(name, ready)

    def _track(self, work: Awaitable[None]) -> None:
        """Background work owned by the repository (awaited by `aclose`)."""
        task = asyncio.ensure_future(work)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _retire_later(self, served: ServedModel, *, out_of_service: bool) -> None:
        self._track(self._retire(served, out_of_service=out_of_service))

    async def _retire(self, served: ServedModel, *, out_of_service: bool) -> None:
        """Close a version once its last request is done, and release everything it held:
        sessions, threads, metric series (DESIGN.md rule 10). `out_of_service`: no version
        replaces it (unload, failure), so its ready gauge stays, reading 0."""
        metrics = served.metrics
        if metrics is not None:
            metrics.not_ready()
        await served.retire()  # closes its sessions (their memory is freed) and threads
        await asyncio.to_thread(release_free_heap)
        if metrics is not None:  # last: its series leaving /metrics says retirement is done
            metrics.release(keep_ready_zero=out_of_service)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Per model and version: READY, or UNAVAILABLE with the reason (Triton's index)."""
        rows: list[IndexEntry] = []
        for name, entry in sorted(self._entries.items()):
            served = entry.served
            if served is not None:
                rows.append(IndexEntry(name, str(served.version), ModelState.READY, ""))
            if ready_only:
                continue
            for version, (reason, _) in sorted(entry.failures.items()):
                if served is None or version != served.version:
                    rows.append(IndexEntry(name, str(version), ModelState.UNAVAILABLE, reason))
            if served is None and not entry.failures:
                rows.append(IndexEntry(name, "", ModelState.UNAVAILABLE, entry.reason))
        return rows

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

    @contextmanager
    def lease(self, name: str, version: str = "") -> Iterator[ServedModel]:
        """The served model, held until the block ends: a swap or unload meanwhile waits
        for this request before closing the version it runs on."""
        served = self.get(name, version)
        served.acquire()
        try:
            yield served
        finally:
            served.release()

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except CnnserveError:
            return False
        return True

    async def wait_retired(self) -> None:
        """Until every version taken out of service has been closed and released."""
        while self._retiring:
            await asyncio.gather(*self._retiring)

    async def aclose(self) -> None:
        await self.wait_retired()
        for entry in self._entries.values():
            if entry.served is not None:
                await entry.served.aclose()
