"""Which HTTP status each cnnserve status code answers with, and Triton's error body.
Its own module so the `--workers` supervisor relays workers' errors without importing the
REST front end (and the serving core under it)."""

from __future__ import annotations

from aiohttp import web

from service.tensors.errors import Code

STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.UNAUTHENTICATED: 401,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
    Code.CANCELLED: 499,
}

# The status code beside Triton's body, so a supervisor relaying a worker's answer keeps it
# (HTTP 400 alone could be INVALID_ARGUMENT or FAILED_PRECONDITION).
CODE_HEADER = "cnnserve-error-code"


def error_response(code: Code, message: str) -> web.Response:
    return web.json_response(
        {"error": message}, status=STATUS.get(code, 500), headers={CODE_HEADER: code.value}
    )
