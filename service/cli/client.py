"""`cnnserve infer`: send image files, as they are, to a running server; print the top k.

No client-side preprocessing: each file's bytes go in one BYTES input (the v2 encoding),
the server decodes, resizes and normalizes them as the model declares, and the
classification extension returns "<score>:<index>:<label>" for the top k classes. Speaks
the v2 protocol with our own generated stubs, so it needs no tritonclient.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from service.tensors.tensor_contents import deserialize_bytes_tensor, serialize_bytes_tensor
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc


class ClientError(Exception):
    """What went wrong, in one line for the command line: the server's status and message,
    or that the server could not be reached."""


class UsageError(ClientError):
    """The command itself is wrong (an unreadable file, a bad option value): exit 2."""


@dataclass(frozen=True)
class ClientSecurity:
    """TLS (server verified against `ca_cert`), a client certificate for mutual TLS, and a
    bearer token; all optional."""

    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = field(default=None, repr=False)

    def channel(self, address: str) -> grpc.Channel:
        if self.ca_cert is None:
            return grpc.insecure_channel(address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )
        return grpc.secure_channel(address, credentials)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def check_reachable(address: str) -> None:
    """Say at once what gRPC would only say after its connection timeout: a URL where
    host:port is wanted (a UsageError), or a port where nothing listens."""
    if "://" in address:
        scheme, rest = address.split("://", 1)
        raise UsageError(
            f"--url takes host:port (gRPC), not a URL with '{scheme}://': "
            f"try --url {rest.rstrip('/')}"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # a name gRPC resolves itself (unix:, dns:): leave it the whole timeout
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return
    except ConnectionRefusedError:
        raise ClientError(
            f"connection refused at {address}: nothing listens there (is the server "
            "running? gRPC is port 8001 by default, REST 8000)"
        ) from None
    except OSError:
        return  # unreachable or filtered: gRPC's own wait says so


def wait_connected(channel: grpc.Channel, address: str, timeout_s: float) -> None:
    """Until the channel connects, or ClientError: refused at once, else after the timeout
    (a TLS server reached without TLS, or a port that speaks another protocol)."""
    check_reachable(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise ClientError(
            f"cannot reach {address} (no gRPC connection in {timeout_s:g} s: is it the "
            "server's gRPC port, and does it need --ca-cert?)"
        ) from None


@contextmanager
def connected(address: str, security: ClientSecurity, timeout_s: float) -> Iterator[grpc.Channel]:
    """A channel that is connected (or ClientError "cannot reach"), whose RPC errors come
    out as ClientError "<STATUS>: <message>"."""
    with security.channel(address) as channel:
        wait_connected(channel, address, timeout_s)
        try:
            yield channel
        except grpc.RpcError as exc:
            raise ClientError(f"{exc.code().name}: {exc.details()}") from None


def classify_files(
    address: str,
    model: str,
    paths: Sequence[Path],
    top_k: int,
    security: ClientSecurity = ClientSecurity(),
    timeout_s: float = 30.0,
) -> list[str]:
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    files = np.empty(len(paths), dtype=np.object_)
    try:
        files[:] = [path.read_bytes() for path in paths]
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    with connected(address, security, min(timeout_s, 10.0)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        auth = security.metadata
        metadata = stub.ModelMetadata(
            pb.ModelMetadataRequest(name=model), metadata=auth, timeout=timeout_s
        )
        if len(metadata.inputs) != 1 or len(metadata.outputs) < 1:
            raise ClientError(f"model '{model}' must have one image input")
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=metadata.inputs[0].name, datatype="BYTES", shape=[len(paths)])
        request.raw_input_contents.append(serialize_bytes_tensor(files))
        output = request.outputs.add(name=metadata.outputs[0].name)
        output.parameters["classification"].int64_param = top_k
        response = stub.ModelInfer(request, metadata=auth, timeout=timeout_s)
    shape = list(response.outputs[0].shape)
    count = int(np.prod(shape))
    ranked = deserialize_bytes_tensor("output", response.raw_output_contents[0], count)
    ranked = ranked.reshape(len(paths), -1)
    lines = []
    for path, row in zip(paths, ranked, strict=True):
        entries = []
        for item in row:
            score, index, *label = item.decode().split(":", 2)
            entries.append(f"{label[0] if label else index} {float(score):.4f}")
        lines.append(f"{path}: {', '.join(entries)}")
    return lines


def health_check(
    address: str, service: str, timeout_s: float, security: ClientSecurity = ClientSecurity()
) -> str:
    """The gRPC health status name of `service` ("" = the server): SERVING, NOT_SERVING...
    ClientError when the server cannot be reached or answers an error (NOT_FOUND for a
    model it does not know). Health needs no token, but a TLS server needs a TLS channel."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with connected(address, security, timeout_s) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # grpc's health says nothing more
                raise ClientError(
                    f"NOT_FOUND: the server has no health status for {service!r} (not a model "
                    "it serves)"
                ) from None
            raise
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
