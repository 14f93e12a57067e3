"""The client side of the operation pattern (StartRun/WatchRun/GetRun/ListRuns/CancelRun/
ResumeRun), shared by the optimizer's and the tuner's clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
from promptopt.operations.v1 import operations_pb2

from services.common.channel import BaseClient, transient

log = logging.getLogger(__name__)


class OperationClient(BaseClient):
    """Operation-pattern client (raw protos: runs are the user's objects). Subclasses set `pb2`
    (the service's generated module, with its StartRun/GetRun/... messages) and `stub_class`."""

    pb2 = None
    stub_class = None

    def __init__(self, config):
        super().__init__(config)
        self.stub = self.stub_class(self.channel)

    def start(self, request) -> operations_pb2.Run:
        return self.stub.StartRun(request, timeout=self.timeout).run

    def get(self, run_id: str):
        return self.stub.GetRun(self.pb2.GetRunRequest(run_id=run_id), timeout=self.timeout).run

    def list(self, page_size: int = 50, page_token: str = ""):
        return self.stub.ListRuns(
            self.pb2.ListRunsRequest(page_size=page_size, page_token=page_token), timeout=self.timeout
        )

    def cancel(self, run_id: str):
        return self.stub.CancelRun(self.pb2.CancelRunRequest(run_id=run_id), timeout=self.timeout).run

    def resume(self, run_id: str):
        return self.stub.ResumeRun(self.pb2.ResumeRunRequest(run_id=run_id), timeout=self.timeout).run

    def watch(self, run_id: str, after_sequence: int = 0, timeout: float | None = None) -> Iterator:
        """The run's `operations.v1.RunEvent`s after `after_sequence`, until the run ends. A stream
        broken by a restarting service is reopened after the last event seen, until
        `retry_seconds` have passed since it broke without a new event."""
        sequence, delay, failing_since = after_sequence, 0.5, None
        while True:
            request = self.pb2.WatchRunRequest(run_id=run_id, after_sequence=sequence)
            try:
                for response in self.stub.WatchRun(request, timeout=timeout):
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
