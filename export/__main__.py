"""`cnnserve export ...` / `python -m export ...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from export.architectures import DIGITS_SPEC, Cnn, WithSoftmax
from export.data import dataset_statistics, digits_split, normalized
from export.onnx_export import check_parity, parity_dict, write_repository_entry
from export.train import TrainConfig, train


def _train_digits(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    pixels = digits_split()
    normalization = dataset_statistics(pixels.train_x, color="gray")
    split = normalized(pixels, normalization)
    model = Cnn(DIGITS_SPEC)
    result = train(model, split, TrainConfig(epochs=args.epochs, seed=args.seed))
    print(
        f"trained {result.epochs_run} epochs (best {result.best_epoch}, val loss "
        f"{result.best_val_loss:.4f}); val accuracy {result.val_accuracy:.4f}; "
        f"test accuracy {result.test_accuracy:.4f}"
    )
    served = WithSoftmax(model).eval()
    example = torch.from_numpy(split.test_x[:2])
    config = {
        "max_batch_size": 64,
        "dynamic_batching": {"max_queue_delay_us": 0, "max_queue_size": 1024},
        # The training split's statistics: the server applies exactly what training used.
        "preprocessing": normalization.config(),
    }
    card = {
        "model": args.name,
        "dataset": "sklearn load_digits as uint8 pixels (value * 255/16), stratified "
        "70/10/20 split, seed 0",
        "input": "UINT8 pixels [batch, 8, 8, 1] (NHWC, grayscale, ink bright), or PNG/JPEG",
        "preprocessing": normalization.config(),
        "train": asdict(result),
    }
    path = write_repository_entry(
        args.out, args.name, served, example, split.class_names, config, card
    )
    parity = check_parity(served, path, split.test_x)
    print(
        f"ONNX parity on {parity.samples} test images: max abs diff {parity.max_abs_diff:.3g}, "
        f"argmax agreement {parity.argmax_agreement:.4f}"
    )
    card["parity"] = parity_dict(parity)
    (args.out / args.name / "model_card.json").write_text(
        __import__("json").dumps(card, indent=2, sort_keys=True) + "\n"
    )
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnserve export")
    commands = parser.add_subparsers(dest="command", required=True)
    digits = commands.add_parser("train", help="train the digits CNN and write models/digits")
    digits.add_argument("--out", type=Path, default=Path("models"), help="model repository")
    digits.add_argument("--name", default="digits")
    digits.add_argument("--epochs", type=int, default=80)
    digits.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train_digits(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
