"""`cnnserve export train|onnx|quantize` (or `python -m export ...`).

train     train a CNN on the bundled digits or on your own image folder (one sub-folder
          per class), check it, and write a servable model repository entry with its
          preprocessing, labels, plots and model card
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
from typing import Any

import torch

from export.architectures import (
    DIGITS_SPEC,
    BlockSpec,
    Cnn,
    CnnSpec,
    ResNet18,
    SpecError,
    WithSoftmax,
    convs,
)
from export.augment import DIGITS_AUGMENTATION, Augmentation
from export.data import (
    DatasetError,
    Normalization,
    Split,
    class_counts,
    dataset_statistics,
    digits_split,
    load_image_folder,
    normalized,
    stratified_split,
)
from export.onnx_export import (
    ExportError,
    check_parity,
    export_onnx,
    load_module,
    parity_dict,
    to_fp16,
    write_repository_entry,
)
from export.report import plot_confusion, plot_curves, write_card
from export.train import TrainConfig, evaluate, train


def default_spec(channels: int, height: int, width: int, classes: int) -> CnnSpec:
    """Blocks of two 3x3 convs and a 2x2 pool, doubling the width, until the image is 4 px."""
    blocks: list[BlockSpec] = []
    size, width_c = min(height, width), 32
    while size > 4 and size % 2 == 0 and len(blocks) < 5:
        blocks.append(BlockSpec(convs(width_c, width_c)))
        size, width_c = size // 2, width_c * 2
    if not blocks:
        blocks.append(BlockSpec(convs(32, 32), pool=0))
    return CnnSpec(channels, height, width, tuple(blocks), (128,), classes)


def _dataset(data: dict[str, Any]) -> tuple[Split, str]:
    """The uint8 split and a description, from the card's `data` record."""
    if data["kind"] == "digits":
        return digits_split(data.get("seed", 0)), (
            "sklearn load_digits as uint8 pixels (value * 255/16), stratified 70/10/20 split"
        )
    folder = load_image_folder(Path(data["path"]), tuple(data["size"]), data["color"])
    if folder.skipped:
        print(f"skipped {len(folder.skipped)} unreadable image(s)", file=sys.stderr)
    split = stratified_split(folder.pixels, folder.labels, folder.class_names, data.get("seed", 0))
    return split, (
        f"image folder {data['path']} ({len(folder.labels)} images, {len(folder.skipped)} "
        f"unreadable skipped), resized to {data['size'][0]}x{data['size'][1]} {data['color']}, "
        "stratified 70/10/20 split"
    )


def _require_folder(out: Path) -> None:
    """Checked before any training: an hour of training must not end in a typo."""
    if not out.is_dir():
        raise FileNotFoundError(
            f"output folder {out} does not exist (create it, or point --out at a model repository)"
        )


