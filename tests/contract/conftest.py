"""Contract fixtures: each service as the in-process implementation and as the gRPC client."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from promptopt.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

from services.common.server import ServiceBinding
from services.encoder.client import EncoderClient
from services.encoder.server import EncoderServicer
from services.llm_eval.client import LlmEvalClient
from services.llm_eval.server import LlmEvalServicer
from services.surrogate.client import SurrogateClient
from services.surrogate.engine import SurrogateEngine
from services.surrogate.server import SurrogateServicer
from tests.conftest import start_server


def llm_eval_binding(evaluator):
    servicer = LlmEvalServicer(evaluator)
    return ServiceBinding.of(
        llm_eval_pb2, "LlmEvalService", llm_eval_pb2_grpc.add_LlmEvalServiceServicer_to_server, servicer
    )


def encoder_binding(embedder):
    servicer = EncoderServicer(embedder, max_batch_size=64)
    return ServiceBinding.of(
        encoder_pb2, "EncoderService", encoder_pb2_grpc.add_EncoderServiceServicer_to_server, servicer
    )


def contract_subject(mode: str, core, binding, client_cls):
    """Yield `core` itself ("inprocess"), or a `client_cls` of a loopback server for it ("grpc")."""
    if mode == "inprocess":
        yield core
        return
    server = start_server(binding(core))
    with client_cls(f"127.0.0.1:{server.port}") as client:
        yield client
    server.server.stop(0)


@pytest.fixture(params=["inprocess", "grpc"])
def llm_service(request, evaluator):
    """The llm_eval contract's subject: the LlmEvaluator itself or a client of its server."""
    yield from contract_subject(request.param, evaluator, llm_eval_binding, LlmEvalClient)


@pytest.fixture(params=["inprocess", "grpc"])
def encoder_service(request, embedder):
    """The encoder contract's subject: the embedder itself or a client of its server."""
    yield from contract_subject(request.param, embedder, encoder_binding, EncoderClient)


@contextlib.contextmanager
def invalid_argument(match: str):
    """In-process cores raise ValueError; over gRPC the same input is INVALID_ARGUMENT."""
    with pytest.raises((ValueError, grpc.RpcError), match=match) as info:
        yield
    if isinstance(info.value, grpc.RpcError):
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def surrogate_binding(engine):
    servicer = SurrogateServicer(engine)
    return ServiceBinding.of(
        surrogate_pb2, "SurrogateService", surrogate_pb2_grpc.add_SurrogateServiceServicer_to_server, servicer
    )


@pytest.fixture(params=["inprocess", "grpc"])
def surrogate_service(request):
    """The surrogate contract's subject: a SurrogateEngine or a client of its server."""
    yield from contract_subject(request.param, SurrogateEngine(), surrogate_binding, SurrogateClient)
