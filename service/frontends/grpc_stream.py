"""One ModelStreamInfer call (Triton's bidirectional streaming): a reader task runs each
request as it arrives, so a stream's requests batch with each other and with unary ones;
answers leave in request order. On drain the accepted requests are answered, then the
stream ends (OK). Owned by the call: `aclose` cancels what is still running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from service.v2 import grpc_service_pb2 as pb

Answer = Callable[[object], Awaitable[pb.ModelStreamInferResponse]]
_END = None  # ends a stream's answers (the client closed its side, or a drain)


class InferenceStream:
    def __init__(self, requests: AsyncIterator[object], answer: Answer) -> None:
        self._requests = requests
        self._answer = answer  # one request -> its answer (never raises but when cancelled)
        self._order: asyncio.Queue[asyncio.Future[pb.ModelStreamInferResponse] | None] = (
            asyncio.Queue()
        )
        self._reader: asyncio.Task[None] | None = None
        self._running: set[asyncio.Future[pb.ModelStreamInferResponse]] = set()

    def drain(self) -> None:
        """Answer what was accepted, then end the stream."""
        self._order.put_nowait(_END)

    async def answers(self) -> AsyncIterator[pb.ModelStreamInferResponse]:
        self._reader = asyncio.create_task(self._read())
        while (answer := await self._order.get()) is not _END:
            yield await answer

    async def _read(self) -> None:
        try:
            async for request in self._requests:
                answer = asyncio.ensure_future(self._answer(request))
                self._running.add(answer)
                answer.add_done_callback(self._running.discard)
                self._order.put_nowait(answer)
        finally:
            self._order.put_nowait(_END)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for answer in list(self._running):
            answer.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)


def stream_error(request_id: str, message: str) -> pb.ModelStreamInferResponse:
    """Triton puts a request's failure in error_message; the id says which request."""
    answer = pb.ModelStreamInferResponse(error_message=message)
    answer.infer_response.id = request_id
    return answer
