"""The KServe v2 REST front end (Triton's HTTP endpoints) on the server's event loop.

aiohttp's server runs on the same loop as gRPC and calls the same core (InferenceCore:
leases, drain, deadlines, batcher, metrics); service/frontends/http_codec.py turns bodies into the
same records. Chosen by measurement (`python -m bench.investigations.http_stack`, bench/README.md,
"HTTP/REST"): aiohttp and uvicorn + starlette cost the same server CPU per request within
noise (99 vs 108 us, and 111 vs 97 in another run, for a trivial JSON handler at c=32),
and aiohttp embeds in a running loop without taking over
the process's signals, which the drain needs. `_errors` is the one place where errors
become HTTP statuses, with Triton's `{"error": "..."}` body.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from service import __version__
from service.configuration.settings import TlsSettings, read_tls_file
from service.frontends.http_codec import HEADER_LENGTH, decode_infer, encode_infer, split_body
from service.frontends.http_connections import ConnectionLog
from service.frontends.http_shared_memory import add_shared_memory_routes
from service.frontends.http_status import error_response
from service.frontends.triton_config import (
    EXTENSIONS,
    SERVER_NAME,
    metadata_parameters,
    model_config_message,
    statistics_response,
)
from service.serving.fleet import Fleet
from service.serving.inference import InferenceCore
from service.serving.model import ServedModel
from service.telemetry.metrics import Metrics
from service.tensors.errors import CnnserveError, Code, ConfigError, InvalidArgument, Unavailable
from service.tensors.records import DecodedRequest, NamedOutputs

log = logging.getLogger(__name__)

HTTP_EXTENSIONS = sorted(("binary_tensor_data", *EXTENSIONS))
OPEN_PATHS = ("/v2/health/",)  # probes need no token, as gRPC health
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CnnserveError as exc:
        return error_response(exc.code, exc.message)
    except web.HTTPException as exc:  # aiohttp's own answers: 404 path, 405, 413 body
        if exc.status < 400:
            raise
        return web.json_response({"error": f"{exc.reason}: {request.path}"}, status=exc.status)
    except Exception as exc:  # a bug: never let it look like a client error
        log.exception("internal error in %s %s", request.method, request.path)
        return error_response(Code.INTERNAL, f"internal error: {exc}")


def _token_check(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(OPEN_PATHS):
            given = request.headers.get("Authorization")
            if given is None:
                return error_response(
                    Code.UNAUTHENTICATED, "missing 'Authorization: Bearer <token>' header"
                )
            if not hmac.compare_digest(given.encode(), expected):
                return error_response(Code.UNAUTHENTICATED, "the bearer token is not valid")
        return await handler(request)

    return check


_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _json(message: Any) -> dict[str, Any]:
    """A protobuf message as JSON, field names as in the proto and 64-bit integers as
    numbers, as Triton's REST API writes them (dims, counts, nanoseconds), not as the
    strings of the proto3 JSON mapping."""
    document: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return _int64_as_numbers(message.DESCRIPTOR, document)


def _int64_as_numbers(descriptor: Descriptor, document: dict[str, Any]) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name not in document:
            continue
        value = document[field.name]
        repeated = field.is_repeated
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                value[key] = _converted(entry, item, repeated=False)
        else:
            document[field.name] = _converted(field, value, repeated=repeated)
    return document


def _converted(field: FieldDescriptor, value: Any, *, repeated: bool) -> Any:
    if repeated:
        return [_converted(field, item, repeated=False) for item in value]
    if field.message_type is not None:
        return _int64_as_numbers(field.message_type, value)
    return int(value) if field.type in _INT64 else value


class HttpFrontEnd:
    """Routes: Triton's v2 REST API. `start` binds, `stop` closes (after the core drained)."""

    def __init__(
        self,
        core: InferenceCore,
        *,
        is_ready: Callable[[], bool],
        metrics: Metrics | None,
        max_body_bytes: int,
        tls: TlsSettings | None = None,
        auth_token: str | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._core = core
        self._repository = core.repository
        self._is_ready = is_ready
        self._metrics = metrics
        self._tls = tls
        self._reuse_port = reuse_port
        middlewares = [_errors] + ([_token_check(auth_token)] if auth_token else [])
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
        self._routes()
        self._runner: web.AppRunner | None = None
        self.port = 0
        # A worker's own loopback port (the supervisor's way to reach this worker, not the
        # shared one): repository calls arriving there act here only, never fan out.
        self.worker_port: int | None = None

    def _routes(self) -> None:
        get, post = self.app.router.add_get, self.app.router.add_post
        get("/v2", self.server_metadata)
        get("/v2/health/live", self.live)
        get("/v2/health/ready", self.ready)
        get("/v2/models/stats", self.statistics)
        post("/v2/repository/index", self.repository_index)
        post("/v2/repository/models/{model}/load", self.load)
        post("/v2/repository/models/{model}/unload", self.unload)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            get(base, self.model_metadata)
            get(base + "/ready", self.model_ready)
            get(base + "/config", self.model_config)
            get(base + "/stats", self.statistics)
            post(base + "/infer", self.infer)
        add_shared_memory_routes(self.app, self._core.shared_memory)

    async def start(self, host: str, port: int | None) -> int:
        """Bind `host:port` (None: only a worker's own loopback port); the bound port."""
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            logger=ConnectionLog(logging.getLogger("aiohttp.server")),  # gRPC at this port
        )
        await self._runner.setup()
        if port is not None:
            site = web.TCPSite(
                self._runner,
                host,
                port,
                ssl_context=self._ssl_context(),
                reuse_port=self._reuse_port or None,  # workers of --workers share the port
            )
            self.port = await _started(site)
        if self._core.fleet is not None:  # plain HTTP on loopback, token still checked
            self.worker_port = await _started(web.TCPSite(self._runner, "127.0.0.1", 0))
        return self.port

    def _fleet_for(self, request: web.Request) -> Fleet | None:
        """The fleet a repository call spans: a worker's, unless the call arrived on the
        worker's own port (the supervisor asking this worker); None alone."""
        fleet = self._core.fleet
        if fleet is None:
            return None
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return None if sockname is not None and sockname[1] == self.worker_port else fleet

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self._tls is None:
            return None
        tls = self._tls
        read_tls_file(tls.key, "key")  # unreadable: the same message as gRPC's
        read_tls_file(tls.cert, "certificate")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(tls.cert, tls.key)
            if tls.client_ca is not None:  # mutual TLS
                read_tls_file(tls.client_ca, "client CA")
                context.load_verify_locations(tls.client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except ssl.SSLError as exc:
            raise ConfigError(
                f"the TLS certificate, key or client CA is not usable: {exc}"
            ) from None
        return context

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- server -------------------------------------------------------------------------

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"name": SERVER_NAME, "version": __version__, "extensions": HTTP_EXTENSIONS}
        )

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self._is_ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    # -- models -------------------------------------------------------------------------

    def _model(self, request: web.Request) -> ServedModel:
        info = request.match_info
        return self._repository.get(info["model"], info.get("version", ""))

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self._model(request)
        config = model.config
        tensors = {
            kind: [
                {"name": s.name, "datatype": s.datatype, "shape": list(config.full_shape(s))}
                for s in specs
            ]
            for kind, specs in (("inputs", config.inputs), ("outputs", config.outputs))
        }
        return web.json_response(
            {
                "name": model.name,
                "versions": self._repository.versions_of(
                    request.match_info["model"], request.match_info.get("version", "")
                ),
                "platform": config.platform,
                **tensors,
                "parameters": metadata_parameters(model),
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        info = request.match_info
        self._repository.entry(info["model"])  # unknown model: 404, not "not ready"
        ready = self._repository.is_ready(info["model"], info.get("version", ""))
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    async def model_config(self, request: web.Request) -> web.Response:
        return web.json_response(_json(model_config_message(self._model(request))))

    async def statistics(self, request: web.Request) -> web.Response:
        name = request.match_info.get("model", "")
        version = request.match_info.get("version", "")
        if name:
            self._repository.get(name, version)  # 404 if unknown
        fleet = self._fleet_for(request)
        if fleet is not None:
            return web.json_response(await fleet.statistics(name, version))
        return web.json_response(_json(statistics_response(self._metrics, name, version)))

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        document, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        info = request.match_info

        def encode(
            model: ServedModel, decoded: DecodedRequest, outputs: NamedOutputs
        ) -> web.Response:
            payload, json_length = encode_infer(
                model_name=model.name,
                model_version=str(model.version),
                request=decoded,
                outputs=outputs,
                shared_memory=self._core.shared_memory,
            )
            if json_length is None:
                return web.Response(body=payload, content_type="application/json")
            return web.Response(
                body=payload,
                content_type="application/octet-stream",
                headers={HEADER_LENGTH: str(json_length)},
            )

        return await self._core.infer(
            info["model"],
            info.get("version", ""),
            lambda model: decode_infer(
                document, binary, model.check_headers, self._core.shared_memory
            ),
            encode,
            None,  # HTTP carries no deadline; Triton's `timeout` parameter still applies
            "http",
        )

    # -- repository ---------------------------------------------------------------------

    async def repository_index(self, request: web.Request) -> web.Response:
        document = await _optional_json(request)
        ready_only = document.get("ready", False) is True
        fleet = self._fleet_for(request)
        rows = (
            self._repository.index(ready_only=ready_only)
            if fleet is None
            else await fleet.index(ready_only=ready_only)
        )
        return web.json_response(
            [
                {"name": r.name, "version": r.version, "state": r.state.value, "reason": r.reason}
                for r in rows
            ]
        )

    async def load(self, request: web.Request) -> web.Response:
        document = await _optional_json(request)
        if document.get("parameters"):
            raise InvalidArgument(
                "load: parameters are not supported; put the model's files and config.yaml "
                "in the repository and load it by name"
            )
        self._repository.control_mode.require_explicit("load")
        if self._core.draining:
            raise Unavailable("the server is shutting down")
        await (self._fleet_for(request) or self._repository).load(request.match_info["model"])
        return web.json_response({})

    async def unload(self, request: web.Request) -> web.Response:
        self._repository.control_mode.require_explicit("unload")
        name = request.match_info["model"]
        await (self._fleet_for(request) or self._repository).unload(name)  # unknown: 404
        return web.json_response({})


async def _started(site: web.TCPSite) -> int:
    """Start `site`; its bound port (0 asks for any free one)."""
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return port


async def _optional_json(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    if not body:
        return {}
    document, _ = split_body(body, None)
    return document