def _train(args: argparse.Namespace) -> int:
    _require_folder(args.out)
    torch.manual_seed(args.seed)  # the initial weights too
    data: dict[str, Any] = {"kind": "digits", "seed": args.seed}
    color = "gray"
    if args.data is not None:
        color = args.color
        data = {"kind": "folder", "path": str(args.data.resolve()), "size": args.image_size,
                "color": color, "seed": args.seed}  # fmt: skip
    pixels, description = _dataset(data)
    normalization = dataset_statistics(pixels.train_x, color=color)
    split = normalized(pixels, normalization)
    _, height, width, channels = pixels.train_x.shape
    classes = len(split.class_names)
    if args.arch == "resnet18":
        model: torch.nn.Module = ResNet18(classes, in_channels=channels)
        architecture = "ResNet-18 (batch norm)"
    else:
        spec = (
            DIGITS_SPEC
            if data["kind"] == "digits"
            else default_spec(channels, height, width, classes)
        )
        model = Cnn(spec)
        architecture = str(spec)
    if args.finetune is not None:
        state = torch.load(args.finetune, map_location="cpu", weights_only=True)
        own = model.state_dict()
        matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(matching, strict=False)
        if isinstance(model, Cnn):
            model.freeze_features()
        print(f"fine-tuning from {args.finetune}: {len(matching)} tensors loaded, backbone frozen")
    augmentation = Augmentation()
    if args.augment == "default":
        augmentation = (
            DIGITS_AUGMENTATION
            if data["kind"] == "digits"
            else Augmentation(
                rotation_deg=10,
                scale=0.1,
                translate=0.1,
                brightness=0.1,
                contrast=0.1,
                flip=args.flip,
            )
        )
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        learning_rate=args.lr, weight_decay=args.weight_decay, patience=args.patience,
        seed=args.seed, augmentation=augmentation,
    )  # fmt: skip
    result = train(model, split, config)
    test = evaluate(model, split.test_x, split.test_y, split.class_names)  # the one test read
    print(
        f"trained {result.epochs_run} epochs (best {result.best_epoch}, val loss "
        f"{result.best_val_loss:.4f}); val accuracy {result.val_accuracy:.4f}; "
        f"test accuracy {test.accuracy:.4f}, macro F1 {test.macro_f1:.4f}"
    )
    served = WithSoftmax(model).eval()
    entry_config = {
        "max_batch_size": args.max_batch_size,
        "dynamic_batching": {"max_queue_delay_us": 0, "max_queue_size": 1024},
        # The training split's statistics: the server applies exactly what training used.
        "preprocessing": normalization.config(),
    }
    if data["kind"] == "folder":
        entry_config["preprocessing"]["resize"] = list(args.image_size)
    path = write_repository_entry(
        args.out, args.name, served, torch.from_numpy(split.test_x[:2]), split.class_names,
        entry_config,
    )  # fmt: skip
    parity = check_parity(served, path, split.test_x)
    print(
        f"ONNX parity on {parity.samples} test images: max abs diff {parity.max_abs_diff:.3g}, "
        f"argmax agreement {parity.argmax_agreement:.4f}"
    )
    entry = args.out / args.name
    plots = []
    if args.plots:
        plot_curves(result.history, result.best_epoch, entry / "curves.png")
        plot_confusion(test, split.class_names, entry / "confusion.png")
        plots = ["curves.png", "confusion.png"]
    train_record = asdict(result)
    train_record.pop("history")
    card = {
        "model": args.name,
        "data": data,
        "dataset": description,
        "input": f"UINT8 pixels [batch, {height}, {width}, {channels}] (NHWC, {color}), "
        "or PNG/JPEG",
        "architecture": architecture,
        "preprocessing": normalization.config(),
        "training": {**asdict(config), "augmentation": asdict(augmentation)},
        "train": train_record,
        "history": asdict(result.history),
        "split_sizes": {
            "train": len(split.train_y),
            "val": len(split.val_y),
            "test": len(split.test_y),
        },
        "class_counts": {
            "train": class_counts(split.train_y, split.class_names),
            "val": class_counts(split.val_y, split.class_names),
            "test": class_counts(split.test_y, split.class_names),
        },
        "test": asdict(test),
        "parity": parity_dict(parity),
        "plots": plots,
    }
    write_card(entry, card)
    torch.save(model.state_dict(), entry / "weights.pt")  # for fine-tuning (--finetune)
    print(f"wrote {path}")
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
    import json

    card = json.loads(card_path.read_text())
    pixels, _ = _dataset(card["data"])
    pre = card["preprocessing"]
    split = normalized(
        pixels, Normalization(pre["scale"], tuple(pre["mean"]), tuple(pre["std"]), pre["color"])
    )
    source = max((p for p in entry.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    target_entry = entry.parent / f"{entry.name}_int8"
    target = target_entry / "1" / "model.onnx"
    quantize_int8(source / "model.onnx", target, "image", split.train_x)
    for name in ("config.yaml", "labels.txt"):
        shutil.copy(entry / name, target_entry / name)
    report = compare(source / "model.onnx", target, split.test_x, split.test_y)
    print(
        f"INT8: test accuracy {report.int8_accuracy:.4f} (fp32 {report.fp32_accuracy:.4f}, "
        f"{100 * (report.int8_accuracy - report.fp32_accuracy):+.2f} points); CPU one thread, "
        f"batch {report.batch}: {report.int8_images_per_s:,.0f} vs {report.fp32_images_per_s:,.0f}"
        f" images/s = {report.speedup:.2f}x; wrote {target}"
    )
    card["int8"] = {**asdict(report), "speedup": report.speedup}
    (target_entry / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnserve export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train a CNN and write a servable model entry")
    t.add_argument(
        "--data", type=Path, help="image folder, one sub-folder per class (default: digits)"
    )
    t.add_argument("--image-size", type=int, nargs=2, default=[32, 32], metavar=("H", "W"),
                   help="folder images are resized to this (default 32 32)")  # fmt: skip
    t.add_argument("--color", choices=("rgb", "gray"), default="rgb", help="folder images")
    t.add_argument("--arch", choices=("cnn", "resnet18"), default="cnn")
    t.add_argument("--out", type=Path, default=Path("models"), help="model repository")
    t.add_argument("--name", default="digits")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--patience", type=int, default=20, help="early stopping, in epochs")
    t.add_argument("--augment", choices=("default", "none"), default="default")
    t.add_argument("--flip", action="store_true", help="add horizontal flips (folder data)")
    t.add_argument("--max-batch-size", type=int, default=64, help="served batch limit")
    t.add_argument("--finetune", type=Path, help="weights.pt to start from; backbone frozen")
    t.add_argument("--no-plots", dest="plots", action="store_false")
    t.add_argument("--seed", type=int, default=0)
    o = commands.add_parser("onnx", help="export your own nn.Module")
    o.add_argument(
        "--module", required=True, help="package.module:name (instance, class or factory)"
    )
    o.add_argument(
        "--input-shape", type=int, nargs="+", required=True, help="one input, without batch"
    )
    o.add_argument("--weights", type=Path, help="a state_dict saved with torch.save")
    o.add_argument("--out", type=Path, default=Path("models"))
    o.add_argument("--name", required=True)
    o.add_argument("--output-name", default="output")
    o.add_argument("--fp16", action="store_true", help="also write <name>_fp16 for GPUs")
    q = commands.add_parser("quantize", help="INT8 copy of an entry written by train")
    q.add_argument("--model", type=Path, required=True, help="e.g. models/digits")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = {"train": _train, "onnx": _onnx, "quantize": _quantize}[args.command]
    try:
        return run(args)
    except (DatasetError, SpecError, ExportError, FileNotFoundError) as exc:
        print(f"cnnserve export {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
