"""Poll mode: rescan the repository folder every interval; load new models and changed
versions, unload removed models. A version that failed is retried only once its
files change. The scan runs in a thread (it lists folders and stats files)."""

from __future__ import annotations

import asyncio
import logging

from service.serving.layout import Latest, scan
from service.serving.repository import ModelRepository

log = logging.getLogger(__name__)


class RepositoryPoller:
    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository
        # One poll at a time: two overlapping polls both scan before either has recorded a
        # failure, and both load the same broken version (a test caught it).
        self._polling = asyncio.Lock()

    def _up_to_date(self, name: str, selection: list[Latest]) -> bool:
        """Serving exactly these files, or they already failed as they are."""
        entry = self._repository.find(name)
        return entry is not None and (entry.serves(selection) or entry.failed_as(selection))

    async def poll_once(self) -> None:
        async with self._polling:
            await self._poll()

    async def _poll(self) -> None:
        repository = self._repository
        found = await asyncio.to_thread(scan, repository.root)
        for name, selection in found.items():
            if selection and not self._up_to_date(name, selection):
                await repository.load_logged(name)
        for entry in repository.entries():
            if entry.name not in found and entry.served is not None:
                await repository.unload(entry.name, "removed from the model repository")

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)  # the poll period itself, not synchronisation
            try:
                await self.poll_once()
            except OSError as exc:  # the repository folder vanished or is unreadable
                log.error("model repository poll failed: %s", exc)
