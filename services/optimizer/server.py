"""gRPC transport for the optimizer: StartRun request -> validated algorithm config, plus metrics."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from prometheus_client import Gauge
from promptopt.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc

from services.common.artifacts import ArtifactStore, FilesystemArtifactStore
from services.common.operation_server import OperationServicer
from services.common.operations import RunManager, RunRecord, RunStore
from services.common.server import ServiceBinding
from services.common.types import Usage
from services.llm_eval.client import Chunking, MeteredLlm
from services.optimizer.algorithms import registry
from services.optimizer.algorithms.base import EvaluationSettings, ModelServices, Optimizer, RunContext
from services.optimizer.algorithms.inputs import INPUT_KINDS


def set_fields(message, name: str) -> dict:
    """The top-level fields `message` sets (scalars as Python values, repeated fields as lists;
    run configs have no nested messages); a NaN or infinite number, or a retired (deprecated)
    field, is a ValueError naming the field (`name`.field)."""
    fields = {}
    for field, value in message.ListFields():
        if field.GetOptions().deprecated:
            instead = (
                "the APE cache always lives in the optimizer's state directory"
                if field.name == "ape_cache_path"
                else f"upload the file (ArtifactService.PutArtifact; the CLI's file flags do it) and pass its id "
                f"in {field.name.removesuffix('_path')}_artifact"
            )
            raise ValueError(
                f"{name}.{field.name} is retired (a request names no path on the optimizer's host): {instead}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}.{field.name} must be a finite number, got {value}")
        fields[field.name] = list(value) if field.is_repeated else value
    return fields


BEST_SCORE = Gauge(
    "promptopt_optimizer_best_score_ratio",
    "Validation score of a run's current winner (comparable candidates only).",
    ["run_id", "algorithm"],
)


def track_best(record: RunRecord, score: float) -> None:
    """RunManager hook: the best-score gauge follows each run's winner after every step."""
    BEST_SCORE.labels(record.run_id, record.algorithm).set(score)


def parse_start(request, llm=None, artifacts: ArtifactStore | None = None) -> tuple[str, str, dict, int]:
    """Validate a StartRunRequest into (algorithm, display name, resolved config, total steps).

    With `llm` (llm_eval's client or evaluator) the request is also checked against what it
    serves: the validation and test splits exist, fit the fidelities and share no question, and
    every model the run names is served. With `artifacts` the uploads it names are loaded and
    checked against its settings.
    """
    algorithm = request.WhichOneof("algorithm")
    if algorithm is None:
        raise ValueError("algorithm must be set (one of: " + ", ".join(registry.algorithms()) + ")")
    spec = registry.spec(algorithm)
    config = spec.settings.from_fields(set_fields(getattr(request, algorithm), algorithm))
    evaluation = EvaluationSettings(**set_fields(request.evaluation, "evaluation"))
    if artifacts is not None:
        config.load_inputs(artifacts)
    if llm is not None:
        sizes = llm.dataset_info(evaluation.dataset)
        evaluation.check_sizes(sizes, config.seen_splits())
        config.check_splits(evaluation, sizes)
        served = llm.usage().models
        for field, model in {"meta_model": request.meta_model, **config.named_models()}.items():
            if model and model not in served:
                raise ValueError(f"{field} {model!r} is not served by llm_eval (serves: {sorted(served)})")
    steps = config.search_steps() + 1  # and the held-out step
    resolved = {
        "algorithm": config.as_fields(),
        "evaluation": dataclasses.asdict(evaluation),
        "meta_model": request.meta_model,
    }
    return algorithm, request.display_name, resolved, steps


def build_optimizer(
    record: RunRecord,
    llm_service,
    emit,
    usage: Usage,
    cancelled,
    models: ModelServices | None = None,
    state_dir=".",
    chunking: Chunking | None = None,
    artifacts: ArtifactStore | None = None,
) -> Optimizer:
    """Rebuild a run's optimiser from its stored (resolved) config (used at start and on resume).
    With `chunking`, long evaluations go to llm_eval in chunks, each reported as a progress event."""
    spec = registry.spec(record.algorithm)
    config = spec.settings.from_fields(record.config["algorithm"])

    def on_progress(done: int, total: int) -> None:
        message = f"evaluated {done}/{total} questions"
        emit("progress", {"message": message, "questions_done": done, "questions_total": total})

    llm = MeteredLlm(llm_service, usage, cancelled, record.config.get("meta_model", ""), chunking, on_progress)
    context = RunContext((models or ModelServices()).only(spec.requires), Path(state_dir), record.run_id, artifacts)
    evaluation = EvaluationSettings(**record.config["evaluation"])
    return spec.optimizer.create(config, evaluation, llm, emit, context)


def optimizer_service(
    store: RunStore,
    llm,
    models: ModelServices | None = None,
    state_dir=".",
    chunking: Chunking | None = None,
    artifacts: ArtifactStore | None = None,
) -> tuple[ServiceBinding, RunManager]:
    """The OptimizerService over `store`, its runs calling `llm` (llm_eval) and `models` and
    reading the inputs users uploaded to `artifacts` (by default a store under `state_dir`); and
    the RunManager behind it (`resume_unfinished` at start-up)."""
    artifacts = artifacts or FilesystemArtifactStore(Path(state_dir) / "artifacts", INPUT_KINDS)

    def factory(record, emit, usage, cancelled):
        return build_optimizer(record, llm, emit, usage, cancelled, models, state_dir, chunking, artifacts)

    manager = RunManager(store, factory, on_best=track_best)
    servicer = OperationServicer(optimizer_pb2, store, manager, lambda request: parse_start(request, llm, artifacts))
    add = optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server
    return ServiceBinding.of(optimizer_pb2, "OptimizerService", add, servicer), manager
