"""The REST port's connection log: a gRPC client aimed at it is one WARNING, not tracebacks.

A gRPC client (tritonclient.grpc, perf_analyzer -i grpc) pointed at the REST port opens
with HTTP/2's preface ("PRI * HTTP/2.0"); aiohttp refuses it and logs an ERROR with a
traceback for every attempt, and gRPC retries with backoff, so one misconfigured client
fills the log. `ConnectionLog` stands in for aiohttp's `aiohttp.server` logger: that case is
said once per peer and minute as one WARNING line that names the likely mistake; every
other record goes through unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import BadHttpMessage

EVERY_S = 60.0  # one warning per peer per this many seconds
MAX_PEERS = 1024  # remembered at once; older ones are forgotten first


def is_http2_preface(error: object) -> bool:
    return isinstance(error, BadHttpMessage) and "PRI" in str(error)


class ConnectionLog:
    """Duck-types the `logging.Logger` aiohttp's request handler calls (`logger=`)."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._clock = clock
        self._warned: dict[str, float] = {}  # peer -> when it was last warned about

    def exception(self, message: str, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if is_http2_preface(exc_info):
            self._wrong_protocol(str(args[0]) if args else "an unknown peer")
            return
        self._logger.exception(message, *args, exc_info=exc_info, **kwargs)

    def _wrong_protocol(self, peer: str) -> None:
        now = self._clock()
        if now - self._warned.get(peer, float("-inf")) < EVERY_S:
            return
        if len(self._warned) >= MAX_PEERS:
            oldest = min(self._warned, key=self._warned.__getitem__)
            del self._warned[oldest]
        self._warned[peer] = now
        self._logger.warning(
            "a client at %s spoke HTTP/2 (gRPC?) to the REST port: point gRPC clients at the "
            "gRPC port (8001 by default); said once a minute per client",
            peer,
        )

    def __getattr__(self, name: str) -> Any:  # debug, warning, isEnabledFor, ...
        return getattr(self._logger, name)
