"""Every Prometheus metric, defined once, on an injected registry.

Names are prefixed `cnnserve_`, in base units (seconds), labelled by `model` and `version`
(plus `code` or `reason` where it applies; never request ids). Requests for model names
the server does not serve are counted under model="" so a client cannot grow the label set.
The same observations feed Triton's ModelStatistics RPC (`ModelStats`), so Prometheus and
tritonclient users see the same numbers.

Histogram buckets resolve 100 us to 10 s (durations) and the powers of two up to 1024
(batch sizes; any max_batch_size up to 1024 gets its own buckets).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily

from service.batching.batcher import BatchRecord
from service.runtime.scheduler import Scheduler

DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024
UNKNOWN_MODEL = ""
# The `outcome` label of cnnserve_batch_reruns_total.
RESCUED = "rescued"
FAILED_AGAIN = "failed"


class LoopHistogram:
    """One labelled histogram series, written by a single thread (the event loop's).

    prometheus_client's Histogram takes a lock per bucket increment; measured in-process,
    instrumentation with it cost ~7 us of a ~54 us request. Every cnnserve observation
    happens on the event loop's thread, so counts live in a plain list: observe is a bisect
    and two additions. Counts are stored per bucket and made cumulative at scrape time, so
    a scrape racing an observation still sees monotonic buckets (at worst `_sum` lags by
    one observation).
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class LoopHistograms:
    """A histogram family of LoopHistogram series, exposed through a registry collector."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.buckets = buckets
        self._series: dict[tuple[str, ...], LoopHistogram] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopHistogram:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = LoopHistogram(self.buckets)
        return series

    def remove_matching(self, *prefix: str) -> None:
        """Drop every series whose first label values are `prefix` (a retired version)."""
        for values in [v for v in self._series if v[: len(prefix)] == prefix]:
            del self._series[values]

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [repr(float(b)) for b in self.buckets] + ["+Inf"]  # le="0.005", "1.0"
        for values, series in list(self._series.items()):
            cumulative, running = [], 0
            for bound, count in zip(bounds, list(series.counts), strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric(list(values), cumulative, series.total)
        yield family


@dataclass
class Duration:
    """Triton's StatisticDuration: a count and a total in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)


@dataclass
class BatchStats:
    compute_infer: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Cumulative statistics of one model version, as Triton's ModelStatistics reports them."""

    last_inference_ms: int = 0
    inference_count: int = 0  # rows of successful requests
    execution_count: int = 0  # batches run
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    # No lock: every writer (request end, batch end) and the ModelStatistics RPC run on the
    # event loop's thread, one at a time.


class Metrics:
    def __init__(self, registry: CollectorRegistry, *, process: bool = True) -> None:
        self.registry = registry
        self._define_histograms(registry)
        self._define_gauges(registry)
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self._stats: dict[tuple[str, str], ModelStats] = {}
        # Labelled children by (model, version, code, protocol): `.labels()` costs as much
        # as the observation itself, and this runs once per request.
        self._request_children: dict[tuple[str, str, str, str], LoopHistogram] = {}
        # The ModelMetrics that currently owns each (model, version) series: a reload of the
        # same version number hands them to the new one, and the old one must leave them be.
        self._owners: dict[tuple[str, str], ModelMetrics] = {}

    def _define_histograms(self, registry: CollectorRegistry) -> None:
        labels = ("model", "version")
        self.request_duration = LoopHistograms(
            "cnnserve_request_duration_seconds",
            "Inference time on the server, from receipt to response, by status code (gRPC's "
            "names, for HTTP too) and protocol (grpc, http)",
            (*labels, "code", "protocol"),
            DURATION_BUCKETS,
            registry,
        )
        self.queue_duration = LoopHistograms(
            "cnnserve_queue_duration_seconds",
            "Time a request waited in the batcher queue, from enqueue to the start of its batch",
            labels,
            DURATION_BUCKETS,
            registry,
        )
        self.compute_duration = LoopHistograms(
            "cnnserve_compute_duration_seconds",
            "onnxruntime time per batch (including the in-graph preprocessing)",
            labels,
            DURATION_BUCKETS,
            registry,
        )
        self.decode_duration = LoopHistograms(
            "cnnserve_decode_duration_seconds",
            "Time to decode and resize a request's encoded images (outside the model graph)",
            labels,
            DURATION_BUCKETS,
            registry,
        )
        self.batch_size = LoopHistograms(
            "cnnserve_batch_size", "Rows per executed batch", labels, BATCH_BUCKETS, registry
        )

    def _define_gauges(self, registry: CollectorRegistry) -> None:
        labels = ("model", "version")
        self.queue_depth = Gauge(
            "cnnserve_queue_depth", "Rows waiting in the batcher queue", labels, registry=registry
        )
        self.queue_capacity = Gauge(
            "cnnserve_queue_capacity",
            "Rows the batcher queue holds before refusing (max_queue_size)",
            labels,
            registry=registry,
        )
        self.inflight_batches = Gauge(
            "cnnserve_inflight_batches",
            "Batches running in onnxruntime now",
            labels,
            registry=registry,
        )
        self.rejections = Counter(
            "cnnserve_rejections_total",
            "Requests refused or dropped before compute, by reason",
            (*labels, "reason"),
            registry=registry,
        )
        self.batch_failures = Counter(
            "cnnserve_batch_failures",
            "Batches of several requests that failed in the runtime; each of their requests "
            "was then run alone once (cnnserve_batch_reruns_total)",
            labels,
            registry=registry,
        )
        self.batch_reruns = Counter(
            "cnnserve_batch_reruns",
            "Requests of a failed batch run alone, by outcome: rescued (answered) or failed",
            (*labels, "outcome"),
            registry=registry,
        )
        self.model_ready = Gauge(
            "cnnserve_model_ready",
            "1 if the model version serves, else 0",
            labels,
            registry=registry,
        )
        self.model_load_duration = Gauge(
            "cnnserve_model_load_duration_seconds",
            "Time to load and warm up the model version",
            labels,
            registry=registry,
        )

    def stats(self, model: str, version: str) -> ModelStats:
        key = (model, version)
        found = self._stats.get(key)
        if found is None:
            found = self._stats[key] = ModelStats()
        return found

    def all_stats(self) -> dict[tuple[str, str], ModelStats]:
        return dict(self._stats)

    def for_model(self, model: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, model, version)

    def owns(self, bound: ModelMetrics) -> bool:
        return self._owners.get((bound.model, bound.version)) is bound

    def activate(self, bound: ModelMetrics) -> None:
        """`bound` now serves: its (model, version) series are its own (a reload of the same
        version number takes them over from the version it replaces)."""
        self._owners[(bound.model, bound.version)] = bound

    def release(self, owner: ModelMetrics, *, keep_ready_zero: bool) -> None:
        """A retired version's series go: its gauge callbacks (which hold its scheduler and
        through it the onnxruntime sessions), its histograms, counters and statistics. With
        `keep_ready_zero` (an unload, a failure) `cnnserve_model_ready` stays, reading 0, so
        alerts on a model out of service keep firing: one series per model, not per version."""
        key = (owner.model, owner.version)
        current = self._owners.get(key)
        if current is not None and current is not owner:
            return  # a newer load of the same version number owns these series now
        self._owners.pop(key, None)
        for gauge in (
            self.queue_depth,
            self.queue_capacity,
            self.inflight_batches,
            self.model_load_duration,
        ):
            with suppress(KeyError):
                gauge.remove(*key)
        for reason in owner.rejection_reasons:
            with suppress(KeyError):
                self.rejections.remove(*key, reason)
        with suppress(KeyError):
            self.batch_failures.remove(*key)
        for outcome in (RESCUED, FAILED_AGAIN):
            with suppress(KeyError):
                self.batch_reruns.remove(*key, outcome)
        for family in (
            self.request_duration,
            self.queue_duration,
            self.compute_duration,
            self.decode_duration,
            self.batch_size,
        ):
            family.remove_matching(*key)
        for child in [c for c in self._request_children if c[:2] == key]:
            del self._request_children[child]
        self._stats.pop(key, None)
        if keep_ready_zero:
            self.model_ready.labels(*key).set(0)
        else:
            with suppress(KeyError):
                self.model_ready.remove(*key)

    def request_finished(
        self, model: str, version: str, code: str, protocol: str, seconds: float
    ) -> None:
        key = (model, version, code, protocol)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.request_duration.labels(*key)
        child.observe(seconds)


class ModelMetrics:
    """The metrics of one model version, with its labels bound (what the batcher calls)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self.metrics = metrics
        self.model = model
        self.version = version
        self.stats = metrics.stats(model, version)
        self._queue_wait = metrics.queue_duration.labels(model, version)
        self._compute = metrics.compute_duration.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        self._decode = metrics.decode_duration.labels(model, version)
        self.rejection_reasons: set[str] = set()

    def activate(self, scheduler: Scheduler, load_seconds: float) -> None:
        """The version serves: queue gauges read at scrape time (no cost per request; the
        callbacks hold the scheduler until `release` removes them), load time, ready."""
        self.metrics.activate(self)
        labels = (self.model, self.version)
        self.metrics.model_load_duration.labels(*labels).set(load_seconds)
        self.metrics.model_ready.labels(*labels).set(1)
        self.metrics.queue_capacity.labels(*labels).set(scheduler.queue_capacity)
        self.metrics.queue_depth.labels(*labels).set_function(lambda: scheduler.queued_rows)
        self.metrics.inflight_batches.labels(*labels).set_function(lambda: scheduler.busy_instances)

    def release(self, *, keep_ready_zero: bool = False) -> None:
        """This version is retired: see `Metrics.release`."""
        self.metrics.release(self, keep_ready_zero=keep_ready_zero)

    def not_ready(self) -> None:
        """Out of service (draining before retirement); a no-op when a newer load of the
        same version number serves under these labels."""
        if self.metrics.owns(self):
            self.metrics.model_ready.labels(self.model, self.version).set(0)

    def batch(self, record: BatchRecord) -> None:
        """Queue wait (enqueue -> batch start), compute time and size of one executed batch."""
        self._batch_size.observe(record.rows)
        self._compute.observe(record.compute_s)
        for wait in record.queue_waits_s:
            self._queue_wait.observe(wait)
        stats = self.stats
        stats.execution_count += 1
        for wait in record.queue_waits_s:  # per request, as Triton counts inference_stats
            stats.queue.add(wait)
            stats.compute_infer.add(record.compute_s)
        batch = stats.batches.setdefault(record.rows, BatchStats())
        batch.compute_infer.add(record.compute_s)

    def batch_failed(self) -> None:
        self.metrics.batch_failures.labels(self.model, self.version).inc()

    def rerun(self, rescued: bool) -> None:
        outcome = RESCUED if rescued else FAILED_AGAIN
        self.metrics.batch_reruns.labels(self.model, self.version, outcome).inc()

    def rejected(self, reason: str) -> None:
        self.rejection_reasons.add(reason)
        self.metrics.rejections.labels(self.model, self.version, reason).inc()

    def decoded(self, seconds: float) -> None:
        self._decode.observe(seconds)

    def finished(self, ok: bool, rows: int, seconds: float) -> None:
        stats = self.stats
        if ok:
            stats.success.add(seconds)
            stats.inference_count += rows
            stats.last_inference_ms = int(time.time() * 1000)  # wall clock: Triton's field
        else:
            stats.fail.add(seconds)
