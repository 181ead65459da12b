"""The KServe v2 servicer: decode, call the core, encode. Nothing else.

`_boundary` is the one place where exceptions become gRPC statuses: a `CnnserveError`
keeps its code and message; anything else is a bug on our side, logged with its
traceback and answered INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from service import __version__
from service.frontends.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    set_parameter,
)
from service.frontends.grpc_stream import InferenceStream, stream_error
from service.frontends.triton_config import (
    EXTENSIONS,
    SERVER_NAME,
    metadata_parameters,
    model_config_message,
    statistics_response,
)
from service.serving.inference import InferenceCore
from service.serving.model import ServedModel
from service.tensors.errors import CnnserveError, Code, InvalidArgument, NotFound, Unavailable
from service.tensors.records import DecodedRequest, NamedOutputs
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[["InferenceServicer", Req, Context], Awaitable[Resp]]


def grpc_status(code: Code) -> grpc.StatusCode:
    """Our codes are gRPC's canonical names: the one translation, at the gRPC boundary."""
    return grpc.StatusCode[code.value]


class UndecodableRequest:
    """Stands in for a request whose bytes are not a valid protobuf message.

    grpc's own deserializer failure would surface as UNKNOWN; handing this object to the
    handler lets the boundary answer INVALID_ARGUMENT like every other client mistake.
    """

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return parse(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc))

    return deserialize


