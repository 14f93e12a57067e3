"""gRPC transport for the operation pattern: each run-hosting service's own StartRun, and the one
OperationsService (`promptopt.operations.v1`: WatchRun, GetRun, ListRuns, CancelRun, ResumeRun)
over every service its process hosts.

`RunOperations` is the logic over one service's RunStore and RunManager. `OperationServicer`
serves a service's StartRun and, as deprecated v1 aliases in its own messages, the five
operation RPCs; `operations_binding` serves OperationsService over the hosted services.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Callable

from promptopt.operations.v1 import operations_pb2, operations_pb2_grpc

from services.common.convert import timestamp, usage_to_proto
from services.common.errors import NotFoundError, require, shown
from services.common.operations import RunEvent, RunManager, RunRecord, RunStore
from services.common.server import ServiceBinding

# parse(request) -> (algorithm, display_name, resolved config dict, total_steps)
MAX_PAGE = 1000  # runs one ListRuns page may ask for
MAX_DISPLAY_NAME = 200  # characters of a run's display name (every ListRuns page carries them)
Parser = Callable[[object], tuple[str, str, dict, int]]


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
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        error=record.error,
        config_json=json.dumps(record.config, sort_keys=True),
        last_sequence=record.last_sequence,
    )


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
        time=timestamp(event.time),
        usage=usage_to_proto(event.usage),
        **body,
    )


class RunOperations:
    """The five operation RPCs' logic over one service's runs (`name`: how ListRuns names it)."""

    def __init__(self, name: str, store: RunStore, manager: RunManager, poll_seconds: float = 1.0):
        self.name, self.store, self.manager, self.poll_seconds = name, store, manager, poll_seconds

    def has(self, run_id: str) -> bool:
        try:
            self.store.get(run_id)
        except NotFoundError:
            return False
        return True

    def get(self, request) -> operations_pb2.Run:
        require(bool(request.run_id), "run_id must be set")
        return run_to_proto(self.store.get(request.run_id))

    def list(self, request) -> tuple[list[operations_pb2.Run], str]:
        """(a page of runs, the next page's token or "")."""
        require(0 <= request.page_size <= MAX_PAGE, f"page_size must be in [0, {MAX_PAGE}], got {request.page_size}")
        size = request.page_size or 50
        require(
            re.fullmatch(r"[0-9]{0,9}", request.page_token) is not None,
            f"page_token {shown(request.page_token)!r} is not a token from ListRuns",
        )
        offset = int(request.page_token or 0)
        records = self.store.list(size + 1, offset)
        token = str(offset + size) if len(records) > size else ""
        return [run_to_proto(r) for r in records[:size]], token

    def cancel(self, request) -> operations_pb2.Run:
        require(bool(request.run_id), "run_id must be set")
        return run_to_proto(self.manager.cancel(request.run_id))

    def resume(self, request) -> operations_pb2.Run:
        require(bool(request.run_id), "run_id must be set")
        return run_to_proto(self.manager.resume(request.run_id))

    def watch(self, request, context):
        """The run's events after `after_sequence`, until it ends or the caller leaves."""
        require(bool(request.run_id), "run_id must be set")
        require(request.after_sequence >= 0, "after_sequence must be >= 0")
        sequence = request.after_sequence
        self.store.get(request.run_id)  # NOT_FOUND before streaming
        while context.is_active():
            for event in self.store.events(request.run_id, sequence):
                sequence = event.sequence
                yield event_to_proto(event)
            record = self.store.get(request.run_id)
            if record.state.terminal and record.last_sequence <= sequence:
                return
            self.store.wait(self.poll_seconds)


class RunRpcs(abc.ABC):
    """The five operation RPCs, answered in `pb2`'s messages, over the RunOperations that `owner`
    (a call naming a run) and `listed` (ListRuns) pick."""

    pb2 = operations_pb2

    @abc.abstractmethod
    def owner(self, request) -> RunOperations: ...

    @abc.abstractmethod
    def listed(self, request) -> RunOperations: ...

    def GetRun(self, request, context):  # noqa: N802 - gRPC method name
        return self.pb2.GetRunResponse(run=self.owner(request).get(request))

    def ListRuns(self, request, context):  # noqa: N802 - gRPC method name
        runs, token = self.listed(request).list(request)
        return self.pb2.ListRunsResponse(runs=runs, next_page_token=token)

    def CancelRun(self, request, context):  # noqa: N802 - gRPC method name
        return self.pb2.CancelRunResponse(run=self.owner(request).cancel(request))

    def ResumeRun(self, request, context):  # noqa: N802 - gRPC method name
        return self.pb2.ResumeRunResponse(run=self.owner(request).resume(request))

    def WatchRun(self, request, context):  # noqa: N802 - gRPC method name
        for event in self.owner(request).watch(request, context):
            yield self.pb2.WatchRunResponse(event=event)


class OperationServicer(RunRpcs):
    """A run-hosting service's StartRun and, in its own v1 messages, the deprecated aliases of
    OperationsService's RPCs (the same RunRpcs code over this service's runs)."""

    def __init__(self, pb2, store: RunStore, manager: RunManager, parse: Parser, poll_seconds: float = 1.0):
        self.pb2, self.store, self.manager, self.parse = pb2, store, manager, parse
        self.operations = RunOperations("", store, manager, poll_seconds)

    def owner(self, request) -> RunOperations:
        return self.operations

    def listed(self, request) -> RunOperations:
        return self.operations

    def StartRun(self, request, context):  # noqa: N802 - gRPC method name
        algorithm, display_name, config, total_steps = self.parse(request)
        require(len(display_name) <= MAX_DISPLAY_NAME, f"display_name must be at most {MAX_DISPLAY_NAME} characters")
        record = self.store.create(algorithm, display_name, config, total_steps)
        self.manager.start(record.run_id)
        return self.pb2.StartRunResponse(run=run_to_proto(record))


class OperationsServicer(RunRpcs, operations_pb2_grpc.OperationsServiceServicer):
    """OperationsService over the runs of every service the process hosts."""

    def __init__(self, hosted: list[RunOperations]):
        names = [h.name for h in hosted]
        if not hosted or len(set(names)) != len(names) or not all(names):
            raise ValueError(f"hosted services need distinct names, got {names}")
        self.hosted = {h.name: h for h in hosted}

    def owner(self, request) -> RunOperations:
        """The hosted service whose store holds the request's run."""
        require(bool(request.run_id), "run_id must be set")
        for operations in self.hosted.values():
            if operations.has(request.run_id):
                return operations
        raise NotFoundError(f"run {request.run_id!r} not found")

    def listed(self, request) -> RunOperations:
        """The service ListRuns names (none needed when the process hosts one)."""
        names = sorted(self.hosted)
        if not request.service and len(names) == 1:
            return self.hosted[names[0]]
        require(request.service in self.hosted, f"service must name one of {names}, got {shown(request.service)!r}")
        return self.hosted[request.service]


def operations_binding(hosted: dict[str, tuple[RunStore, RunManager]], poll_seconds: float = 1.0) -> ServiceBinding:
    """OperationsService over the hosted services' runs ({name: (store, manager)}); WatchRun looks
    for new events every `poll_seconds` while a run is quiet."""
    servicer = OperationsServicer([RunOperations(name, *parts, poll_seconds) for name, parts in hosted.items()])
    add = operations_pb2_grpc.add_OperationsServiceServicer_to_server
    return ServiceBinding.of(operations_pb2, "OperationsService", add, servicer)
