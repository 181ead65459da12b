"""The repository controls a front end answers for a whole fleet of worker processes.

With `cnnserve serve --workers N`, a client's RepositoryModelLoad lands on one worker (its
connection's), but it must reach every worker, and ModelStatistics and the repository index
must describe all of them. A worker's front ends hand those four calls to a `Fleet`
(service/workers/fleet_client.py: over loopback HTTP to the supervisor, which asks each worker and
merges). Alone (no `--workers`) there is no fleet and the front ends answer from their own
repository and metrics.
"""

from __future__ import annotations

from typing import Any, Protocol

from service.serving.entries import IndexEntry
from service.serving.repository import ModelRepository


class Fleet(Protocol):
    """Each call answers when every worker has answered; a failure on any worker raises a
    CnnserveError naming the workers that failed."""

    async def join(self, repository: ModelRepository) -> None:
        """Before this worker serves: apply the loads and unloads the fleet has done since
        it started (a replaced worker serves what the others serve)."""
        ...

    async def load(self, name: str) -> None: ...

    async def unload(self, name: str) -> None: ...

    async def index(self, *, ready_only: bool) -> list[IndexEntry]: ...

    async def statistics(self, name: str, version: str) -> dict[str, Any]:
        """Triton's ModelStatisticsResponse as JSON (int64s as numbers), summed."""
        ...
