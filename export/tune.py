"""Hyperparameter search on the validation split (the test split is never touched here).

Optuna, for its TPE sampler (the Bayesian method the course cites, as Hyperopt also
offers), its grid sampler, and — what Hyperopt lacks — pruning: a trial whose validation
loss is worse than the median of earlier trials at the same epoch is stopped early
(MedianPruner). The default configuration is the first TPE trial, so a TPE search can only
improve on it; a grid search runs exactly its grid. A trial that diverges (NaN or infinite
loss) is pruned and recorded, and the search goes on.
"""

from __future__ import annotations

import csv
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch

from export.architectures import Cnn, CnnSpec
from export.augment import Augmentation
from export.pipeline import Prepared, resized_spec
from export.report import pyplot
from export.train import TrainConfig, train

# name -> a list of values (grid and TPE), or {low, high, log?} (TPE only)
Space = dict[str, Any]

DEFAULT_SPACE: Space = {
    "learning_rate": {"low": 3e-4, "high": 3e-3, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-3, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "batch_size": [32, 64, 128],
    "optimizer": ["adam", "sgd"],
    "width": [0.5, 1.0, 2.0],  # conv and FC widths times this
    "depth": [1, 2],  # convs per block
    "augmentation": {"low": 0.0, "high": 1.5},  # strength: every magnitude times this
}
KNOWN = set(DEFAULT_SPACE)


class SearchError(ValueError):
    """A search space or budget that cannot be searched."""


def check_space(space: Space, method: str) -> None:
    if not space:
        raise SearchError("the search space is empty: declare at least one parameter")
    unknown = set(space) - KNOWN
    if unknown:
        raise SearchError(f"unknown parameters {sorted(unknown)} (known: {sorted(KNOWN)})")
    for name, values in space.items():
        if isinstance(values, list):
            if not values:
                raise SearchError(f"'{name}' has an empty list of values")
        elif isinstance(values, dict):
            if method == "grid":
                raise SearchError(f"grid search needs a list of values for '{name}', not a range")
            low, high = values.get("low"), values.get("high")
            if not isinstance(low, int | float) or not isinstance(high, int | float):
                raise SearchError(f"'{name}' needs numeric low and high")
            if low > high:
                raise SearchError(f"'{name}': low {low} is above high {high}")
            if values.get("log") and low <= 0:
                raise SearchError(f"'{name}': a log range needs low > 0")
        else:
            raise SearchError(f"'{name}' must be a list of values or {{low, high}}")


@dataclass(frozen=True)
class Trial:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    val_loss: float
    val_accuracy: float
    epochs: int
    params: dict[str, Any]
    note: str = ""


@dataclass(frozen=True)
class SearchResult:
    best: dict[str, Any]
    best_val_loss: float
    default_val_loss: float
    trials: list[Trial]
    seconds: float


def configure(
    params: dict[str, Any], spec: CnnSpec, base: TrainConfig, augmentation: Augmentation
) -> tuple[CnnSpec, TrainConfig]:
    chosen = resized_spec(spec, params.get("width", 1.0), params.get("depth"))
    if "dropout" in params:
        chosen = replace(chosen, dropout=float(params["dropout"]))
    config = replace(
        base,
        learning_rate=float(params.get("learning_rate", base.learning_rate)),
        weight_decay=float(params.get("weight_decay", base.weight_decay)),
        batch_size=int(params.get("batch_size", base.batch_size)),
        optimizer=str(params.get("optimizer", base.optimizer)),
        augmentation=augmentation.scaled(float(params.get("augmentation", 1.0))),
    )
    return chosen, config


def default_params(space: Space, spec: CnnSpec, base: TrainConfig) -> dict[str, Any]:
    """The default configuration, in the space's terms (clamped into its ranges/choices)."""
    defaults: dict[str, Any] = {
        "learning_rate": base.learning_rate,
        "weight_decay": base.weight_decay,
        "dropout": spec.dropout,
        "batch_size": base.batch_size,
        "optimizer": base.optimizer,
        "width": 1.0,
        "depth": len(spec.blocks[0].convs),
        "augmentation": 1.0,
    }
    chosen = {}
    for name, values in space.items():
        value = defaults[name]
        if isinstance(values, list):
            value = value if value in values else values[0]
        else:
            value = min(max(value, values["low"]), values["high"])
        chosen[name] = value
    return chosen


def _suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, values in space.items():
        if isinstance(values, list):
            params[name] = trial.suggest_categorical(name, values)
        elif (
            isinstance(values["low"], int)
            and isinstance(values["high"], int)
            and not values.get("log")
        ):
            params[name] = trial.suggest_int(name, values["low"], values["high"])
        else:
            params[name] = trial.suggest_float(
                name, values["low"], values["high"], log=bool(values.get("log"))
            )
    return params


def _check_budget(method: str, space: Space, trials: int, timeout_s: float | None) -> None:
    if method not in ("tpe", "grid"):
        raise SearchError(f"method must be tpe or grid, got {method!r}")
    check_space(space, method)
    if trials < 1:
        raise SearchError(f"the trial budget must be at least 1, got {trials}")
    if timeout_s is not None and timeout_s <= 0:
        raise SearchError(f"the time budget must be positive, got {timeout_s} s")


def _study(method: str, space: Space, seed: int) -> optuna.Study:
    sampler: optuna.samplers.BaseSampler
    if method == "grid":
        sampler = optuna.samplers.GridSampler(space, seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        direction="minimize",
        sampler=sampler,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=5),
    )


