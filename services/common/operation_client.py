"""The client side of the operation pattern, shared by the optimizer's, tuner's, flow's and
Neuro-Latent's clients: the service's own StartRun, and OperationsService for the rest."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
from promptopt.operations.v1 import operations_pb2, operations_pb2_grpc

from services.common.channel import BaseClient, transient

log = logging.getLogger(__name__)


class OperationClient(BaseClient):
    """Operation-pattern client (raw protos: runs are the user's objects). Subclasses set `pb2`
    (the service's generated module, with its StartRun messages), `stub_class` and `service`
    (the name OperationsService.ListRuns knows it by)."""

    pb2 = None
    stub_class = None
    service = ""

    def __init__(self, config):
        super().__init__(config)
        self.stub = self.stub_class(self.channel)
        self.operations = operations_pb2_grpc.OperationsServiceStub(self.channel)

    def start(self, request) -> operations_pb2.Run:
        return self.stub.StartRun(request, timeout=self.timeout).run

    def get(self, run_id: str) -> operations_pb2.Run:
        return self.operations.GetRun(operations_pb2.GetRunRequest(run_id=run_id), timeout=self.timeout).run

    def list(self, page_size: int = 50, page_token: str = "") -> operations_pb2.ListRunsResponse:
        request = operations_pb2.ListRunsRequest(page_size=page_size, page_token=page_token, service=self.service)
        return self.operations.ListRuns(request, timeout=self.timeout)

    def cancel(self, run_id: str) -> operations_pb2.Run:
        return self.operations.CancelRun(operations_pb2.CancelRunRequest(run_id=run_id), timeout=self.timeout).run

    def resume(self, run_id: str) -> operations_pb2.Run:
        return self.operations.ResumeRun(operations_pb2.ResumeRunRequest(run_id=run_id), timeout=self.timeout).run

    def watch(self, run_id: str, after_sequence: int = 0, timeout: float | None = None) -> Iterator:
        """The run's `operations.v1.RunEvent`s after `after_sequence`, until the run ends. A stream
        broken by a restarting service is reopened after the last event seen, until
        `retry_seconds` have passed since it broke without a new event."""
        sequence, delay, failing_since = after_sequence, 0.5, None
        while True:
            request = operations_pb2.WatchRunRequest(run_id=run_id, after_sequence=sequence)
            try:
                for response in self.operations.WatchRun(request, timeout=timeout):
                    sequence, delay, failing_since = response.event.sequence, 0.5, None
                    yield response.event
                return
            except grpc.RpcError as exc:
                failing_since = failing_since or time.monotonic()
                if not transient(exc.code(), exc.details()) or (
                    time.monotonic() - failing_since + delay > self.config.retry_seconds
                ):
                    raise
                log.warning("WatchRun %s: %s; reopening after event %d", run_id, exc.code().name, sequence)
                time.sleep(delay)
                delay = min(delay * 2, 15.0)
