"""The supervisor's merges: metrics (sum what counts, label what does not), statistics,
the repository index."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service.workers.merge import (
    agree_index,
    countable_samples,
    merge_metrics,
    requests_per_worker,
    sum_statistics,
)

WORKER_TEXT = """\
# HELP cnnserve_request_duration_seconds Request latency
# TYPE cnnserve_request_duration_seconds histogram
cnnserve_request_duration_seconds_bucket{model="m",le="0.001"} {fast}
cnnserve_request_duration_seconds_bucket{model="m",le="+Inf"} {count}
cnnserve_request_duration_seconds_count{model="m"} {count}
cnnserve_request_duration_seconds_sum{model="m"} 0.5
# HELP cnnserve_rejections_total Rejected
# TYPE cnnserve_rejections_total counter
cnnserve_rejections_total{model="m"} {count}
cnnserve_rejections_created{model="m"} {created}
# HELP cnnserve_queue_depth Rows waiting
# TYPE cnnserve_queue_depth gauge
cnnserve_queue_depth{model="m"} {count}
"""


def families(fast: int, count: int, created: float) -> list:  # type: ignore[type-arg]
    text = (
        WORKER_TEXT.replace("{fast}", str(fast))
        .replace("{count}", str(count))
        .replace("{created}", str(created))
    )
    return list(text_string_to_metric_families(text))


def samples(merged: list) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[type-arg]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in merged for s in f.samples}


def test_counters_and_histograms_add_up_and_gauges_stay_per_worker() -> None:
    merged = samples(merge_metrics({0: families(1, 3, 100.0), 1: families(2, 4, 50.0)}, {}))
    assert merged[("cnnserve_request_duration_seconds_count", (("model", "m"),))] == 7
    assert (
        merged[("cnnserve_request_duration_seconds_bucket", (("le", "0.001"), ("model", "m")))] == 3
    )
    assert merged[("cnnserve_request_duration_seconds_sum", (("model", "m"),))] == 1.0
    assert merged[("cnnserve_rejections_total", (("model", "m"),))] == 7
    # The text format makes a counter's _created a family of its own: one per worker.
    assert merged[("cnnserve_rejections_created", (("model", "m"), ("worker", "1")))] == 50.0
    assert merged[("cnnserve_queue_depth", (("model", "m"), ("worker", "0")))] == 3
    assert merged[("cnnserve_queue_depth", (("model", "m"), ("worker", "1")))] == 4
    assert ("cnnserve_queue_depth", (("model", "m"),)) not in merged


def test_a_replaced_workers_counts_are_carried_so_counters_never_go_down() -> None:
    carried = countable_samples(families(1, 3, 100.0))
    assert not any(name.endswith("_created") for _, name, _ in carried)  # not a count
    merged = samples(merge_metrics({0: families(0, 1, 200.0)}, carried))
    assert merged[("cnnserve_request_duration_seconds_count", (("model", "m"),))] == 4
    assert merged[("cnnserve_queue_depth", (("model", "m"), ("worker", "0")))] == 1  # not carried


def test_requests_per_worker_counts_each_workers_answers() -> None:
    assert requests_per_worker({0: families(0, 3, 1.0), 1: families(0, 5, 1.0)}) == {0: 3, 1: 5}


def test_statistics_are_summed_per_version_and_batch_size() -> None:
    def stats(count: int, last: int, sizes: list[int]) -> dict:  # type: ignore[type-arg]
        return {
            "model_stats": [
                {
                    "name": "m",
                    "version": "1",
                    "last_inference": last,
                    "inference_count": count,
                    "inference_stats": {"success": {"count": count, "ns": 10 * count}},
                    "batch_stats": [
                        {"batch_size": s, "compute_infer": {"count": 1, "ns": 5}} for s in sizes
                    ],
                }
            ]
        }

    summed = sum_statistics([stats(2, 100, [1, 4]), stats(3, 90, [4])])["model_stats"]
    assert len(summed) == 1
    model = summed[0]
    assert model["inference_count"] == 5 and model["last_inference"] == 100
    assert model["inference_stats"]["success"] == {"count": 5, "ns": 50}
    assert model["batch_stats"] == [
        {"batch_size": 1, "compute_infer": {"count": 1, "ns": 5}},
        {"batch_size": 4, "compute_infer": {"count": 2, "ns": 10}},
    ]


def test_the_index_is_ready_only_where_every_worker_agrees() -> None:
    ready = {"name": "m", "version": "2", "state": "READY", "reason": ""}
    failed = {"name": "m", "version": "2", "state": "UNAVAILABLE", "reason": "bad graph"}
    assert agree_index({0: [ready], 1: [ready]}) == [ready]
    (row,) = agree_index({0: [ready], 1: [failed]})
    assert row["state"] == "UNAVAILABLE"
    assert row["reason"] == (
        "the workers differ: worker 0: READY; worker 1: UNAVAILABLE (bad graph)"
    )
    (absent,) = agree_index({0: [ready], 1: []})
    assert "worker 1: absent" in absent["reason"]
