"""Start the tuner service: `python -m services.tuner` (env `PROMPTOPT_TUNER_*`).

The tuner serves the operation pattern over its own run store. BOLT coordinate descent is
not implemented yet: StartRun answers UNIMPLEMENTED until the tuner issue lands it.
"""

from __future__ import annotations

import dataclasses
import logging

from promptopt.tuner.v1 import tuner_pb2, tuner_pb2_grpc

from services.common.config import ServerConfig, from_env
from services.common.operation_server import OperationServicer
from services.common.operations import RunManager, RunStore
from services.common.server import ServiceBinding, run_service, serve

PREFIX = "PROMPTOPT_TUNER_"


@dataclasses.dataclass(frozen=True)
class TunerConfig:
    store_path: str = "state/tuner/runs.sqlite"


def parse_start(request):
    raise NotImplementedError("BOLT tuning runs are not implemented yet")


def no_jobs(record, emit, usage, cancelled):
    raise NotImplementedError("BOLT tuning runs are not implemented yet")


def tuner_service(store: RunStore) -> ServiceBinding:
    """The TunerService over `store`."""
    servicer = OperationServicer(tuner_pb2, store, RunManager(store, no_jobs), parse_start)
    return ServiceBinding.of(tuner_pb2, "TunerService", tuner_pb2_grpc.add_TunerServiceServicer_to_server, servicer)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store = RunStore(from_env(TunerConfig, PREFIX).store_path, exclusive=True)
    serve(from_env(ServerConfig, PREFIX), [tuner_service(store)]).wait()


if __name__ == "__main__":
    run_service(main)
