"""Transport security and authentication for the gRPC port.

TLS and mutual TLS come from PEM files; the bearer token is checked by a server
interceptor on every RPC except gRPC health, which stays open so that Kubernetes probes and
the container HEALTHCHECK need no secret. Metrics are on their own HTTP port.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from service.configuration.settings import TlsSettings, read_tls_file
from service.tensors.errors import ConfigError, Unauthenticated

# Probes must answer without credentials (the token would otherwise have to be in the pod
# spec of every probe).
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    read = read_tls_file
    pair = (read(tls.key, "key"), read(tls.cert, "certificate"))
    client_ca = read(tls.client_ca, "client CA") if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _refusal(error: Unauthenticated) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode[error.code.value], error.message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Requires `authorization: Bearer <token>` metadata (constant-time comparison)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError("the auth token is empty")
        self._expected = f"Bearer {token}".encode()
        self._missing = _refusal(
            Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        )
        self._wrong = _refusal(Unauthenticated("the bearer token is not valid"))

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        sent = [value for key, value in metadata if key == "authorization"]
        if not sent:
            return self._missing
        given = sent[0].encode() if isinstance(sent[0], str) else sent[0]
        if not hmac.compare_digest(given, self._expected):
            return self._wrong
        return await continuation(handler_call_details)
