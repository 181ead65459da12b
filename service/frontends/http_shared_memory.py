"""Triton's system shared memory extension over REST (service/serving/shared_memory.py is
the registry; the gRPC servicer serves the same calls):
GET  /v2/systemsharedmemory[/region/{name}]/status
POST /v2/systemsharedmemory/region/{name}/register   {"key", "offset", "byte_size"}
POST /v2/systemsharedmemory[/region/{name}]/unregister
Errors are CnnserveErrors, mapped to HTTP statuses by the REST app's one boundary."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.frontends.http_codec import split_body
from service.serving.shared_memory import SharedMemoryRegistry
from service.tensors.errors import InvalidArgument

BASE = "/v2/systemsharedmemory"


def add_shared_memory_routes(app: web.Application, registry: SharedMemoryRegistry) -> None:
    async def status(request: web.Request) -> web.Response:
        regions = registry.status(request.match_info.get("name", ""))
        return web.json_response(
            [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
             for r in regions]
        )  # fmt: skip

    async def register(request: web.Request) -> web.Response:
        document = await _document(request)
        key = document.get("key")
        if not isinstance(key, str):
            raise InvalidArgument("register: 'key' must be the shared memory object's name")
        offset, size = _integer(document, "offset", 0), _integer(document, "byte_size", None)
        registry.register(request.match_info["name"], key, offset, size)
        return web.json_response({})

    async def unregister(request: web.Request) -> web.Response:
        registry.unregister(request.match_info.get("name", ""))
        return web.json_response({})

    router = app.router
    router.add_get(f"{BASE}/status", status)
    router.add_get(f"{BASE}/region/{{name}}/status", status)
    router.add_post(f"{BASE}/region/{{name}}/register", register)
    router.add_post(f"{BASE}/unregister", unregister)
    router.add_post(f"{BASE}/region/{{name}}/unregister", unregister)


async def _document(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    document, _ = split_body(body, None) if body else ({}, b"")
    return document


def _integer(document: dict[str, Any], field: str, default: int | None) -> int:
    value = document.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"register: '{field}' must be an integer, got {value!r}")
    return value
