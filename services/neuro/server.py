"""The Neuro-Latent service (seed 002's /optimize, /health, /feedback over gRPC), hosted by the
surrogate's process: training runs as operations, Optimize with the newest trained model or a
named checkpoint, and feedback for the next training run."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from promptopt.neuro.v1 import neuro_pb2, neuro_pb2_grpc

from services.common.errors import require
from services.common.operation_server import OperationServicer
from services.common.operations import RunManager, RunStore
from services.common.server import ServiceBinding
from services.neuro.convert import feedback_from_proto, parse_optimize
from services.neuro.feedback import FeedbackStore
from services.neuro.rewriters import Rewriters, check_compatible, checkpoints_newest_first
from services.neuro.training import NEURO_DIR, ModelParts, NeuroTrainingJob, NeuroTrainingSettings


class NeuroServicer(OperationServicer):
    """The six run RPCs over the training runs, Optimize and the feedback RPCs."""

    def __init__(self, store: RunStore, manager: RunManager, parse, rewriters: Rewriters, feedback: FeedbackStore):
        super().__init__(neuro_pb2, store, manager, parse)
        self.rewriters, self.feedback = rewriters, feedback

    def Optimize(self, request, context):  # noqa: N802 - gRPC method name
        fields = parse_optimize(request)
        name, rewriter = self.rewriters.get(request.checkpoint)
        return neuro_pb2.OptimizeResponse(optimized_prompts=rewriter.rewrite(**fields), checkpoint=name)

    def SubmitFeedback(self, request, context):  # noqa: N802 - gRPC method name
        require(request.HasField("feedback"), "feedback must be set")
        feedback_id, total = self.feedback.add(feedback_from_proto(request.feedback))
        return neuro_pb2.SubmitFeedbackResponse(feedback_id=feedback_id, total=total)

    def ListFeedback(self, request, context):  # noqa: N802 - gRPC method name
        size = request.page_size or 50
        require(1 <= size <= 1000, f"page_size must be in [1, 1000], got {size}")
        require(re.fullmatch(r"[0-9]{0,9}", request.page_token) is not None, "page_token is not one this service gave")
        offset = int(request.page_token or 0)
        rows = self.feedback.list(size + 1, offset)
        return neuro_pb2.ListFeedbackResponse(
            feedback=[
                neuro_pb2.StoredFeedback(feedback_id=i, time=t, feedback=neuro_pb2.Feedback(**dataclasses.asdict(f)))
                for i, t, f in rows[:size]
            ],
            next_page_token=str(offset + size) if len(rows) > size else "",
        )


def neuro_service(
    store: RunStore,
    state_dir: str | Path,
    defaults,
    device: str = "cpu",
    parts: ModelParts | None = None,
    allowed_models: tuple[str, ...] = (),
) -> tuple[ServiceBinding, RunManager, Rewriters]:
    """The NeuroService over `store` (checkpoints and feedback under `state_dir`/neuro; new runs
    take `defaults`, a NeuroConfig, for what they leave unset, and may name other frozen models
    only from `allowed_models`; the frozen models from `parts`), its run manager, and the
    rewriters (call `load_newest()` once torch may load)."""
    root = Path(state_dir).resolve() / NEURO_DIR
    feedback = FeedbackStore(root / "feedback.sqlite")
    parts = parts or ModelParts(device)
    rewriters = Rewriters(root, parts)

    def factory(record, emit, usage, cancelled):
        config = json.dumps(record.config)
        settings = NeuroTrainingSettings.from_json(config, record.run_id, state_dir, defaults, stored=True)
        return NeuroTrainingJob(settings, emit, cancelled, record.run_id, parts, feedback, rewriters.use, root)

    def parse(request):
        settings = NeuroTrainingSettings.from_json(request.config_json, "check", state_dir, defaults, allowed_models)
        settings.data(feedback)  # refused now, not when the run starts
        init = settings.init_checkpoint
        if not init and not settings.neuro.phase1_epochs:  # the seed's phase-2-only run continues phase 1's model
            newest = checkpoints_newest_first(root)
            if not newest:
                raise ValueError("phase1_epochs 0 trains phase 2 alone: it needs init_checkpoint (no model is trained)")
            init = str(newest[0])
        if init:
            check_compatible(init, settings.neuro, root)
        settings = dataclasses.replace(settings, init_checkpoint=init)
        return "neuro", request.display_name, settings.record(state_dir), settings.neuro.total_epochs

    manager = RunManager(store, factory)
    servicer = NeuroServicer(store, manager, parse, rewriters, feedback)
    add = neuro_pb2_grpc.add_NeuroServiceServicer_to_server
    return ServiceBinding.of(neuro_pb2, "NeuroService", add, servicer), manager, rewriters
