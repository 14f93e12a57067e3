"""Start the tuner service: `python -m services.tuner` (env `PROMPTOPT_TUNER_*`).

A run is one BOLT coordinate-descent tuning (seed 004); unfinished runs resume when the service
starts again (finished trials are in the Optuna storage and never run twice).
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.common.artifact_server import artifact_binding
from services.common.artifacts import ArtifactLimits, FilesystemArtifactStore
from services.common.config import ServerConfig, from_env
from services.common.operation_server import operations_binding
from services.common.operations import RunStore
from services.common.server import run_service, serve
from services.tuner.config import PREFIX, TunerConfig
from services.tuner.inputs import INPUT_KINDS
from services.tuner.server import tuner_service


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = from_env(TunerConfig, PREFIX)
    store = RunStore(config.store_path, exclusive=True)
    state_dir = Path(config.store_path).parent
    artifacts = FilesystemArtifactStore(state_dir / "artifacts", INPUT_KINDS, from_env(ArtifactLimits, PREFIX))
    binding, manager = tuner_service(store, config, state_dir, artifacts)
    operations = operations_binding({"tuner": (store, manager)})
    bindings = [binding, operations, artifact_binding(artifacts)]
    serve(from_env(ServerConfig, PREFIX), bindings, load=manager.resume_unfinished).wait()


if __name__ == "__main__":
    run_service(main)
