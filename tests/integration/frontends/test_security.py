"""TLS, mutual TLS, bearer-token auth and the message size limit, with certificates made in
the test and tritonclient as the client; health stays open for probes."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service.cli.client import ClientError, ClientSecurity, health_check
from service.configuration.settings import TlsSettings
from service.v2 import grpc_service_pb2 as pb
from service.v2 import grpc_service_pb2_grpc as pb_grpc
from tests.certs import Pki, make_pki
from tests.serving import running_server

PIXELS = np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1)
TOKEN = "correct horse battery staple"


@pytest.fixture()
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def infer(client: triton.InferenceServerClient, headers: dict[str, str] | None = None) -> str:
    image = triton.InferInput("image", list(PIXELS.shape), "UINT8")
    image.set_data_from_numpy(PIXELS)
    result = client.infer("digits", [image], headers=headers)
    return str(result.get_response().model_name)


def test_tls_serves_tls_clients_only(pki: Pki) -> None:
    with running_server(tls=TlsSettings(pki.server_cert, pki.server_key)) as server:
        address = server.address
        secure = triton.InferenceServerClient(address, ssl=True, root_certificates=str(pki.ca))
        assert infer(secure) == "digits"
        secure.close()
        plain = triton.InferenceServerClient(address)
        with pytest.raises(InferenceServerException) as refused:
            plain.is_server_ready()
        assert "UNAVAILABLE" in str(refused.value.status())
        plain.close()
        # The container HEALTHCHECK's command, pointed at the CA.
        assert health_check(address, "", 5, ClientSecurity(ca_cert=pki.ca)) == "SERVING"


def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki) -> None:
    tls = TlsSettings(pki.server_cert, pki.server_key, client_ca=pki.ca)
    with running_server(tls=tls) as server:
        address = server.address
        anonymous = triton.InferenceServerClient(address, ssl=True, root_certificates=str(pki.ca))
        with pytest.raises(InferenceServerException):
            anonymous.is_server_ready()
        anonymous.close()
        with pytest.raises(ClientError, match="cannot reach"):  # the handshake never completes
            health_check(address, "", 2, ClientSecurity(ca_cert=pki.ca))
        known = triton.InferenceServerClient(
            address,
            ssl=True,
            root_certificates=str(pki.ca),
            private_key=str(pki.client_key),
            certificate_chain=str(pki.client_cert),
        )
        assert infer(known) == "digits"
        known.close()


def test_token_auth_refuses_missing_and_wrong_tokens_but_not_health() -> None:
    with running_server(auth_token=TOKEN) as server:
        client = triton.InferenceServerClient(server.address)
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            with pytest.raises(InferenceServerException) as refused:
                infer(client, headers)
            assert str(refused.value.status()) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as metadata:
            client.get_server_metadata()
        assert str(metadata.value.status()) == "StatusCode.UNAUTHENTICATED"
        assert infer(client, {"authorization": f"Bearer {TOKEN}"}) == "digits"
        client.close()
        assert health_check(server.address, "", 5) == "SERVING"  # probes need no token
        assert health_check(server.address, "digits", 5) == "SERVING"


def test_a_message_over_the_limit_is_resource_exhausted_and_the_server_serves_on() -> None:
    with (
        running_server(max_message_bytes=16 * 1024) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        big = pb.ModelInferRequest(model_name="digits")
        big.inputs.add(name="image", datatype="UINT8", shape=[512, 8, 8, 1])
        big.raw_input_contents.append(bytes(512 * 64))  # 32 KiB
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(big)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in str(refused.value.details())
        small = pb.ModelInferRequest(model_name="digits")
        small.inputs.add(name="image", datatype="UINT8", shape=[1, 8, 8, 1])
        small.raw_input_contents.append(PIXELS.tobytes())
        assert stub.ModelInfer(small).model_name == "digits"
