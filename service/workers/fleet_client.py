"""A worker's Fleet (service/serving/fleet.py): repository calls that span every worker go
to the supervisor over loopback HTTP (aiohttp, the REST front end's library), which asks
every worker (this one too, on its own port) and merges the answers."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from service.frontends.http_status import CODE_HEADER
from service.serving.entries import IndexEntry, ModelState
from service.serving.repository import ModelRepository
from service.tensors.errors import Code, RemoteError, Unavailable
from service.workers.link import SECRET_HEADER, WorkerLink


class SupervisorFleet:
    """Each call is one request to the supervisor; its failure status is kept."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on the loop that uses it
            self._session = aiohttp.ClientSession(
                base_url=self.link.control_url,
                headers={SECRET_HEADER: self.link.secret},
                timeout=aiohttp.ClientTimeout(total=None),  # a load takes what it takes
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self._client().request(method, path, **kwargs) as answer:
                document = await answer.json(content_type=None)
                if answer.status != 200:
                    code = Code(answer.headers.get(CODE_HEADER, Code.INTERNAL.value))
                    raise RemoteError(document.get("error", str(document)), code)
                return document
        except aiohttp.ClientError as exc:
            raise Unavailable(f"the supervisor cannot be reached: {exc}") from None

    async def register(self, *, pid: int, worker_port: int, metrics_port: int | None,
                       banner: list[str]) -> None:  # fmt: skip
        """Tell the supervisor this worker serves (and where to reach it)."""
        await self._call(
            "POST",
            "/fleet/workers",
            json={
                "slot": self.link.slot,
                "pid": pid,
                "worker_port": worker_port,
                "metrics_port": metrics_port,
                "banner": banner,
            },
        )

    async def join(self, repository: ModelRepository) -> None:
        for step in await self._call("GET", "/fleet/state"):
            name = step["name"]
            if step["op"] == "load":
                await repository.load_logged(name)
            elif repository.find(name) is not None:
                await repository.unload(name)

    async def load(self, name: str) -> None:
        await self._call("POST", f"/fleet/models/{quote(name, safe='')}/load")

    async def unload(self, name: str) -> None:
        await self._call("POST", f"/fleet/models/{quote(name, safe='')}/unload")

    async def index(self, *, ready_only: bool) -> list[IndexEntry]:
        rows = await self._call("POST", "/fleet/index", json={"ready": ready_only})
        return [
            IndexEntry(row["name"], row["version"], ModelState(row["state"]), row["reason"])
            for row in rows
        ]

    async def statistics(self, name: str, version: str) -> dict[str, Any]:
        summed: dict[str, Any] = await self._call(
            "GET", "/fleet/stats", params={"model": name, "version": version}
        )
        return summed
