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

Throughput is not the whole answer: the winner is chosen for a deep queue, and on a quiet
service one batch runs on one of its instances, with that instance's share of the cores
(ResNet-18 at batch 1, timed here: 24-25 ms on one of 2 x 1 thread, 13 ms on 1 x 2). So
each split's batch-1 latency is timed too (one run at a time, the median), and when a split
with more threads per run answers a lone batch at least SOLO_GAIN faster than the winner's
instances do (and by SOLO_MIN_GAIN_S), one session of that split is kept as well: the solo
instance. The batcher runs a batch on it only when the service is quiet, and never beside
the other instances (service/batching/batcher.py), so the cores are never oversubscribed.
Its cost is one more session (a second copy of the weights, and an arena as large as the
batches it ran), never more than one.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from service.runtime.scheduler import Runner
from service.tensors.errors import ModelLoadError

Feeds = Mapping[str, npt.NDArray[np.generic]]

MAX_INSTANCES = 8
MAX_LOSS = 0.2  # a larger batch within 20 % of the best rows/s is kept (see above)
# A trial ends after its share of the budget or this many timed runs per instance,
# whichever comes first: a small model is measured in milliseconds, not in its budget.
RUNS_ENOUGH = 30
# A solo instance is kept when it answers a lone batch at least this much faster than the
# winner's instances: below that, a session's memory buys less than the noise of a trial.
SOLO_GAIN = 1.1
# ... and by at least this much: a served request costs 0.5-1 ms here before any compute,
# so a smaller gain (a compute-free model's microseconds) is noise a client never sees. Not
# higher: the mid-size CNN's 2-thread run gains 0.16-0.22 ms (0.53 against 0.73 ms), and
# served that was 1.69 against 1.88-1.92 ms at c=1 (bench/README.md "Both ends").
SOLO_MIN_GAIN_S = 50e-6


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
class Latency:
    """A split's batch-1 run, one at a time: what a lone client waits for its compute."""

    threads: int
    batch1_s: float  # the median run


@dataclass(frozen=True)
class Tuning:
    """What the timing chose, and the measurements it chose from."""

    instances: int
    threads: int
    max_batch_size: int
    rows_per_s: float
    trials: tuple[Trial, ...]
    seconds: float
    latencies: tuple[Latency, ...] = ()
    solo_threads: int | None = None  # a solo instance with this many threads is served too

    def batch1_s(self, threads: int) -> float | None:
        return next((t.batch1_s for t in self.latencies if t.threads == threads), None)

    @property
    def low_load_batch1_s(self) -> float | None:
        """What a lone batch-1 request computes for, as served."""
        return self.batch1_s(self.solo_threads or self.threads)

    def summary(self) -> str:
        text = (
            f"{self.instances} instance(s) x {self.threads} thread(s), max_batch_size "
            f"{self.max_batch_size}: {self.rows_per_s:,.0f} rows/s in-process"
        )
        deep = self.batch1_s(self.threads)
        if self.solo_threads is not None and deep is not None:
            solo = self.batch1_s(self.solo_threads) or 0.0
            text += (
                f"; a lone batch runs on a solo instance of {self.solo_threads} threads "
                f"(batch 1: {1e3 * solo:.3g} ms, against {1e3 * deep:.3g} ms on one of "
                f"the {self.instances})"
            )
        elif deep is not None:
            text += f"; batch 1 alone: {1e3 * deep:.3g} ms"
        return text + f" (best of {len(self.trials)} trials in {self.seconds:.1f} s)"


def solo_choice(latencies: Sequence[Latency], winner_threads: int) -> int | None:
    """The thread count of the solo instance to keep beside the winner, or None: the split
    with the fastest lone batch, when it beats the winner's own by SOLO_GAIN."""
    deep = next((t.batch1_s for t in latencies if t.threads == winner_threads), None)
    if deep is None:  # also when nothing was timed
        return None
    fastest = min(latencies, key=lambda t: t.batch1_s)
    if fastest.threads == winner_threads or deep < fastest.batch1_s * SOLO_GAIN:
        return None
    if deep - fastest.batch1_s < SOLO_MIN_GAIN_S:
        return None
    return fastest.threads


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
        # One share per trial: each batch size of each split, and each split's lone batch.
        self._slice_s = budget_s / (len(self._splits) * (len(self._sizes) + 1))

    def run(self) -> tuple[Tuning, list[R]]:
        """The choice, and the runners that serve it: the winner's instances, then the
        solo instance when `Tuning.solo_threads` is set."""
        started = time.monotonic()
        trials: list[Trial] = []
        latencies: list[Latency] = []
        best: tuple[Trial, list[R]] | None = None
        fastest: tuple[Latency, R] | None = None  # the split with the fastest lone batch
        open_runners: list[R] = []
        try:
            for instances, threads in self._splits:
                runners = [self._make_runner(threads) for _ in range(instances)]
                open_runners.extend(runners)
                trial = self._best_batch(runners, instances, threads, trials)
                latency = Latency(threads, self._batch1_s(runners[0]))
                latencies.append(latency)
                if best is None or trial.rows_per_s > best[0].rows_per_s:
                    best = (trial, runners)
                if fastest is None or latency.batch1_s < fastest[0].batch1_s:
                    fastest = (latency, runners[0])
                keep = [*best[1], fastest[1]]  # at most one split's sessions and one more
                _close([r for r in open_runners if not _within(r, keep)])
                open_runners = [r for r in open_runners if _within(r, keep)]
        except BaseException:
            _close(open_runners)
            raise
        assert best is not None and fastest is not None
        winner, served = best
        solo_threads = solo_choice(latencies, winner.threads)
        if solo_threads is not None:
            served = [*served, fastest[1]]
        _close([r for r in open_runners if not _within(r, served)])
        tuning = Tuning(
            instances=winner.instances,
            threads=winner.threads,
            max_batch_size=winner.batch,
            rows_per_s=winner.rows_per_s,
            trials=tuple(trials),
            seconds=time.monotonic() - started,
            latencies=tuple(latencies),
            solo_threads=solo_threads,
        )
        return tuning, served

    def _batch1_s(self, runner: R) -> float:
        """The median of batch-1 runs, one at a time, within one trial's share of the budget
        (at least one run; the throughput trials already warmed the shape)."""
        feeds = self._make_feeds(1)
        runs: list[float] = []
        end = time.monotonic() + self._slice_s
        while not runs or (len(runs) < RUNS_ENOUGH and time.monotonic() < end):
            began = time.monotonic()
            try:
                runner.run(feeds, self._output_names)
            except Exception as exc:
                raise ModelLoadError(
                    f"model '{self._model}': failed while being timed for instances: auto "
                    f"(batch 1 alone): {exc}"
                ) from exc
            runs.append(time.monotonic() - began)
        return statistics.median(runs)

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


def _within(runner: object, runners: Sequence[object]) -> bool:
    """By identity: runners need not define equality."""
    return any(runner is other for other in runners)
