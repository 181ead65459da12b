"""`cnnserve export train|tune|ablate|onnx|quantize` (or `python -m export ...`).

train     train a CNN on the bundled digits or on your own image folder (one sub-folder
          per class; class/<group>/image.png keeps each group in one split), check it,
          and write a servable model repository entry with its preprocessing, labels,
          plots and model card
tune      search hyperparameters on the validation split (TPE or grid, with pruning and
          budgets), retrain the best, test it once, and write the entry
ablate    retrain with batch norm, dropout, augmentation or weight decay removed, one at
          a time, and tabulate the validation metrics
onnx      export your own torch nn.Module (package.module:name) with a dynamic batch axis
quantize  INT8 copy of a trained entry, calibrated on its training split, compared with
          fp32 on accuracy and CPU speed
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from export.architectures import Cnn, SpecError, describe
from export.augment import Augmentation
from export.card import DataSource, ModelCard, read_card, write_card
from export.data import DatasetError, class_counts
from export.learning_check import auto_batch_size, batch_size_note
from export.onnx_export import ExportError, check_parity, export_onnx, load_module, to_fp16
from export.pipeline import (
    Prepared,
    Trained,
    balanced_class_weights,
    base_spec,
    build_model,
    default_augmentation,
    finish,
    prepare,
)
from export.train import TrainConfig, train
from export.tune import SearchError
from service.cli.hints import ShowDefaults


def _require_folder(out: Path) -> None:
    """Checked before any training: an hour of training must not end in a typo."""
    if not out.is_dir():
        raise FileNotFoundError(
            f"output folder {out} does not exist (create it, or point --out at a model repository)"
        )


def _data_record(args: argparse.Namespace) -> DataSource:
    if args.data is None:
        return {"kind": "digits", "seed": args.seed}
    return {"kind": "folder", "path": str(args.data.resolve()), "size": args.image_size,
            "color": args.color, "seed": args.seed}  # fmt: skip


def _setup(args: argparse.Namespace) -> tuple[Prepared, TrainConfig]:
    _require_folder(args.out)
    torch.manual_seed(args.seed)  # the initial weights too
    prepared = prepare(_data_record(args))
    counts = class_counts(prepared.split.train_y, prepared.class_names)
    print(f"training split class counts: {counts}")
    augmentation = (
        default_augmentation(prepared, args.flip) if args.augment == "default" else Augmentation()
    )
    weights = balanced_class_weights(prepared) if args.class_weights == "balanced" else None
    train_images = len(prepared.split.train_y)
    stated = args.batch_size is not None
    batch_size = args.batch_size if stated else auto_batch_size(train_images)
    print(batch_size_note(batch_size, train_images, stated=stated))
    config = TrainConfig(
        epochs=args.epochs, batch_size=batch_size, optimizer=args.optimizer,
        learning_rate=args.lr, weight_decay=args.weight_decay, patience=args.patience,
        seed=args.seed, augmentation=augmentation, class_weights=weights,
    )  # fmt: skip
    return prepared, config


def _train(args: argparse.Namespace) -> int:
    prepared, config = _setup(args)
    model, architecture = build_model(prepared, args.arch)
    if args.finetune is not None:
        state = torch.load(args.finetune, map_location="cpu", weights_only=True)
        own = model.state_dict()
        matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(matching, strict=False)
        if isinstance(model, Cnn):
            model.freeze_features()
        print(f"fine-tuning from {args.finetune}: {len(matching)} tensors loaded, backbone frozen")
    result = train(model, prepared.split, config)
    trained = Trained(model, architecture, config, result)
    finished = finish(args.out, args.name, prepared, trained, max_batch_size=args.max_batch_size,
                      plots=args.plots)  # fmt: skip
    return _exit_status(finished.card, args.allow_weak)


def _exit_status(card: ModelCard, allow_weak: bool) -> int:
    """1 for a model no better than guessing (its entry is written, for its curves and
    card), unless the user accepted that."""
    if "weak" not in card or allow_weak:
        return 0
    print(
        f"cnnserve export: {card['model']} was written with that warning in its card; "
        "exit status 1 (--allow-weak: 0)",
        file=sys.stderr,
    )
    return 1


def _tune(args: argparse.Namespace) -> int:
    from export.tune import DEFAULT_SPACE, configure, search, write_trials

    space = DEFAULT_SPACE
    if args.space is not None:
        space = yaml.safe_load(args.space.read_text()) or {}
        if not isinstance(space, dict):
            raise SearchError(f"{args.space} must hold a mapping of parameter -> values")
    prepared, base = _setup(args)
    spec = base_spec(prepared)
    found = search(prepared, spec, base, base.augmentation, space, method=args.method,
                   trials=args.trials, timeout_s=args.timeout, seed=args.seed)  # fmt: skip
    print(
        f"{len(found.trials)} trials in {found.seconds:.0f} s; best validation loss "
        f"{found.best_val_loss:.4f} (default configuration {found.default_val_loss:.4f}): "
        f"{found.best}"
    )
    chosen, config = configure(found.best, spec, base, base.augmentation)
    torch.manual_seed(args.seed)
    model = Cnn(chosen)
    result = train(model, prepared.split, config)  # the best, retrained; then tested once
    search_record = {
        "method": args.method,
        "space": space,
        "best": found.best,
        "best_val_loss": found.best_val_loss,
        "default_val_loss": found.default_val_loss,
        # The best configuration trained again from the same seed: equal to best_val_loss
        # when training is reproducible (a reader's check that the search result is real).
        "retrained_val_loss": result.best_val_loss,
        "seconds": found.seconds,
        "trials": [asdict(t) for t in found.trials],
    }
    # The search's table and plot go next to the model, into the one card write.
    (args.out / args.name).mkdir(exist_ok=True)
    files = write_trials(found, args.out / args.name)
    trained = Trained(model, describe(chosen), config, result)
    finished = finish(args.out, args.name, prepared, trained, max_batch_size=args.max_batch_size,
                      plots=args.plots, search=search_record, more_plots=files[1:])  # fmt: skip
    return _exit_status(finished.card, args.allow_weak)


def _ablate(args: argparse.Namespace) -> int:
    from export.ablate import ablate

    prepared, config = _setup(args)
    spec = base_spec(prepared)
    rows = ablate(prepared, spec, config)
    table = ["| removed | val loss | val accuracy | epochs |", "|---|---|---|---|"]
    table += [f"| {r.removed or '(nothing: full)'} | {r.val_loss:.4f} | {r.val_accuracy:.4f} | "
              f"{r.epochs} |" for r in rows]  # fmt: skip
    print("\n".join(table))
    entry = args.out / args.name
    card_path = entry / "model_card.json"
    if card_path.is_file():  # add it to the card of the entry this configuration made
        card = read_card(entry)
        card["ablation"] = [asdict(r) for r in rows]
        write_card(entry, card)
        print(f"added to {card_path}")
    return 0


def _onnx(args: argparse.Namespace) -> int:
    _require_folder(args.out)
    model = load_module(args.module)
    if args.weights is not None:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    example = torch.rand(2, *args.input_shape)
    path = args.out / args.name / "1" / "model.onnx"
    export_onnx(model, example, path, output_name=args.output_name)
    parity = check_parity(model, path, example.numpy(), output_name=args.output_name)
    print(f"exported {path}; parity on random input: max abs diff {parity.max_abs_diff:.3g}")
    if args.fp16:
        fp16 = args.out / f"{args.name}_fp16" / "1" / "model.onnx"
        to_fp16(path, fp16)
        print(f"wrote {fp16} (fp16 weights, fp32 inputs and outputs)")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from export.quantize import compare, quantize_int8

    entry: Path = args.model
    card_path = entry / "model_card.json"
    if not card_path.is_file():
        raise FileNotFoundError(f"{card_path} not found: quantize needs an entry written by train")
    card = read_card(entry)
    prepared = prepare(card["data"])
    test_x, test_y, _ = prepared.test.read()
    source = max((p for p in entry.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    target_entry = entry.parent / f"{entry.name}_int8"
    target = target_entry / "1" / "model.onnx"
    quantize_int8(source / "model.onnx", target, "image", prepared.split.train_x)
    for name in ("config.yaml", "labels.txt"):
        shutil.copy(entry / name, target_entry / name)
    report = compare(source / "model.onnx", target, test_x, test_y)
    print(
        f"INT8: test accuracy {report.int8_accuracy:.4f} (fp32 {report.fp32_accuracy:.4f}, "
        f"{100 * (report.int8_accuracy - report.fp32_accuracy):+.2f} points); CPU one thread, "
        f"batch {report.batch}: {report.int8_images_per_s:,.0f} vs {report.fp32_images_per_s:,.0f}"
        f" images/s = {report.speedup:.2f}x; wrote {target}"
    )
    card["int8"] = {**asdict(report), "speedup": report.speedup}
    card["plots"] = []  # the fp32 entry's plots stay with it
    write_card(target_entry, card)
    return 0


def _training_flags(t: argparse.ArgumentParser) -> None:
    t.add_argument(
        "--data", type=Path, help="image folder, one sub-folder per class (default: digits)"
    )
    t.add_argument("--image-size", type=int, nargs=2, default=[32, 32], metavar=("H", "W"),
                   help="folder images are resized to this")  # fmt: skip
    t.add_argument("--color", choices=("rgb", "gray"), default="rgb", help="folder images")
    t.add_argument("--out", type=Path, default=Path("models"), help="model repository")
    t.add_argument("--name", default="digits", help="model name (its folder)")
    t.add_argument("--epochs", type=int, default=100, help="at most")
    t.add_argument(
        "--batch-size", type=int, help="default: auto, the training split // 8 within 4..64"
    )
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="sgd: momentum 0.9")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty")
    t.add_argument("--patience", type=int, default=20, help="early stopping, in epochs")
    t.add_argument("--augment", choices=("default", "none"), default="default", help="augmentation")
    t.add_argument("--flip", action="store_true", help="add horizontal flips (folder data)")
    t.add_argument("--class-weights", choices=("none", "balanced"), default="none",
                   help="balanced: weigh each class equally in the loss")  # fmt: skip
    t.add_argument("--max-batch-size", type=int, default=64, help="served batch limit")
    t.add_argument("--no-plots", dest="plots", action="store_false", help="skip the card's plots")
    t.add_argument("--seed", type=int, default=0, help="split, weights and augmentation")
    t.add_argument(
        "--allow-weak", action="store_true",
        help="exit 0 even when validation accuracy is no better than guessing",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnserve export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser(
        "train", formatter_class=ShowDefaults, help="train a CNN and write a servable model entry"
    )
    _training_flags(t)
    t.add_argument("--arch", choices=("cnn", "resnet18"), default="cnn", help="architecture")
    t.add_argument("--finetune", type=Path, help="weights.pt to start from; backbone frozen")
    tune = commands.add_parser(
        "tune", formatter_class=ShowDefaults, help="hyperparameter search, then train the best"
    )
    _training_flags(tune)
    tune.add_argument("--space", type=Path, help="YAML: parameter -> [values] or {low, high, log}")
    tune.add_argument("--method", choices=("tpe", "grid"), default="tpe")
    tune.add_argument("--trials", type=int, default=20, help="trial budget")
    tune.add_argument("--timeout", type=float, help="time budget in seconds")
    ablate = commands.add_parser(
        "ablate", formatter_class=ShowDefaults, help="retrain with one component removed at a time"
    )
    _training_flags(ablate)
    o = commands.add_parser("onnx", formatter_class=ShowDefaults, help="export your own nn.Module")
    o.add_argument(
        "--module", required=True, help="package.module:name (instance, class or factory)"
    )
    o.add_argument(
        "--input-shape", type=int, nargs="+", required=True, help="one input, without batch"
    )
    o.add_argument("--weights", type=Path, help="a state_dict saved with torch.save")
    o.add_argument("--out", type=Path, default=Path("models"), help="model repository")
    o.add_argument("--name", required=True, help="model name (its folder)")
    o.add_argument("--output-name", default="output", help="the ONNX output's name")
    o.add_argument("--fp16", action="store_true", help="also write <name>_fp16 for GPUs")
    q = commands.add_parser(
        "quantize", formatter_class=ShowDefaults, help="INT8 copy of an entry written by train"
    )
    q.add_argument("--model", type=Path, required=True, help="e.g. models/digits")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = {"train": _train, "tune": _tune, "ablate": _ablate, "onnx": _onnx,
           "quantize": _quantize}[args.command]  # fmt: skip
    try:
        return run(args)
    except (DatasetError, SpecError, ExportError, SearchError, FileNotFoundError) as exc:
        print(f"cnnserve export {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
