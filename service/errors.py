"""One exception hierarchy for the whole service.

Every error that can reach a client carries its gRPC status code. Modules raise these
classes; `grpc_api` is the single boundary that turns them into a gRPC status, so the
mapping from failure to code lives in one place (here) and nowhere else.
"""

from __future__ import annotations

import grpc


class CnnserveError(Exception):
    """Base class: a failure with the gRPC status code a client should see."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CnnserveError):
    """The client's request is malformed or does not match the model signature."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CnnserveError):
    """Unknown model, version or output name."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(CnnserveError):
    """The model or server exists but cannot serve now (not ready, draining)."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(CnnserveError):
    """Backpressure: the queue is full or a message is too large."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(CnnserveError):
    """The request's deadline passed before it could be computed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(CnnserveError):
    """A fault on our side (e.g. onnxruntime raised while running a batch)."""

    code = grpc.StatusCode.INTERNAL


class ConfigError(CnnserveError):
    """A model config or server setting is invalid; raised at load, never per request."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class FailedPrecondition(CnnserveError):
    """The request is valid but the server is not in a state to do it (e.g. model control
    disabled)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(CnnserveError):
    """A missing or wrong bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ModelLoadError(CnnserveError):
    """A model file could not be loaded; the model is reported not ready with this reason."""

    code = grpc.StatusCode.UNAVAILABLE
