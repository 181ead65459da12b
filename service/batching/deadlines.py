"""A request's deadline on the event loop's monotonic clock: the earliest of the
protocol's own deadline (gRPC's), Triton's `timeout` parameter and the model's default.
Protocol-neutral: every front end computes it the same way."""

from __future__ import annotations

import asyncio

from service.tensors.errors import InvalidArgument
from service.tensors.records import ParamValue

# Triton's schedule-policy extension: a per-request timeout in microseconds.
TIMEOUT_PARAMETER = "timeout"


def request_deadline(
    grpc_remaining_s: float | None, timeout_param: ParamValue | None, default_timeout_us: int
) -> float | None:
    """The earliest of the gRPC deadline, the `timeout` parameter and the model's default,
    on the event loop's monotonic clock; None when none applies."""
    budgets: list[float] = []
    if grpc_remaining_s is not None:
        budgets.append(grpc_remaining_s)
    if timeout_param is not None:
        if isinstance(timeout_param, bool) or not isinstance(timeout_param, int):
            raise InvalidArgument(
                f"parameter '{TIMEOUT_PARAMETER}' must be an int64 number of microseconds, "
                f"got {timeout_param!r}"
            )
        if timeout_param < 0:
            raise InvalidArgument(f"parameter '{TIMEOUT_PARAMETER}' must be >= 0")
        if timeout_param > 0:
            budgets.append(timeout_param / 1e6)
    elif default_timeout_us > 0:
        budgets.append(default_timeout_us / 1e6)
    if not budgets:
        return None
    return asyncio.get_running_loop().time() + min(budgets)
