"""What the supervisor answers for its workers: their metrics as one scrape, their
statistics summed, their repository indexes agreed. Pure functions over what each worker
answered, keyed by the worker's slot (0 .. N-1; a replaced worker keeps its slot).

Metrics, the rule: counters, histograms and summaries are summed per label set (a request
count or a latency histogram of N processes is the sum of theirs); every other family
(gauges: queue depth, model ready, RSS, ...) keeps one series per worker under a `worker`
label, because a sum would lie for some of them (a device-wide GPU memory gauge read by
every worker, `model_ready`), and PromQL's sum() gives the total where it is one. A counter
must never go down, so the supervisor carries a replaced worker's last scraped counts
(`countable_samples`) into every later sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.metrics_core import Metric

WORKER_LABEL = "worker"
SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})
# A sample's identity across workers: family, sample name, sorted labels.
SampleKey = tuple[str, str, tuple[tuple[str, str], ...]]


def _key(family: Metric, name: str, labels: Mapping[str, str]) -> SampleKey:
    return (family.name, name, tuple(sorted(labels.items())))


def countable_samples(families: Iterable[Metric]) -> dict[SampleKey, float]:
    """The summed families' samples: what a dead worker had counted. (A counter's
    `_created` timestamp is a gauge family of its own in the text format: per worker.)"""
    return {
        _key(family, sample.name, sample.labels): sample.value
        for family in families
        if family.type in SUMMED_TYPES
        for sample in family.samples
    }


def merge_metrics(
    per_worker: Mapping[int, Sequence[Metric]], carried: Mapping[SampleKey, float]
) -> list[Metric]:
    """One set of families from every worker's scrape, plus the counts `carried` over from
    replaced workers."""
    merged: dict[str, Metric] = {}
    sums: dict[SampleKey, float] = dict(carried)
    for slot, families in sorted(per_worker.items()):
        for family in families:
            target = merged.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            if family.type not in SUMMED_TYPES:
                for sample in family.samples:
                    labels = {**sample.labels, WORKER_LABEL: str(slot)}
                    target.add_sample(sample.name, labels, sample.value)
                continue
            for sample in family.samples:
                key = _key(family, sample.name, sample.labels)
                sums[key] = sums.get(key, 0.0) + sample.value
    for (family_name, sample_name, label_pairs), value in sorted(sums.items()):
        summed = merged.get(family_name)
        if summed is not None:  # a carried family no live worker reports is dropped
            summed.add_sample(sample_name, dict(label_pairs), value)
    return list(merged.values())


def requests_per_worker(per_worker: Mapping[int, Sequence[Metric]]) -> dict[int, float]:
    """Inferences each live worker has answered (its request-duration count): shows how
    the kernel spread the connections."""
    counts: dict[int, float] = {}
    for slot, families in per_worker.items():
        counts[slot] = sum(
            sample.value
            for family in families
            if family.name == "cnnserve_request_duration_seconds"
            for sample in family.samples
            if sample.name.endswith("_count")
        )
    return counts


def sum_statistics(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Triton's ModelStatisticsResponse (JSON, int64s as numbers) of every worker as one:
    counts and nanoseconds added per model version and batch size; last_inference the
    latest."""
    models: dict[tuple[str, str], dict[str, Any]] = {}
    for answer in answers:
        for stats in answer.get("model_stats", []):
            key = (stats.get("name", ""), stats.get("version", ""))
            models[key] = _added(models[key], stats) if key in models else dict(stats)
    return {"model_stats": [models[key] for key in sorted(models)]}


def _added(left: Mapping[str, Any], right: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(left)
    for field, value in right.items():
        mine = left.get(field)
        if mine is None:
            result[field] = value
        elif field == "last_inference":
            result[field] = max(mine, value)
        elif field == "batch_stats":
            by_size = {entry["batch_size"]: entry for entry in mine}
            for entry in value:
                size = entry["batch_size"]
                by_size[size] = _added(by_size[size], entry) if size in by_size else entry
            result[field] = [by_size[size] for size in sorted(by_size)]
        elif isinstance(value, Mapping):
            result[field] = _added(mine, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            result[field] = mine if field == "batch_size" else mine + value
    return result


def agree_index(per_worker: Mapping[int, Sequence[Mapping[str, str]]]) -> list[dict[str, str]]:
    """The repository index every worker agrees on. A row is READY only where it is READY on
    every worker; otherwise it is UNAVAILABLE and its reason names who differs."""
    rows: dict[tuple[str, str], dict[int, Mapping[str, str]]] = {}
    for slot, index in per_worker.items():
        for row in index:
            rows.setdefault((row["name"], row["version"]), {})[slot] = row
    agreed: list[dict[str, str]] = []
    for (name, version), seen in sorted(rows.items()):
        states = {(row["state"], row.get("reason", "")) for row in seen.values()}
        if len(states) == 1 and len(seen) == len(per_worker):
            state, reason = states.pop()
        else:
            state, reason = "UNAVAILABLE", _disagreement(seen, per_worker)
        agreed.append({"name": name, "version": version, "state": state, "reason": reason})
    return agreed


def _disagreement(seen: Mapping[int, Mapping[str, str]], per_worker: Mapping[int, object]) -> str:
    parts = []
    for slot in sorted(per_worker):
        row = seen.get(slot)
        if row is None:
            parts.append(f"worker {slot}: absent")
        else:
            reason = row.get("reason", "")
            parts.append(f"worker {slot}: {row['state']}" + (f" ({reason})" if reason else ""))
    return "the workers differ: " + "; ".join(parts)
