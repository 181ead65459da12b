"""The registry of served models: which version of each model serves, leases, swaps and
unloads. Loading a version is injected (`loader.VersionLoader.load`, run in a thread);
polling is `poller`, retiring `retirement`, the folder layout `layout` (all in this
package). A model that fails to load is listed UNAVAILABLE with its reason, and every other
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
    latest_version,
    model_folder,
    model_folders,
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
        """Load (or reload) the highest version of `name`; raise why if it cannot."""
        model_dir = await asyncio.to_thread(model_folder, self.root, name)  # checks the name
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self._entries.setdefault(name, ModelEntry(name))
            try:
                latest = await asyncio.to_thread(latest_version, model_dir)
            except ConfigError as exc:  # recorded against the files on disk, retried on change
                found = await asyncio.to_thread(latest_on_disk, model_dir) or Latest(0, ())
                raise self._load_failed(entry, found.version, found.stamp, exc) from exc
            if latest is None:
                entry.reason = f"no version folder with {MODEL_FILE} under {model_dir}"
                raise ModelLoadError(f"model {name} not loaded: {entry.reason}")
            served = entry.served
            if entry.serves(latest):
                return
            try:
                fresh = await asyncio.to_thread(self._load_version, model_dir, latest.version)
                await fresh.start()
            except CnnserveError as exc:
                raise self._load_failed(entry, latest.version, latest.stamp, exc) from exc
            self._swap_in(entry, fresh, latest.stamp)
            await self._notify(name, True)
            if served is not None:
                self._retirement.later(served, out_of_service=False)  # trims the heap after
            else:  # a first load frees its reading and timing buffers: give them back too
                self._retirement.release_heap_later()

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
        entry.served, entry.stamp, entry.reason = fresh, stamp, ""
        entry.failures.pop(fresh.version, None)
        if fresh.metrics is not None:
            fresh.metrics.activate(fresh.scheduler, fresh.load_seconds)
        name, version = entry.name, fresh.version
        fresh.scheduler.add_failure_listener(
            lambda reason: self._scheduler_failed(name, version, reason)
        )
        log.info("model %s version %d serving", name, version)

    def _scheduler_failed(self, name: str, version: int, reason: str) -> None:
        """The serving version's scheduler died (it failed its queue and refuses requests):
        out of service with the reason, as a failed load; retried as a failed load is."""
        entry = self._entries.get(name)
        served = None if entry is None else entry.served
        if entry is None or served is None or served.version != version:
            return
        entry.served, entry.reason = None, reason
        entry.failures[version] = (reason, entry.stamp)
        entry.stamp = ()
        self._retirement.track(self._notify(name, False))
        self._retirement.later(served, out_of_service=True)

    async def unload(self, name: str, reason: str = "unloaded") -> None:
        """Stop serving `name`: new requests get UNAVAILABLE; accepted ones finish first."""
        check_model_name(name)  # the same name checks as load
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.entry(name)
            served, entry.served, entry.stamp = entry.served, None, ()
            entry.reason = reason
            await self._notify(name, False)
            if served is not None:
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
        if entry.served is None:
            raise Unavailable(f"model '{name}' is not ready: {entry.reason}")
        served = entry.served
        if version and version != str(served.version):
            raise NotFound(
                f"model '{name}' version '{version}' is not served (served version: "
                f"{served.version})"
            )
        return served

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
            if entry.served is not None:
                await entry.served.aclose()