def _objective(
    prepared: Prepared,
    spec: CnnSpec,
    base: TrainConfig,
    augmentation: Augmentation,
    space: Space,
    seed: int,
    records: list[Trial],
) -> Callable[[optuna.Trial], float]:
    """One trial: train the suggested configuration on train/validation, recording it
    (complete, pruned by the median rule, or pruned because its loss diverged)."""

    def objective(trial: optuna.Trial) -> float:
        params = _suggest(trial, space)
        chosen, config = configure(params, spec, base, augmentation)
        torch.manual_seed(seed)
        model = Cnn(chosen)

        def report(epoch: int, val_loss: float) -> None:
            if not math.isfinite(val_loss):
                return  # train() stops on it; handled below
            trial.report(val_loss, epoch)
            if trial.should_prune():
                records.append(
                    Trial(trial.number, "PRUNED", val_loss, math.nan, epoch, params, "median")
                )
                raise optuna.TrialPruned(f"worse than the median at epoch {epoch}")

        result = train(model, prepared.split, config, progress=None, on_epoch=report)
        last = result.history.val_loss[-1]
        if not math.isfinite(last) or not math.isfinite(result.best_val_loss):
            records.append(Trial(trial.number, "PRUNED", math.nan, math.nan,
                                 result.epochs_run, params, "diverged"))  # fmt: skip
            raise optuna.TrialPruned("the loss diverged (NaN or infinite)")
        records.append(Trial(trial.number, "COMPLETE", result.best_val_loss,
                             result.val_accuracy, result.epochs_run, params))  # fmt: skip
        return result.best_val_loss

    return objective


def search(
    prepared: Prepared,
    spec: CnnSpec,
    base: TrainConfig,
    augmentation: Augmentation,
    space: Space,
    *,
    method: str = "tpe",
    trials: int = 20,
    timeout_s: float | None = None,
    seed: int = 0,
) -> SearchResult:
    """Search on train/validation only; the caller retrains the best and tests it once."""
    _check_budget(method, space, trials, timeout_s)
    if method == "grid":
        trials = min(trials, math.prod(len(v) for v in space.values()))
    study = _study(method, space, seed)
    if method == "tpe":  # a grid runs its own points; TPE starts from the default
        study.enqueue_trial(default_params(space, spec, base))
    records: list[Trial] = []
    objective = _objective(prepared, spec, base, augmentation, space, seed, records)
    started = time.monotonic()
    study.optimize(objective, n_trials=trials, timeout=timeout_s, catch=())
    complete = [t for t in records if t.state == "COMPLETE"]
    if not complete:
        raise SearchError("every trial was pruned or diverged: widen or move the search space")
    best = min(complete, key=lambda t: t.val_loss)
    default = next((t for t in records if t.number == 0), best)
    return SearchResult(
        best.params,
        best.val_loss,
        default.val_loss,
        sorted(records, key=lambda t: t.number),
        time.monotonic() - started,
    )


def write_trials(result: SearchResult, folder: Path) -> list[str]:
    """trials.csv and search.png in `folder`; returns the file names."""
    plt = pyplot()
    names = sorted({k for t in result.trials for k in t.params})
    with (folder / "trials.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", "val_loss", "val_accuracy", "epochs", "note", *names])
        for t in result.trials:
            writer.writerow(
                [
                    t.number,
                    t.state,
                    t.val_loss,
                    t.val_accuracy,
                    t.epochs,
                    t.note,
                    *(t.params.get(n) for n in names),
                ]
            )
    figure, axis = plt.subplots(figsize=(6, 4))
    done = [t for t in result.trials if t.state == "COMPLETE"]
    axis.scatter([t.number for t in done], [t.val_loss for t in done], label="complete")
    pruned = [t for t in result.trials if t.state == "PRUNED" and math.isfinite(t.val_loss)]
    axis.scatter(
        [t.number for t in pruned], [t.val_loss for t in pruned], marker="x", label="pruned"
    )
    best_so_far = list(itertools.accumulate((t.val_loss for t in done), min))
    axis.step([t.number for t in done], best_so_far, where="post", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel("validation loss")
    axis.set_yscale("log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "search.png", dpi=100)
    plt.close(figure)
    return ["trials.csv", "search.png"]
