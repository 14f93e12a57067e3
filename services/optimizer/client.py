"""The optimizer's typed client: runs as long-running operations."""

from __future__ import annotations

from promptopt.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc

from services.common.operation_client import OperationClient


class OptimizerClient(OperationClient):
    """Start, watch, list and cancel optimiser runs."""

    pb2 = optimizer_pb2
    stub_class = optimizer_pb2_grpc.OptimizerServiceStub
    service = "optimizer"
