"""The REST port's connection log says a gRPC client's mistake once per peer and minute."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from service.frontends.http_connections import EVERY_S, ConnectionLog


def test_http2_at_the_rest_port_is_one_warning_per_peer_and_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = ConnectionLog(logging.getLogger("test.connections"), clock=lambda: now[0])
    preface = BadHttpMessage("Pause on PRI/Upgrade:")
    with caplog.at_level(logging.DEBUG, "test.connections"):
        for peer in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
            log.exception("Error handling request from %s", peer, exc_info=preface)
        now[0] += EVERY_S
        log.exception("Error handling request from %s", "10.0.0.1", exc_info=preface)
        other = ValueError("a real fault")
        log.exception("Error handling request from %s", "10.0.0.1", exc_info=other)
        log.debug("passes through")
    said = [(r.levelname, r.getMessage().split(" spoke")[0]) for r in caplog.records]
    assert said == [
        ("WARNING", "a client at 10.0.0.1"),
        ("WARNING", "a client at 10.0.0.2"),
        ("WARNING", "a client at 10.0.0.1"),  # a minute later
        ("ERROR", "Error handling request from 10.0.0.1"),  # anything else: unchanged
        ("DEBUG", "passes through"),
    ]
    assert caplog.records[3].exc_info is not None
