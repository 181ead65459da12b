"""A model's entry in the registry (what serves, why not, what failed) and the rows of
the repository index built from the entries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    # The versions serving now (several under a config.pbtxt's version_policy), each with
    # the stamp of the files it was loaded from.
    versions: dict[int, ServedModel] = field(default_factory=dict)
    stamps: dict[int, FileStamp] = field(default_factory=dict)
    # Failed versions: why, and the files that failed (the poller retries once they change).
    failures: dict[int, tuple[str, FileStamp]] = field(default_factory=dict)

    @property
    def served(self) -> ServedModel | None:
        """The highest version serving: what a request that names no version gets."""
        return self.versions[max(self.versions)] if self.versions else None

    @property
    def state(self) -> ModelState:
        return ModelState.READY if self.versions else ModelState.UNAVAILABLE

    def serves_as_is(self, selected: Latest) -> bool:
        return selected.version in self.versions and self.stamps.get(selected.version) == (
            selected.stamp
        )

    def serves(self, selection: Sequence[Latest]) -> bool:
        """Already serving exactly these versions, from exactly these files."""
        return bool(selection) and self.stamps == {s.version: s.stamp for s in selection}

    def failed_as(self, selection: Sequence[Latest]) -> bool:
        """Every selected version not serving as it is already failed with these very
        files (retried once they change)."""
        pending = [s for s in selection if not self.serves_as_is(s)]
        return bool(pending) and all(
            self.failures.get(s.version, ("", None))[1] == s.stamp for s in pending
        )


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
        for version in sorted(entry.versions):
            rows.append(IndexEntry(name, str(version), ModelState.READY, ""))
        if ready_only:
            continue
        for version, (reason, _) in sorted(entry.failures.items()):
            if version not in entry.versions:
                rows.append(IndexEntry(name, str(version), ModelState.UNAVAILABLE, reason))
        if not entry.versions and not entry.failures:
            rows.append(IndexEntry(name, "", ModelState.UNAVAILABLE, entry.reason))
    return rows
