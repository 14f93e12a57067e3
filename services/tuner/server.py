"""gRPC transport of the tuner: StartRun validation and the run manager's tuning jobs (one step
per BOLT phase, then the report; checkpointed in the run store, trials in the Optuna storage).
Its ArtifactService keeps the grids and corpora runs name by id."""

from __future__ import annotations

import json
from pathlib import Path

from promptopt.tuner.v1 import tuner_pb2, tuner_pb2_grpc

from services.common.artifacts import ArtifactLimits, ArtifactStore, FilesystemArtifactStore
from services.common.errors import FailedPreconditionError, NotFoundError
from services.common.operation_server import OperationServicer
from services.common.operations import Job, RunManager, RunStore
from services.common.server import ServiceBinding
from services.tuner.config import TunerConfig
from services.tuner.coordinator import Coordinator, lipo_e_config
from services.tuner.inputs import INPUT_KINDS, TuningInputs
from services.tuner.settings import TuningSettings, service_paths
from services.tuner.study import storage_for


class TuningJob(Job):
    """A tuning run for the run manager: one step per phase, then the report."""

    def __init__(self, settings: TuningSettings, inputs: TuningInputs, config: TunerConfig, emit, cancelled):
        self.settings = settings
        self.coordinator = Coordinator(settings, inputs, config, emit, cancelled)

    def total_steps(self) -> int:
        return len(self.settings.phases) + 1

    def initial_state(self) -> dict:
        self.coordinator.lock()
        return self.coordinator.initial_state()

    def step(self, state: dict) -> dict:
        self.coordinator.lock()
        index = state["step"]
        if index < len(self.settings.phases):
            phase = self.settings.phases[index]
            if phase not in state["completed_phases"]:
                self.coordinator.run_phase(state, phase)
        else:
            self.coordinator.finish(state)
        state["step"] += 1
        self.coordinator.save(state)
        return state

    def best(self, state: dict) -> tuple[str, float]:
        """The last finished phase's best objective (the run's "best prompt" names it)."""
        if not state["completed_phases"]:
            return "", 0.0
        phase = state["completed_phases"][-1]
        result = state["phase_results"][phase]
        return f"{phase}: {result['objective']} of trial {result['best_trial']}", float(result["best_value"])

    def release(self) -> None:
        self.coordinator.unlock()

    def report(self, state: dict) -> dict:
        """The tuning's results as content (a client sees no file of the tuner's): each phase's
        result, best_config.yaml's fields and tuning_report.md."""
        return {
            "phase_results": state["phase_results"],
            "best_config": lipo_e_config(state["best_config"]),
            "tuning_report": (self.coordinator.root / "tuning_report.md").read_text(),
        }


RESUME_MAY_SET = {"resume_run", "workers"}  # a resumed tuning keeps its saved settings but these


def tuning_of(run_id: str, store: RunStore) -> str:
    """The tuning run `run_id` continues (a resume of a resume, followed back), else itself."""
    seen = set()
    while run_id not in seen:
        seen.add(run_id)
        try:
            earlier = store.get(run_id).config.get("resume_run")
        except NotFoundError:
            return run_id
        if not earlier:
            return run_id
        run_id = earlier
    return run_id


def settings_for(
    config_json: str, run_id: str, state_dir: Path, store: RunStore, storage: str = "", stored: bool = False
) -> TuningSettings:
    """A run's settings; with `resume_run`, those saved in that tuning's output directory (new
    workers allowed)."""
    settings = TuningSettings.from_json(config_json, run_id, state_dir, storage, stored)
    if not settings.resume_run:
        return settings
    changed = sorted(set(json.loads(config_json)) - RESUME_MAY_SET)
    if changed and not stored:
        raise ValueError(f"resume_run continues a tuning with its saved settings: {changed} cannot change")
    tuning = tuning_of(settings.resume_run, store)
    path = state_dir / tuning / "coordinator_state.json"
    if not path.is_file():
        raise ValueError(f"resume_run {settings.resume_run!r} is no tuning of this tuner with a state to resume")
    saved = json.loads(path.read_text())["settings"]
    return TuningSettings.from_dict(
        {
            **saved,
            **service_paths(state_dir, tuning, storage),
            "workers": settings.workers or saved["workers"],
            "resume_run": tuning,
        }
    )


def parse_start(
    request, config: TunerConfig, state_dir: Path, store: RunStore, artifacts: ArtifactStore
) -> tuple[str, str, dict, int]:
    """Validate StartRun: settings and inputs (INVALID_ARGUMENT naming the field) and a reachable
    operator storage (FAILED_PRECONDITION otherwise). The run stores the settings as given."""
    settings = settings_for(request.config_json, "check", state_dir, store, config.storage_url)
    TuningInputs.load(settings, artifacts)
    if config.storage_url or settings.resume_run:
        try:
            storage_for(settings).remove_session()
        except ConnectionError as exc:
            raise FailedPreconditionError(str(exc)) from exc
    return "bolt", request.display_name, json.loads(request.config_json), len(settings.phases) + 1


def tuner_service(
    store: RunStore,
    config: TunerConfig | None = None,
    state_dir: str | Path = "state/tuner",
    artifacts: ArtifactStore | None = None,
) -> tuple[ServiceBinding, RunManager]:
    """The TunerService over `store` (its runs' outputs under `state_dir`, the grids and corpora
    they name in `artifacts`, default under `state_dir`) and its run manager."""
    config, state_dir = config or TunerConfig(), Path(state_dir)
    artifacts = artifacts or FilesystemArtifactStore(state_dir / "artifacts", INPUT_KINDS, ArtifactLimits())

    def factory(record, emit, usage, cancelled):
        config_json = json.dumps(record.config)
        settings = settings_for(config_json, record.run_id, state_dir, store, config.storage_url, stored=True)
        return TuningJob(settings, TuningInputs.load(settings, artifacts), config, emit, cancelled)

    manager = RunManager(store, factory)
    servicer = OperationServicer(
        tuner_pb2, store, manager, lambda request: parse_start(request, config, state_dir, store, artifacts)
    )
    add = tuner_pb2_grpc.add_TunerServiceServicer_to_server
    return ServiceBinding.of(tuner_pb2, "TunerService", add, servicer), manager
