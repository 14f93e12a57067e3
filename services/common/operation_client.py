"""The client side of the operation pattern (StartRun/WatchRun/GetRun/ListRuns/CancelRun), shared
by the optimizer's and the tuner's clients."""

from __future__ import annotations

from collections.abc import Iterator

from promptopt.operations.v1 import operations_pb2

from services.common.channel import BaseClient


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

    def watch(self, run_id: str, after_sequence: int = 0, timeout: float | None = None) -> Iterator:
        """The run's `operations.v1.RunEvent`s after `after_sequence`, until the run ends."""
        request = self.pb2.WatchRunRequest(run_id=run_id, after_sequence=after_sequence)
        for response in self.stub.WatchRun(request, timeout=timeout):
            yield response.event
