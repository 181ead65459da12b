"""The state of one bench/gpu.py run: its plan (sizes and windows), budget and report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Plan:
    """Sizes and windows: the GPU's, or --allow-cpu's small ones."""

    device: str
    models: tuple[str, ...]  # resnet50_fp32, resnet50_fp16
    batches: tuple[int, ...]
    concurrency: tuple[int, ...]
    served_s: float
    warmup_s: float
    in_process_s: float
    reloads: int
    workers: tuple[int, ...]
    clients: int  # client processes
    algo_batches: tuple[int, ...]
    io_batches: tuple[int, ...]
    preprocessing_concurrency: tuple[int, ...]
    workers_concurrency: int
    photos_s: float

    @property
    def max_batch(self) -> int:
        return max(self.batches)

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"


def gpu_plan(cores: int) -> Plan:
    return Plan(
        device="cuda", models=("resnet50_fp32", "resnet50_fp16"),
        batches=(1, 2, 4, 8, 16, 32, 64, 128), concurrency=(1, 8, 32, 128, 256),
        served_s=4.0, warmup_s=1.5, in_process_s=1.0, reloads=10, workers=(1, 2, 4),
        clients=max(2, min(8, cores // 2)), algo_batches=(1, 8, 32, 128),
        io_batches=(1, 32, 128), preprocessing_concurrency=(32, 128), workers_concurrency=128,
        photos_s=3.0,
    )  # fmt: skip


def cpu_plan() -> Plan:
    return Plan(
        device="cpu", models=("resnet50_fp32",), batches=(1, 2), concurrency=(1, 4),
        served_s=1.0, warmup_s=0.5, in_process_s=0.2, reloads=2, workers=(1, 2), clients=2,
        algo_batches=(1, 2), io_batches=(1, 2), preprocessing_concurrency=(4,),
        workers_concurrency=4, photos_s=1.0,
    )  # fmt: skip


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


@dataclass
class Report:
    """Markdown to stdout and to OUT/gpu.md, rewritten after every section."""

    out: Path | None
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
        self.lines += lines
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "gpu.md").write_text("\n".join(self.lines) + "\n")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.add(
            "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows), "",
        )  # fmt: skip

    def criterion(self, name: str, ok: bool | None, detail: str) -> None:
        verdict = "not applicable here" if ok is None else ("pass" if ok else "FAIL")
        self.add(f"criterion: {name}: {detail}: {verdict}")
        if ok is False:
            self.failures.append(name)


@dataclass
class GpuRun:
    plan: Plan
    report: Report
    deadline: Deadline
    work: Path  # models and scratch files

    def fits(self, title: str, estimate_s: float) -> bool:
        self.report.add("", f"## {title}")
        left = self.deadline.left()
        if left < estimate_s:
            self.report.add(
                f"skipped: {left:.0f} s of the budget left, needs about {estimate_s:.0f} s"
            )
            return False
        return True
