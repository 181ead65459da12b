"""instances: auto — the search over core splits and batch sizes (service/runtime/autotune.py),
with fake runners whose speed is set by the test, so the choice is known in advance."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from service.runtime.autotune import Latency, Search, batch_sizes, core_splits, solo_choice
from service.runtime.scheduler import Feeds
from service.tensors.errors import ModelLoadError


class CountingRunner:
    """Runs in no time and records the batch sizes it ran. Its speed is not controlled (the
    search times by the wall clock), so the tests check the search's structure: which
    trials ran, what was kept, what was closed, what a failure says."""

    def __init__(self, threads: int, fail_at: int | None = None) -> None:
        self.threads = threads
        self.fail_at = fail_at
        self.closed = False
        self.batches: list[int] = []

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        batch = len(feeds["x"])
        self.batches.append(batch)
        if self.fail_at is not None and batch >= self.fail_at:
            raise RuntimeError("out of memory at this batch")
        return [np.zeros((batch, 1), np.float32)]

    def close(self) -> None:
        self.closed = True


def feeds(size: int) -> dict[str, npt.NDArray[np.generic]]:
    return {"x": np.zeros((size, 3), np.float32)}


def test_core_splits_use_every_core_once() -> None:
    assert core_splits(2) == [(1, 2), (2, 1)]
    assert core_splits(6) == [(1, 6), (2, 3), (3, 2), (6, 1)]
    assert core_splits(1) == [(1, 1)]
    assert all(i <= 8 for i, _ in core_splits(64))


def test_batch_sizes_are_powers_of_two_then_the_limit() -> None:
    assert batch_sizes(1) == [1]
    assert batch_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert batch_sizes(12) == [1, 2, 4, 8, 12]


def test_the_winner_is_served_and_the_others_closed() -> None:
    made: list[CountingRunner] = []

    def make(threads: int) -> CountingRunner:
        made.append(CountingRunner(threads))
        return made[-1]

    search = Search("m", make, feeds, ["y"], cores=2, batch_limit=4, batch_stated=False,
                    budget_s=0.5)  # fmt: skip
    tuning, runners = search.run()
    assert (tuning.instances, tuning.threads) in [(1, 2), (2, 1)]
    assert len(runners) == tuning.instances
    assert all(r.threads == tuning.threads and not r.closed for r in runners)
    assert all(r.closed for r in made if r not in runners)
    assert len(made) == 3  # one session for 1 x 2, two for 2 x 1
    assert tuning.max_batch_size in (1, 2, 4)
    assert {t.instances for t in tuning.trials} == {1, 2}
    assert "instance(s)" in tuning.summary() and "trials" in tuning.summary()


def test_a_stated_batch_size_is_the_only_one_timed_and_kept() -> None:
    runners: list[CountingRunner] = []

    def make(threads: int) -> CountingRunner:
        runners.append(CountingRunner(threads))
        return runners[-1]

    tuning, _ = Search("m", make, feeds, ["y"], cores=2, batch_limit=8, batch_stated=True,
                       budget_s=0.2).run()  # fmt: skip
    assert tuning.max_batch_size == 8
    # throughput at the stated size only; batch 1 is the lone-batch latency timing
    assert {b for r in runners for b in r.batches} == {8, 1}
    assert {t.batch for t in tuning.trials} == {8}


def test_a_model_that_fails_while_timed_does_not_load_and_says_why() -> None:
    made: list[CountingRunner] = []

    def make(threads: int) -> CountingRunner:
        made.append(CountingRunner(threads, fail_at=2))
        return made[-1]

    search = Search("m", make, feeds, ["y"], cores=2, batch_limit=4, batch_stated=False,
                    budget_s=0.2)  # fmt: skip
    with pytest.raises(ModelLoadError, match=r"failed while being timed.*batch 2.*out of memory"):
        search.run()
    assert made and all(r.closed for r in made)  # nothing leaks from a failed load


def test_a_budget_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="budget must be > 0"):
        Search("m", CountingRunner, feeds, ["y"], cores=2, batch_limit=4, batch_stated=False,
               budget_s=0.0)  # fmt: skip


class PricedRunner(CountingRunner):
    """A run takes a known time: 10 ms a row on one thread, 1.6x faster on two (intra-op
    threads do not scale perfectly). So 2 x 1 wins throughput (2 rows per 10 ms against
    1.6) while 1 x 2 answers a lone row faster (6.25 ms against 10): the ResNet-18 case.
    The gaps (1.25x, 1.6x) are far above a sleep's overshoot."""

    def run(self, feeds: Feeds, output_names: Sequence[str]) -> list[npt.NDArray[np.generic]]:
        batch = len(feeds["x"])
        time.sleep(0.010 * batch / (1.6 if self.threads == 2 else 1.0))
        return super().run(feeds, output_names)


def test_a_faster_lone_batch_keeps_a_solo_instance_beside_the_winner() -> None:
    made: list[PricedRunner] = []

    def make(threads: int) -> PricedRunner:
        made.append(PricedRunner(threads))
        return made[-1]

    search = Search("m", make, feeds, ["y"], cores=2, batch_limit=2, batch_stated=True,
                    budget_s=0.6)  # fmt: skip
    tuning, runners = search.run()
    assert (tuning.instances, tuning.threads, tuning.solo_threads) == (2, 1, 2)
    assert [r.threads for r in runners] == [1, 1, 2]  # the winner's, then the solo one
    assert all(not r.closed for r in runners)
    assert all(r.closed for r in made if not any(r is s for s in runners))
    assert {t.threads for t in tuning.latencies} == {1, 2}
    low = tuning.low_load_batch1_s
    assert low is not None and low == tuning.batch1_s(2)
    assert "solo instance of 2 threads" in tuning.summary()


def test_solo_choice_needs_a_real_gain() -> None:
    two_by_one, one_by_two = Latency(1, 0.040), Latency(2, 0.023)
    assert solo_choice([one_by_two, two_by_one], winner_threads=1) == 2
    assert solo_choice([one_by_two, two_by_one], winner_threads=2) is None  # it is the winner
    assert solo_choice([Latency(2, 0.0100), Latency(1, 0.0105)], winner_threads=1) is None
    # 1.5x faster, but 20 us: a compute-free model's noise, below what a request costs
    assert solo_choice([Latency(2, 40e-6), Latency(1, 60e-6)], winner_threads=1) is None
    assert solo_choice([], winner_threads=1) is None


def test_counting_runners_never_get_a_solo_instance() -> None:
    """Compute-free runs (microseconds) never clear the absolute floor."""
    tuning, runners = Search("m", CountingRunner, feeds, ["y"], cores=2, batch_limit=4,
                             batch_stated=False, budget_s=0.2).run()  # fmt: skip
    assert tuning.solo_threads is None and len(runners) == tuning.instances
