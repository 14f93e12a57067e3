"""gRPC transport for the optimizer: StartRun request -> validated algorithm config, plus metrics."""

from __future__ import annotations

import dataclasses

from google.protobuf.json_format import MessageToDict
from prometheus_client import Gauge

from services.common.operations import RunRecord
from services.common.types import Usage
from services.optimizer.algorithms.base import EvaluationSettings, MeteredLlm, Optimizer
from services.optimizer.algorithms.lipo import LipoConfig, LipoOptimizer, ModelServices
from services.optimizer.algorithms.opro import OproConfig, OproOptimizer
from services.optimizer.algorithms.protegi import ProtegiConfig, ProtegiOptimizer

ALGORITHMS = {
    "opro": (OproConfig, OproOptimizer),
    "protegi": (ProtegiConfig, ProtegiOptimizer),
    "lipo": (LipoConfig, LipoOptimizer),
}


def _config(config_cls, fields: dict):
    if "initial_prompts" in fields:
        fields = {**fields, "initial_prompts": tuple(fields["initial_prompts"])}
    return config_cls.from_fields(fields) if hasattr(config_cls, "from_fields") else config_cls(**fields)


BEST_SCORE = Gauge("promptopt_optimizer_best_score_ratio", "Best score of a run so far.", ["run_id", "algorithm"])


def parse_start(request) -> tuple[str, str, dict, int]:
    """Validate a StartRunRequest into (algorithm, display name, resolved config, total steps)."""
    algorithm = request.WhichOneof("algorithm")
    if algorithm is None:
        raise ValueError("algorithm must be set (one of: " + ", ".join(ALGORITHMS) + ")")
    config_cls, optimizer_cls = ALGORITHMS[algorithm]
    config = _config(config_cls, MessageToDict(getattr(request, algorithm), preserving_proto_field_name=True))
    evaluation = EvaluationSettings(**MessageToDict(request.evaluation, preserving_proto_field_name=True))
    evaluation = dataclasses.replace(evaluation, seed=int(evaluation.seed))
    steps = optimizer_cls(config, evaluation, None, None).total_steps()
    resolved = {"algorithm": dataclasses.asdict(config), "evaluation": dataclasses.asdict(evaluation)}
    return algorithm, request.display_name, resolved, steps


def build_optimizer(
    record: RunRecord, llm_service, emit, usage: Usage, cancelled, models: ModelServices | None = None, state_dir="."
) -> Optimizer:
    """Rebuild a run's optimiser from its stored (resolved) config (used at start and on resume)."""
    config_cls, optimizer_cls = ALGORITHMS[record.algorithm]
    config = _config(config_cls, dict(record.config["algorithm"]))

    gauge = BEST_SCORE.labels(record.run_id, record.algorithm)
    best = [record.best_score]

    def emit_and_track(kind: str, payload: dict) -> None:
        if kind == "candidate":
            best[0] = max(best[0], payload["score"])
            gauge.set(best[0])
        emit(kind, payload)

    args = (config, EvaluationSettings(**record.config["evaluation"]), MeteredLlm(llm_service, usage, cancelled))
    if optimizer_cls is LipoOptimizer:
        return LipoOptimizer(*args, emit_and_track, models=models, state_dir=state_dir)
    return optimizer_cls(*args, emit_and_track)
