"""The tuner's typed client: tuning studies as long-running operations."""

from __future__ import annotations

from promptopt.tuner.v1 import tuner_pb2, tuner_pb2_grpc

from services.common.operation_client import OperationClient


class TunerClient(OperationClient):
    """Start, watch, list and cancel tuning runs."""

    pb2 = tuner_pb2
    stub_class = tuner_pb2_grpc.TunerServiceStub
    service = "tuner"
