"""One exception hierarchy for the whole service.

Every error that can reach a client carries its status code: gRPC's canonical code names,
as a plain enum, so the core never imports a protocol library. Modules raise these
classes; each front end turns them into its protocol's status at one boundary (the gRPC
servicer: `grpc.StatusCode[code.value]`), so which failure gets which code lives here.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """The canonical status codes cnnserve answers with (gRPC's names and meanings)."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class CnnserveError(Exception):
    """Base class: a failure with the status code a client should see."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CnnserveError):
    """The client's request is malformed or does not match the model signature."""

    code = Code.INVALID_ARGUMENT


class NotFound(CnnserveError):
    """Unknown model, version or output name."""

    code = Code.NOT_FOUND


class Unavailable(CnnserveError):
    """The model or server exists but cannot serve now (not ready, draining)."""

    code = Code.UNAVAILABLE


class ResourceExhausted(CnnserveError):
    """Backpressure: the queue is full or a message is too large."""

    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceeded(CnnserveError):
    """The request's deadline passed before it could be computed."""

    code = Code.DEADLINE_EXCEEDED


class InternalError(CnnserveError):
    """A fault on our side (e.g. onnxruntime raised while running a batch)."""

    code = Code.INTERNAL


class ConfigError(CnnserveError):
    """A model config or server setting is invalid; raised at load, never per request."""

    code = Code.FAILED_PRECONDITION


class FailedPrecondition(CnnserveError):
    """The request is valid but the server is not in a state to do it (e.g. model control
    disabled)."""

    code = Code.FAILED_PRECONDITION


class AlreadyExists(CnnserveError):
    """The thing to create is there already (a shared memory region of that name)."""

    code = Code.ALREADY_EXISTS


class Unauthenticated(CnnserveError):
    """A missing or wrong bearer token."""

    code = Code.UNAUTHENTICATED


class ModelLoadError(CnnserveError):
    """A model file could not be loaded; the model is reported not ready with this reason."""

    code = Code.UNAVAILABLE


class RemoteError(CnnserveError):
    """A failure another cnnserve process answered with (a worker, through the supervisor),
    carrying that answer's status code."""

    def __init__(self, message: str, code: Code) -> None:
        super().__init__(message)
        self.code = code
