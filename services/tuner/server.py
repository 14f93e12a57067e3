"""gRPC transport of the tuner: StartRun validation and the run manager's tuning jobs (one step
per BOLT phase, then the report; checkpointed in the run store, trials in the Optuna storage)."""

from __future__ import annotations

import json
from pathlib import Path

from promptopt.tuner.v1 import tuner_pb2, tuner_pb2_grpc

from services.common.errors import FailedPreconditionError
from services.common.operation_server import OperationServicer
from services.common.operations import Job, RunManager, RunStore
from services.common.server import ServiceBinding
from services.tuner.config import TunerConfig
from services.tuner.coordinator import Coordinator
from services.tuner.settings import TuningSettings, redact
from services.tuner.study import storage_for


class TuningJob(Job):
    """A tuning run for the run manager: one step per phase, then the report."""

    def __init__(self, settings: TuningSettings, config: TunerConfig, emit, cancelled):
        self.settings = settings
        self.coordinator = Coordinator(settings, config, emit, cancelled)

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
        return {
            "output_dir": str(self.coordinator.root),
            "best_config": str(self.coordinator.root / "best_config.yaml"),
            "phase_results": state["phase_results"],
        }


def settings_for(config_json: str, run_id: str, state_dir: Path, storage: str = "") -> TuningSettings:
    """A run's settings; with `resume`, those saved in its output directory (new workers allowed)."""
    settings = TuningSettings.from_json(config_json, run_id, state_dir, storage)
    if not settings.resume:
        return settings
    path = Path(settings.output_dir) / "coordinator_state.json"
    if not path.is_file():
        raise ValueError(f"resume: output_dir {settings.output_dir!r} has no coordinator_state.json to resume")
    saved = json.loads(path.read_text())["settings"]
    storage = settings.storage if "***" in saved["storage"] else saved["storage"]  # a password is never saved
    return TuningSettings.from_dict(
        {
            **saved,
            "storage": storage,
            "workers": settings.workers or saved["workers"],
            "resume": True,
        }
    )


def parse_start(request, config: TunerConfig, state_dir: Path) -> tuple[str, str, dict, int]:
    """Validate StartRun: settings (INVALID_ARGUMENT naming the field) and a reachable storage
    (FAILED_PRECONDITION otherwise). The run stores the settings as given."""
    settings = settings_for(request.config_json, "check", state_dir, config.storage_url)
    fields = json.loads(request.config_json)
    if redact(str(fields.get("storage", ""))) != str(fields.get("storage", "")):
        raise ValueError("storage: a password in the URL would be stored with the run; set PROMPTOPT_TUNER_STORAGE_URL")
    if fields.get("storage") or config.storage_url or settings.resume:
        try:
            storage_for(settings).remove_session()
        except ConnectionError as exc:
            raise FailedPreconditionError(str(exc)) from exc
    return "bolt", request.display_name, fields, len(settings.phases) + 1


def tuner_service(
    store: RunStore, config: TunerConfig | None = None, state_dir: str | Path = "state/tuner"
) -> tuple[ServiceBinding, RunManager]:
    """The TunerService over `store` (its runs' outputs under `state_dir`) and its run manager."""
    config, state_dir = config or TunerConfig(), Path(state_dir)

    def factory(record, emit, usage, cancelled):
        settings = settings_for(json.dumps(record.config), record.run_id, state_dir, config.storage_url)
        return TuningJob(settings, config, emit, cancelled)

    manager = RunManager(store, factory)
    servicer = OperationServicer(tuner_pb2, store, manager, lambda request: parse_start(request, config, state_dir))
    add = tuner_pb2_grpc.add_TunerServiceServicer_to_server
    return ServiceBinding.of(tuner_pb2, "TunerService", add, servicer), manager