def _boundary(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(handler)
    async def wrapped(self: InferenceServicer, request: Req, context: Context) -> Resp:
        try:
            if isinstance(request, UndecodableRequest):
                raise InvalidArgument(f"request is not a valid protobuf message: {request.error}")
            return await handler(self, request, context)
        except CnnserveError as exc:
            await context.abort(grpc_status(exc.code), exc.message)
        except Exception as exc:  # a bug: never let it look like a client error
            log.exception("internal error in %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        raise AssertionError("unreachable: context.abort raises")

    return wrapped


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore, *, is_ready: Callable[[], bool]) -> None:
        self._core = core
        self._repository = core.repository
        self._is_ready = is_ready
        self._metrics = core.metrics
        self._streams: set[InferenceStream] = set()  # open ModelStreamInfer calls

    async def drain(self, timeout_s: float) -> bool:
        """Streams answer what they accepted, then end; new inferences are refused
        (UNAVAILABLE) while the accepted ones finish (InferenceCore.drain). The connections
        stay open meanwhile, so a load balancer in front gets a clean gRPC status for every
        request instead of a stream reset racing the server's GOAWAY."""
        for stream in self._streams:
            stream.drain()  # answer what was accepted, then end the stream
        return await self._core.drain(timeout_s)

    @_boundary
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_boundary
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._is_ready())

    @_boundary
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        self._repository.entry(request.name)  # unknown model: NOT_FOUND, not "false"
        return pb.ModelReadyResponse(ready=self._repository.is_ready(request.name, request.version))

    @_boundary
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS)
        )

    @_boundary
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        model = self._repository.get(request.name, request.version)
        config = model.config
        response = pb.ModelMetadataResponse(
            name=config.name,
            versions=self._repository.versions_of(request.name, request.version),
            platform=config.platform,
        )
        for spec in config.inputs:
            response.inputs.add(
                name=spec.name, datatype=spec.datatype, shape=config.full_shape(spec)
            )
        for spec in config.outputs:
            response.outputs.add(
                name=spec.name, datatype=spec.datatype, shape=config.full_shape(spec)
            )
        for key, value in metadata_parameters(model).items():
            set_parameter(response.parameters[key], value)
        return response

    @_boundary
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        model = self._repository.get(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config_message(model))

    @_boundary
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        return await self._infer(request, context.time_remaining())

    async def _infer(
        self, request: pb.ModelInferRequest, time_remaining: float | None
    ) -> pb.ModelInferResponse:
        """One inference, unary or on a stream, through the shared core."""
        return await self._core.infer(
            request.model_name,
            request.model_version,
            lambda model: decode_infer_request(
                request, model.check_headers, self._core.shared_memory
            ),
            self._encode,
            time_remaining,
            "grpc",
        )

    def _encode(
        self, model: ServedModel, decoded: DecodedRequest, outputs: NamedOutputs
    ) -> pb.ModelInferResponse:
        return encode_infer_response(
            model_name=model.name,
            model_version=str(model.version),
            request_id=decoded.id,
            outputs=outputs,
            requested=decoded.outputs,
            shared_memory=self._core.shared_memory,
        )

    # -- system shared memory (Triton's extension; service/serving/shared_memory.py) -------

    @_boundary
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self._core.shared_memory.status(request.name):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset,
                    byte_size=region.byte_size,
                )
            )  # fmt: skip
        return response

    @_boundary
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._core.shared_memory.register(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    @_boundary
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._core.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def ModelStreamInfer(
        self, requests: AsyncIterator[object], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's bidirectional stream: requests are run as they arrive (so a stream's
        requests batch together), answers go out in request order, each with its request's
        id; a failed request answers `error_message` and the stream goes on. On drain the
        accepted requests are answered, then the stream ends (OK)."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
        stream = InferenceStream(requests, lambda request: self._stream_answer(request, deadline))
        if self._core.draining:  # opened during a drain: it ends at once, as calls are refused
            stream.drain()
        self._streams.add(stream)
        try:
            async for answer in stream.answers():
                yield answer
        finally:
            self._streams.discard(stream)
            await stream.aclose()

    async def _stream_answer(
        self, request: object, deadline: float | None
    ) -> pb.ModelStreamInferResponse:
        """One streamed request's answer; its failure is an error_message, never the
        stream's (Triton's field has no status code, so the message starts with it)."""
        request_id = ""
        try:
            if isinstance(request, UndecodableRequest):
                raise InvalidArgument(f"request is not a valid protobuf message: {request.error}")
            assert isinstance(request, pb.ModelInferRequest)
            request_id = request.id
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            response = await self._infer(request, left)
        except CnnserveError as exc:
            return stream_error(request_id, f"{exc.code.value}: {exc.message}")
        except Exception as exc:  # a bug: the stream reports it and goes on
            log.exception("internal error in ModelStreamInfer")
            return stream_error(request_id, f"INTERNAL: internal error: {exc}")
        return pb.ModelStreamInferResponse(infer_response=response)

    @_boundary
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            self._repository.get(request.name, request.version)  # NOT_FOUND if unknown
        fleet = self._core.fleet
        if fleet is not None:  # every worker's, summed
            summed = await fleet.statistics(request.name, request.version)
            return json_format.ParseDict(summed, pb.ModelStatisticsResponse())
        return statistics_response(self._metrics, request.name, request.version)

    @_boundary
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        _check_repository_name(request.repository_name)
        response = pb.RepositoryIndexResponse()
        fleet = self._core.fleet
        rows = (
            self._repository.index(ready_only=request.ready)
            if fleet is None
            else await fleet.index(ready_only=request.ready)  # agreed across the workers
        )
        for row in rows:
            response.models.add(
                name=row.name, version=row.version, state=row.state.value, reason=row.reason
            )
        return response

    @_boundary
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        _check_repository_name(request.repository_name)
        _refuse_parameters("RepositoryModelLoad", request.parameters)
        self._repository.control_mode.require_explicit("load")
        if self._core.draining:
            raise Unavailable("the server is shutting down")
        fleet = self._core.fleet
        await (fleet or self._repository).load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_boundary
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        _check_repository_name(request.repository_name)
        _refuse_parameters("RepositoryModelUnload", request.parameters)
        self._repository.control_mode.require_explicit("unload")
        await (self._core.fleet or self._repository).unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _check_repository_name(name: str) -> None:
    if name:  # one repository per server: only "" (any) is meaningful
        raise NotFound(f"unknown repository '{name}': cnnserve serves one, named ''")


def _refuse_parameters(method: str, parameters: Mapping[str, pb.ModelRepositoryParameter]) -> None:
    """Triton's `config` and `file:` overrides are not supported: say so rather than
    silently loading something other than what the client asked for."""
    # tritonclient's unload_model always sends unload_dependents=false: harmless.
    unsupported = sorted(k for k in parameters if k != "unload_dependents")
    if unsupported:
        raise InvalidArgument(
            f"{method}: parameters {unsupported} are not supported; put the model's files "
            "and config.yaml in the repository and load it by name"
        )


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register every method of the v2 service with tolerant request deserializers."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(request_type.FromString),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
