"""Transport security on real servers: TLS and mTLS with certificates made by openssl, the
bearer token on every RPC of every service (health and reflection exempt, as documented), the
TLS-speaking health probe, and secrets kept out of reprs and logs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc
from promptopt.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc
from promptopt.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc
from promptopt.tuner.v1 import tuner_pb2, tuner_pb2_grpc

from services.common.channel import BaseClient, make_channel
from services.common.config import ClientConfig, ServerConfig
from services.common.healthcheck import check
from services.common.server import ServiceBinding, serve

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make certificates")

SERVICES = [
    (encoder_pb2, encoder_pb2_grpc, "EncoderService"),
    (decoder_pb2, decoder_pb2_grpc, "DecoderService"),
    (llm_eval_pb2, llm_eval_pb2_grpc, "LlmEvalService"),
    (surrogate_pb2, surrogate_pb2_grpc, "SurrogateService"),
    (optimizer_pb2, optimizer_pb2_grpc, "OptimizerService"),
    (tuner_pb2, tuner_pb2_grpc, "TunerService"),
]


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)  # fmt: skip


def make_cert(directory, name: str, ca: str) -> None:
    """A certificate for localhost / 127.0.0.1, good for server and client auth, signed by `ca`."""
    (directory / f"{name}.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=directory)  # fmt: skip
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=directory)  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    make_ca(directory, "ca")
    make_ca(directory, "rogue-ca")
    make_cert(directory, "server", "ca")
    make_cert(directory, "client", "ca")
    make_cert(directory, "rogue", "rogue-ca")
    return {name: str(directory / name) for name in ("ca", "server", "client", "rogue")}


def all_services():
    """The six services with their generated base servicers (every RPC UNIMPLEMENTED)."""
    for pb2, grpc_module, name in SERVICES:
        servicer = getattr(grpc_module, f"{name}Servicer")()
        add = getattr(grpc_module, f"add_{name}Servicer_to_server")
        yield ServiceBinding.of(pb2, name, add, servicer)


def start(**settings):
    running = serve(ServerConfig(port=0, metrics_port=-1, **settings), all_services(), install_signal_handlers=False)
    assert running.ready.wait(10)
    return running


def health(config: ClientConfig) -> str:
    with BaseClient(config) as client:
        return client.health(timeout=5)


def refused(config: ClientConfig) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        health(config)
    return err.value.code()


def test_tls_serves_only_clients_that_trust_its_certificate(certs):
    running = start(tls_cert=certs["server"] + ".pem", tls_key=certs["server"] + ".key")
    address = f"127.0.0.1:{running.port}"
    try:
        assert health(ClientConfig(address, tls_ca=certs["ca"] + ".pem", retry_seconds=0)) == "SERVING"
        assert refused(ClientConfig(address, retry_seconds=0)) == grpc.StatusCode.UNAVAILABLE  # plaintext
        wrong_ca = ClientConfig(address, tls_ca=certs["rogue"] + ".pem", retry_seconds=0)
        assert refused(wrong_ca) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.server.stop(0)


def test_mtls_refuses_clients_without_a_certificate_from_its_ca(certs):
    server = {"tls_cert": certs["server"] + ".pem", "tls_key": certs["server"] + ".key"}
    running = start(**server, tls_client_ca=certs["ca"] + ".pem")
    address = f"127.0.0.1:{running.port}"
    ca = certs["ca"] + ".pem"
    try:
        client = {"tls_cert": certs["client"] + ".pem", "tls_key": certs["client"] + ".key"}
        assert health(ClientConfig(address, tls_ca=ca, retry_seconds=0, **client)) == "SERVING"
        assert refused(ClientConfig(address, tls_ca=ca, retry_seconds=0)) == grpc.StatusCode.UNAVAILABLE
        rogue = {"tls_cert": certs["rogue"] + ".pem", "tls_key": certs["rogue"] + ".key"}
        assert refused(ClientConfig(address, tls_ca=ca, retry_seconds=0, **rogue)) == grpc.StatusCode.UNAVAILABLE
        # the container probe speaks mTLS with the service's own certificate
        env = {
            "PROMPTOPT_ENCODER_PORT": str(running.port),
            "PROMPTOPT_ENCODER_TLS_CERT": server["tls_cert"],
            "PROMPTOPT_ENCODER_TLS_KEY": server["tls_key"],
            "PROMPTOPT_ENCODER_TLS_CLIENT_CA": ca,
        }
        assert check("encoder", env) == "SERVING"
        with pytest.raises(ValueError, match="needs PROMPTOPT_ENCODER_TLS_CA"):
            check("encoder", {k: v for k, v in env.items() if "CLIENT_CA" not in k})
    finally:
        running.server.stop(0)


def test_every_rpc_of_every_service_needs_the_bearer_token(certs):
    running = start(auth_token="s3cret-token")
    address = f"127.0.0.1:{running.port}"
    plain = make_channel(ClientConfig(address, retry_seconds=0))
    signed = make_channel(ClientConfig(address, auth_token="s3cret-token", retry_seconds=0))
    checked = 0
    try:
        for pb2, _, name in SERVICES:
            service = pb2.DESCRIPTOR.services_by_name[name]
            for method in service.methods:
                request = message_factory.GetMessageClass(method.input_type)()
                path = f"/{service.full_name}/{method.name}"
                for channel, expected in ((plain, grpc.StatusCode.UNAUTHENTICATED), (signed, None)):
                    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
                    call = kind(path, request_serializer=type(request).SerializeToString)
                    with pytest.raises(grpc.RpcError) as err:
                        response = call(request, timeout=5)
                        if method.server_streaming:
                            list(response)
                    code = err.value.code()
                    if expected is None:  # past the token check: the bare servicer answers UNIMPLEMENTED
                        assert code == grpc.StatusCode.UNIMPLEMENTED, path
                    else:
                        assert code == expected, path
                checked += 1
        assert checked >= 35  # every RPC of the six services
        # policy: health and reflection answer without the token (probes and grpcurl discovery)
        assert health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = reflection_pb2_grpc.ServerReflectionStub(plain).ServerReflectionInfo(iter([listing]), timeout=5)
        assert len(answer.list_services_response.service) == 8  # the six services, health, reflection
    finally:
        plain.close()
        signed.close()
        running.server.stop(0)


def test_secrets_stay_out_of_reprs_and_logs(tmp_path):
    assert "s3cret" not in repr(ServerConfig(auth_token="s3cret")) + repr(ClientConfig("x:1", auth_token="s3cret"))
    env = {
        **os.environ,
        "PROMPTOPT_OPTIMIZER_PORT": "0",
        "PROMPTOPT_OPTIMIZER_METRICS_PORT": "-1",
        "PROMPTOPT_OPTIMIZER_STORE_PATH": str(tmp_path / "runs.sqlite"),
        "PROMPTOPT_OPTIMIZER_AUTH_TOKEN": "s3cret-token",
        "OPENAI_API_KEY": "sk-s3cret",
    }
    command = [sys.executable, "-m", "services.optimizer"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(8)  # start-up logging
    process.terminate()
    output, _ = process.communicate(timeout=30)
    assert "SERVING" in output or "serving" in output.lower(), output[-2000:]
    assert "s3cret" not in output
