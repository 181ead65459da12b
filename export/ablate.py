"""Ablation: retrain one configuration with one component removed at a time and tabulate
the validation metrics (the test split is not used)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from export.architectures import Cnn, CnnSpec
from export.augment import Augmentation
from export.pipeline import Prepared
from export.train import TrainConfig, train

COMPONENTS = ("batch norm", "dropout", "augmentation", "weight decay")


@dataclass(frozen=True)
class AblationRow:
    removed: str  # "" for the full configuration
    val_loss: float
    val_accuracy: float
    epochs: int


def without(component: str, spec: CnnSpec, config: TrainConfig) -> tuple[CnnSpec, TrainConfig]:
    if component == "batch norm":
        return replace(spec, batch_norm=False), config
    if component == "dropout":
        return replace(spec, dropout=0.0, conv_dropout=0.0), config
    if component == "augmentation":
        return spec, replace(config, augmentation=Augmentation())
    if component == "weight decay":
        return spec, replace(config, weight_decay=0.0)
    raise ValueError(f"unknown component {component!r}")


def ablate(prepared: Prepared, spec: CnnSpec, config: TrainConfig) -> list[AblationRow]:
    rows = []
    for component in ("", *COMPONENTS):
        chosen, chosen_config = (
            (spec, config) if not component else without(component, spec, config)
        )
        torch.manual_seed(config.seed)
        model = Cnn(chosen)
        result = train(model, prepared.split, chosen_config, progress=None)
        rows.append(
            AblationRow(component, result.best_val_loss, result.val_accuracy, result.epochs_run)
        )
        print(
            f"{component or 'full configuration'}: val loss {result.best_val_loss:.4f}, "
            f"val accuracy {result.val_accuracy:.4f}"
        )
    return rows
