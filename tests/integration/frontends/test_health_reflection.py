from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.serving import ServerThread


def test_health_for_server_and_model(example_server: ServerThread) -> None:
    with grpc.insecure_channel(example_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "digits"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        try:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
            raise AssertionError("unknown service must not be SERVING")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND


def test_corrupt_model_health_is_not_serving(awkward_server: ServerThread) -> None:
    with grpc.insecure_channel(awkward_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="broken"))
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_services(example_server: ServerThread) -> None:
    with grpc.insecure_channel(example_server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]))))
        names = {s.name for s in response.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
