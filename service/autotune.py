"""`instances: auto`: the shape of the work for one model, found by timing it at load.

How many instances (sessions, each on its own thread), how many intra-op threads each, and,
when the config does not state it, the largest batch worth forming: the best combination
depends on the model (a small CNN gains from instances on separate cores, a large one from
threads inside one run), so it is measured, not guessed. Triton leaves this to a separate
tool (Model Analyzer); cnnserve does it while loading, within a time budget.

The search, in-process with onnxruntime only (no serving overhead):
- splits of the cores: instances x threads with instances * threads == cores (1 x 2 and
  2 x 1 on two cores), at most MAX_INSTANCES instances;
- for each split, every batch size 1, 2, 4, ... up to the limit; the split's rate is its
  best, and its batch the largest whose rows/s is within MAX_LOSS of that best. Not "the
  largest batch that still gains": on the CPU a CNN's rows/s is often flat across batch
  sizes, while the server pays a cost per batch (the thread hand-off, the gather, the
  answers) that in-process timing does not see, so a batch that computes about as fast
  per row is worth forming; and the tolerance is wide because trials on a shared VM
  differ by 10-30 % (a 5 % rule chose max_batch_size 1 on noise: bench/README.md);
- each trial runs every instance at once, on its own thread, for an equal share of the
  budget or RUNS_ENOUGH timed runs each, whichever comes first (at least one timed run,
  after one untimed run for the shape's allocations).
The winner is the split with the most rows per second at its batch size; ties go to
fewer instances. The runners of the winner are kept and served; the others are closed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from service.errors import ModelLoadError
from service.scheduler import Runner

Feeds = Mapping[str, npt.NDArray[np.generic]]

MAX_INSTANCES = 8
MAX_LOSS = 0.2  # a larger batch within 20 % of the best rows/s is kept (see above)
# A trial ends after its share of the budget or this many timed runs per instance,
# whichever comes first: a small model is measured in milliseconds, not in its budget.
RUNS_ENOUGH = 30


class ClosableRunner(Runner, Protocol):
    def close(self) -> None: ...


R = TypeVar("R", bound=ClosableRunner)


@dataclass(frozen=True)
class Trial:
    instances: int
    threads: int
    batch: int
    rows_per_s: float


@dataclass(frozen=True)
class Tuning:
    """What the timing chose, and the measurements it chose from."""

    instances: int
    threads: int
    max_batch_size: int
    rows_per_s: float
    trials: tuple[Trial, ...]
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.instances} instance(s) x {self.threads} thread(s), max_batch_size "
            f"{self.max_batch_size}: {self.rows_per_s:,.0f} rows/s in-process (best of "
            f"{len(self.trials)} trials in {self.seconds:.1f} s)"
        )


def core_splits(cores: int) -> list[tuple[int, int]]:
    """(instances, threads) pairs that use every core once."""
    return [(i, cores // i) for i in range(1, min(cores, MAX_INSTANCES) + 1) if cores % i == 0]


def batch_sizes(limit: int) -> list[int]:
    """1, 2, 4, ... below `limit`, then `limit` itself."""
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    if limit > 1:
        sizes.append(limit)
    return sizes


class Search(Generic[R]):
    """One model's timing: `run()` returns the choice and the runners that serve it."""

    def __init__(
        self,
        model: str,
        make_runner: Callable[[int], R],
        make_feeds: Callable[[int], Feeds],
        output_names: Sequence[str],
        *,
        cores: int,
        batch_limit: int,
        batch_stated: bool,
        budget_s: float,
        splits: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        if budget_s <= 0:
            raise ValueError(f"the timing budget must be > 0 s, got {budget_s}")
        self._model = model
        self._make_runner = make_runner
        self._make_feeds = make_feeds
        self._output_names = list(output_names)
        self._splits = list(splits) if splits is not None else core_splits(max(1, cores))
        self._limit = max(1, batch_limit)
        # A stated max_batch_size is kept: only the splits are compared, at that size.
        self._sizes = [self._limit] if batch_stated else batch_sizes(self._limit)
        self._slice_s = budget_s / (len(self._splits) * len(self._sizes))

    def run(self) -> tuple[Tuning, list[R]]:
        started = time.monotonic()
        trials: list[Trial] = []
        best: tuple[Trial, list[R]] | None = None
        for instances, threads in self._splits:
            runners: list[R] = []
            try:
                runners.extend(self._make_runner(threads) for _ in range(instances))
                trial = self._best_batch(runners, instances, threads, trials)
            except BaseException:
                _close(runners)
                if best is not None:
                    _close(best[1])
                raise
            if best is None or trial.rows_per_s > best[0].rows_per_s:
                if best is not None:
                    _close(best[1])
                best = (trial, runners)
            else:
                _close(runners)
        assert best is not None
        winner, runners = best
        tuning = Tuning(
            instances=winner.instances,
            threads=winner.threads,
            max_batch_size=winner.batch,
            rows_per_s=winner.rows_per_s,
            trials=tuple(trials),
            seconds=time.monotonic() - started,
        )
        return tuning, runners

    def _best_batch(
        self, runners: list[R], instances: int, threads: int, trials: list[Trial]
    ) -> Trial:
        """Time every batch size; the largest within MAX_LOSS of the best rate wins,
        reported at the best rate."""
        rates = []
        for batch in self._sizes:
            rate = self._rows_per_s(runners, batch)
            trials.append(Trial(instances, threads, batch, rate))
            rates.append((batch, rate))
        best_rate = max(rate for _, rate in rates)
        largest = max(batch for batch, rate in rates if rate >= best_rate * (1 - MAX_LOSS))
        return Trial(instances, threads, largest, best_rate)

    def _rows_per_s(self, runners: list[R], batch: int) -> float:
        feeds = self._make_feeds(batch)
        counts = [0] * len(runners)
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(runners) + 1)

        def work(index: int) -> None:
            runner = runners[index]
            try:
                runner.run(feeds, self._output_names)  # the shape's allocations, untimed
                barrier.wait()
                end = time.monotonic() + self._slice_s
                while True:
                    runner.run(feeds, self._output_names)
                    counts[index] += 1
                    if counts[index] >= RUNS_ENOUGH or time.monotonic() >= end:
                        return
            except threading.BrokenBarrierError:
                return
            except BaseException as exc:  # reported below, as the load's failure
                errors.append(exc)
                barrier.abort()

        workers = [threading.Thread(target=work, args=(i,)) for i in range(len(runners))]
        for worker in workers:
            worker.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed: below
            barrier.wait()
        began = time.monotonic()
        for worker in workers:
            worker.join()
        elapsed = time.monotonic() - began
        if errors:
            raise ModelLoadError(
                f"model '{self._model}': failed while being timed for instances: auto "
                f"(batch {batch}): {errors[0]}"
            )
        return sum(counts) * batch / max(elapsed, 1e-9)


def _close(runners: Sequence[ClosableRunner]) -> None:
    for runner in runners:
        runner.close()
