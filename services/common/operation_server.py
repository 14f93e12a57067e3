"""gRPC transport for the operation pattern (StartRun/WatchRun/GetRun/ListRuns/CancelRun).

Run and event messages are shared (`promptopt.operations.v1`); the optimizer and tuner each
wrap them in their own request/response messages. `OperationServicer` serves either, given
the service's generated module and a StartRun request parser.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp
from promptopt.operations.v1 import operations_pb2

from services.common.convert import usage_to_proto
from services.common.errors import require
from services.common.operations import RunEvent, RunManager, RunRecord, RunStore

# parse(request) -> (algorithm, display_name, resolved config dict, total_steps)
Parser = Callable[[object], tuple[str, str, dict, int]]


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class OperationServicer:
    """Implements the six operation RPCs over a RunStore and RunManager."""

    def __init__(self, pb2, store: RunStore, manager: RunManager, parse: Parser, poll_seconds: float = 1.0):
        self.pb2 = pb2
        self.store = store
        self.manager = manager
        self.parse = parse
        self.poll_seconds = poll_seconds

    @staticmethod
    def run_to_proto(record: RunRecord) -> operations_pb2.Run:
        return operations_pb2.Run(
            run_id=record.run_id,
            algorithm=record.algorithm,
            display_name=record.display_name,
            state=int(record.state),
            step=record.step,
            total_steps=record.total_steps,
            best_prompt=record.best_prompt,
            best_score=record.best_score,
            usage=usage_to_proto(record.usage),
            create_time=_timestamp(record.create_time),
            update_time=_timestamp(record.update_time),
            error=record.error,
            config_json=json.dumps(record.config, sort_keys=True),
            last_sequence=record.last_sequence,
        )

    @staticmethod
    def event_to_proto(event: RunEvent) -> operations_pb2.RunEvent:
        pb2, p = operations_pb2, {k: v for k, v in event.payload.items() if v is not None}
        body = {
            "progress": lambda: {"progress": pb2.Progress(**p)},
            "candidate": lambda: {"candidate": pb2.Candidate(**p)},
            "result": lambda: {"result": pb2.Result(**p)},
            "error": lambda: {"error": pb2.Error(**p)},
        }[event.kind]()
        return pb2.RunEvent(
            sequence=event.sequence,
            run_id=event.run_id,
            time=_timestamp(event.time),
            usage=usage_to_proto(event.usage),
            **body,
        )

    def StartRun(self, request, context):
        algorithm, display_name, config, total_steps = self.parse(request)
        record = self.store.create(algorithm, display_name, config, total_steps)
        self.manager.start(record.run_id)
        return self.pb2.StartRunResponse(run=self.run_to_proto(record))

    def GetRun(self, request, context):
        require(bool(request.run_id), "run_id must be set")
        return self.pb2.GetRunResponse(run=self.run_to_proto(self.store.get(request.run_id)))

    def ListRuns(self, request, context):
        require(request.page_size >= 0, "page_size must be >= 0")
        size = request.page_size or 50
        try:
            offset = int(request.page_token or 0)
        except ValueError:
            raise ValueError(f"page_token {request.page_token!r} is not a token from ListRuns") from None
        require(offset >= 0, "page_token must not be negative")
        records = self.store.list(size + 1, offset)
        token = str(offset + size) if len(records) > size else ""
        return self.pb2.ListRunsResponse(runs=[self.run_to_proto(r) for r in records[:size]], next_page_token=token)

    def CancelRun(self, request, context):
        require(bool(request.run_id), "run_id must be set")
        return self.pb2.CancelRunResponse(run=self.run_to_proto(self.manager.cancel(request.run_id)))

    def ResumeRun(self, request, context):
        require(bool(request.run_id), "run_id must be set")
        return self.pb2.ResumeRunResponse(run=self.run_to_proto(self.manager.resume(request.run_id)))

    def WatchRun(self, request, context):
        require(bool(request.run_id), "run_id must be set")
        require(request.after_sequence >= 0, "after_sequence must be >= 0")
        sequence = request.after_sequence
        self.store.get(request.run_id)  # NOT_FOUND before streaming
        while context.is_active():
            for event in self.store.events(request.run_id, sequence):
                sequence = event.sequence
                yield self.pb2.WatchRunResponse(event=self.event_to_proto(event))
            record = self.store.get(request.run_id)
            if record.state.terminal and record.last_sequence <= sequence:
                return
            self.store.wait(self.poll_seconds)
