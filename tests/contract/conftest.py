"""Contract fixtures: each service as the in-process implementation and as the gRPC client."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from promptopt.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc

from services.common.clients import EncoderClient, LlmEvalClient
from services.common.server import ServiceBinding
from services.encoder.server import EncoderServicer
from services.llm_eval.server import LlmEvalServicer
from tests.conftest import start_server


def llm_eval_binding(evaluator):
    servicer = LlmEvalServicer(evaluator)
    return ServiceBinding(
        llm_eval_pb2.DESCRIPTOR.services_by_name["LlmEvalService"].full_name,
        lambda s: llm_eval_pb2_grpc.add_LlmEvalServiceServicer_to_server(servicer, s),
    )


def encoder_binding(embedder):
    servicer = EncoderServicer(embedder, max_batch_size=64)
    return ServiceBinding(
        encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name,
        lambda s: encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, s),
    )


@pytest.fixture(params=["inprocess", "grpc"])
def llm_service(request, evaluator):
    """The llm_eval contract's subject: the LlmEvaluator itself or a client of its server."""
    if request.param == "inprocess":
        yield evaluator
        return
    server = start_server(llm_eval_binding(evaluator))
    with LlmEvalClient(f"127.0.0.1:{server.port}") as client:
        yield client
    server.server.stop(0)


@pytest.fixture(params=["inprocess", "grpc"])
def encoder_service(request, embedder):
    if request.param == "inprocess":
        yield embedder
        return
    server = start_server(encoder_binding(embedder))
    with EncoderClient(f"127.0.0.1:{server.port}") as client:
        yield client
    server.server.stop(0)


@contextlib.contextmanager
def invalid_argument(match: str):
    """In-process cores raise ValueError; over gRPC the same input is INVALID_ARGUMENT."""
    with pytest.raises((ValueError, grpc.RpcError), match=match) as info:
        yield
    if isinstance(info.value, grpc.RpcError):
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
