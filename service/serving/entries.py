"""A model's entry in the registry (what serves, why not, what failed) and the rows of
the repository index built from the entries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from service.serving.layout import FileStamp, Latest
from service.serving.model import ServedModel


class ModelState(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelEntry:
    name: str
    reason: str = ""
    served: ServedModel | None = None
    stamp: FileStamp = ()  # of the served version's files
    # Failed versions: why, and the files that failed (the poller retries once they change).
    failures: dict[int, tuple[str, FileStamp]] = field(default_factory=dict)

    @property
    def state(self) -> ModelState:
        return ModelState.READY if self.served is not None else ModelState.UNAVAILABLE

    def serves(self, latest: Latest) -> bool:
        """Already serving exactly these files."""
        served = self.served
        return (
            served is not None and served.version == latest.version and self.stamp == latest.stamp
        )

    def failed_as(self, latest: Latest) -> bool:
        """These very files already failed to load (retried once they change)."""
        failed = self.failures.get(latest.version)
        return failed is not None and failed[1] == latest.stamp


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: ModelState
    reason: str


def index_rows(entries: Mapping[str, ModelEntry], *, ready_only: bool) -> list[IndexEntry]:
    """Per model and version: READY, or UNAVAILABLE with the reason (Triton's index)."""
    rows: list[IndexEntry] = []
    for name, entry in sorted(entries.items()):
        served = entry.served
        if served is not None:
            rows.append(IndexEntry(name, str(served.version), ModelState.READY, ""))
        if ready_only:
            continue
        for version, (reason, _) in sorted(entry.failures.items()):
            if served is None or version != served.version:
                rows.append(IndexEntry(name, str(version), ModelState.UNAVAILABLE, reason))
        if served is None and not entry.failures:
            rows.append(IndexEntry(name, "", ModelState.UNAVAILABLE, entry.reason))
    return rows
