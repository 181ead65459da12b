"""The example digits model as tests use it: its served graph and its test split pixels."""

from __future__ import annotations

import json
from functools import cache

import onnxruntime as ort

from service.configuration.model_config import load_model_overrides
from service.serving.layout import CONFIG_FILE
from service.serving.loader import preprocessed_graph
from tests.serving import EXAMPLE_MODELS

DIGITS = EXAMPLE_MODELS / "digits"
MODEL_FILE = DIGITS / "1" / "model.onnx"


@cache
def served_graph() -> bytes:
    """The exact graph the server runs: the committed model with its preprocessing."""
    overrides = load_model_overrides("digits", DIGITS / CONFIG_FILE)
    return preprocessed_graph("digits", MODEL_FILE, overrides).graph


def served_session() -> ort.InferenceSession:
    return ort.InferenceSession(served_graph(), providers=["CPUExecutionProvider"])


def reported_test_accuracy() -> float:
    card = json.loads((DIGITS / "model_card.json").read_text())
    return float(card["test"]["accuracy"])
