"""The registry of served models: which versions of each model serve (the highest, or
what a config.pbtxt's version_policy selects), leases, swaps and unloads. Loading a
version is injected (`loader.VersionLoader.load`, run in a thread); polling is `poller`,
retiring `retirement`, the folder layout `layout`, entries and index rows `entries` (all
in this package). A model that fails to load is listed UNAVAILABLE with its reason, and every other
model serves. Model names are folder names: one that could leave the root is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.configuration.settings import ControlMode
from service.serving.entries import IndexEntry, ModelEntry, index_rows
from service.serving.layout import (
    MODEL_FILE,
    FileStamp,
    Latest,
    check_model_name,
    latest_on_disk,
    model_folder,
    model_folders,
    selected_versions,
)
from service.serving.model import ServedModel
from service.serving.retirement import Retirement, retire
from service.telemetry.metrics import Metrics
from service.tensors.errors import (
    CnnserveError,
    ConfigError,
    ModelLoadError,
    NotFound,
    Unavailable,
)

log = logging.getLogger(__name__)

VersionLoad = Callable[[Path, int], ServedModel]  # blocking: model folder, version -> model
ModelListener = Callable[[str, bool], Awaitable[None]]


class ModelRepository:
    """The models served, by name. A new version is loaded and warmed beside the one
    serving, then swapped in at once (one assignment on the event loop). Requests hold a
    lease on the version they started on, so the old one is closed only after its last
    request has finished. A version that fails to load leaves the one serving in place."""

    def __init__(
        self,
        root: Path,
        load_version: VersionLoad,
        metrics: Metrics | None = None,
        control_mode: ControlMode = ControlMode.NONE,
        on_change: ModelListener | None = None,
    ) -> None:
        self.root = root.resolve()
        self._load_version = load_version
        self.metrics = metrics
        self.control_mode = control_mode
        self._on_change = on_change
        self._entries: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retirement = Retirement()

    async def load_all(self) -> None:
        if not await asyncio.to_thread(self.root.is_dir):
            raise NotFound(f"model repository {self.root} is not a directory")
        for name in await asyncio.to_thread(model_folders, self.root):
            await self.load_logged(name)

    async def load_logged(self, name: str) -> None:
        """Load at start-up or on a poll: a failure is recorded and logged, not raised."""
        try:
            await self.load(name)
        except CnnserveError as exc:
            log.error("%s", exc.message)
            self._entries.setdefault(name, ModelEntry(name, exc.message))

    async def load(self, name: str) -> None:
        """Load (or reload) the versions of `name` to serve (the highest, or what its
        version_policy selects); raise why if one cannot. A version that fails leaves what
        serves in place; versions no longer selected retire once every selected one serves."""
        model_dir = await asyncio.to_thread(model_folder, self.root, name)  # checks the name
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self._entries.setdefault(name, ModelEntry(name))
            try:
                selection = await asyncio.to_thread(selected_versions, model_dir)
            except ConfigError as exc:  # recorded against the files on disk, retried on change
                found = await asyncio.to_thread(latest_on_disk, model_dir) or Latest(0, ())
                raise self._load_failed(entry, found.version, found.stamp, exc) from exc
            if not selection:
                entry.reason = f"no version folder with {MODEL_FILE} under {model_dir}"
                raise ModelLoadError(f"model {name} not loaded: {entry.reason}")
            if entry.serves(selection):
                return
            failure = None
            for selected in selection:
                if not entry.serves_as_is(selected):
                    failure = await self._load_one(entry, model_dir, selected) or failure
            if failure is not None:
                raise failure
            for version in sorted(set(entry.versions) - {s.version for s in selection}):
                log.info("model %s version %d: no longer selected, retired", name, version)
                entry.stamps.pop(version, None)
                self._retirement.later(entry.versions.pop(version), out_of_service=False)

    async def _load_one(
        self, entry: ModelEntry, model_dir: Path, selected: Latest
    ) -> ModelLoadError | None:
        """Load one version and swap it in; the failure (not raised) if it cannot."""
        try:
            fresh = await asyncio.to_thread(self._load_version, model_dir, selected.version)
            await fresh.start()
        except CnnserveError as exc:
            return self._load_failed(entry, selected.version, selected.stamp, exc)
        first = not entry.versions
        replaced = entry.versions.get(selected.version)
        self._swap_in(entry, fresh, selected.stamp)
        await self._notify(entry.name, True)
        if replaced is not None:
            self._retirement.later(replaced, out_of_service=False)  # trims the heap after
        elif first:  # a first load frees its reading and timing buffers: give them back too
            self._retirement.release_heap_later()
        return None

    def _load_failed(
        self, entry: ModelEntry, version: int, stamp: FileStamp, exc: CnnserveError
    ) -> ModelLoadError:
        entry.failures[version] = (exc.message, stamp)
        served = entry.served
        if served is None:
            entry.reason = exc.message
            if self.metrics is not None:
                self.metrics.model_ready.labels(entry.name, str(version)).set(0)
        keeps = f"; version {served.version} keeps serving" if served else ""
        return ModelLoadError(
            f"model {entry.name} version {version} not loaded: {exc.message}{keeps}"
        )

    def _swap_in(self, entry: ModelEntry, fresh: ServedModel, stamp: FileStamp) -> None:
        """One assignment on the event loop: the next request leases the new version."""
        entry.versions[fresh.version], entry.stamps[fresh.version] = fresh, stamp
        entry.reason = ""
        entry.failures.pop(fresh.version, None)
        if fresh.metrics is not None:
            fresh.metrics.activate(fresh.scheduler, fresh.load_seconds)
        name = entry.name
        fresh.scheduler.add_failure_listener(
            lambda reason: self._scheduler_failed(name, fresh, reason)
        )
        log.info("model %s version %d serving", name, fresh.version)

    def _scheduler_failed(self, name: str, served: ServedModel, reason: str) -> None:
        """A serving version's scheduler died (it failed its queue and refuses requests):
        out of service with the reason, as a failed load; retried as a failed load is."""
        entry = self._entries.get(name)
        if entry is None or entry.versions.get(served.version) is not served:
            return  # already replaced or retired
        del entry.versions[served.version]
        entry.failures[served.version] = (reason, entry.stamps.pop(served.version, ()))
        if not entry.versions:
            entry.reason = reason
            self._retirement.track(self._notify(name, False))
        self._retirement.later(served, out_of_service=True)

    async def unload(self, name: str, reason: str = "unloaded") -> None:
        """Stop serving `name`: new requests get UNAVAILABLE; accepted ones finish first."""
        check_model_name(name)  # the same name checks as load
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.entry(name)
            retiring = list(entry.versions.values())
            entry.versions.clear()
            entry.stamps.clear()
            entry.reason = reason
            await self._notify(name, False)
            for served in retiring:
                await retire(served, out_of_service=True)
        log.info("model %s unloaded", name)

    async def _notify(self, name: str, ready: bool) -> None:
        if self._on_change is not None:
            await self._on_change(name, ready)

    def find(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Per model and version: READY, or UNAVAILABLE with the reason (Triton's index)."""
        return index_rows(self._entries, ready_only=ready_only)

    def entry(self, name: str) -> ModelEntry:
        found = self._entries.get(name)
        if found is None:
            raise NotFound(f"unknown model '{name}'; the repository serves {sorted(self._entries)}")
        return found

    def get(self, name: str, version: str = "") -> ServedModel:
        """The served model for a request, or NotFound / Unavailable saying why not."""
        entry = self.entry(name)
        served = entry.served
        if served is None:
            raise Unavailable(f"model '{name}' is not ready: {entry.reason}")
        if not version:
            return served
        chosen = entry.versions.get(int(version)) if version.isdigit() else None
        if chosen is None:
            raise NotFound(
                f"model '{name}' version '{version}' is not served (served versions: "
                f"{', '.join(map(str, sorted(entry.versions)))})"
            )
        return chosen

    def versions_of(self, name: str, version: str = "") -> list[str]:
        """ModelMetadata's `versions`: the one asked for, or every version serving."""
        entry = self.entry(name)
        return [version] if version else [str(v) for v in sorted(entry.versions)]

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except CnnserveError:
            return False
        return True

    async def wait_retired(self) -> None:
        """Until every version taken out of service has been closed and released."""
        await self._retirement.wait()

    async def aclose(self) -> None:
        await self.wait_retired()
        for entry in self._entries.values():
            for served in entry.versions.values():
                await served.aclose()
