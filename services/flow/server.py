"""EcoFlow's flow service (hosted by the surrogate's process, whose GPs guide it): flow-matching
training as resumable runs (one step per epoch; `last_flow.pt` every epoch, `best_flow.pt` at
each best validation loss, under the run's directory) and guided sampling (SampleFlow). torch
loads lazily, after the server is up (as the surrogate's engine does)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from promptopt.flow.v1 import flow_pb2, flow_pb2_grpc

from services.common.artifacts import FilesystemArtifactStore
from services.common.codec import encode_tensor
from services.common.errors import FailedPreconditionError, NotFoundError, shown
from services.common.operation_server import OperationServicer
from services.common.operations import RunManager, RunStore
from services.common.server import ServiceBinding
from services.flow.convert import parse_sample
from services.flow.training import INPUT_KINDS, FlowTrainingJob, FlowTrainingSettings, flow_dir


class FlowServicer(OperationServicer):
    """The six run RPCs over the flow training runs, and SampleFlow (guided by `guide_of(model_id)`,
    an ErrorModel from the process's surrogate)."""

    def __init__(self, store: RunStore, manager: RunManager, state_dir: Path, guide_of, device: str, artifacts):
        super().__init__(flow_pb2, store, manager, lambda request: self._parse_start(request))
        self.state_dir, self.guide_of, self.device, self.artifacts = state_dir, guide_of, device, artifacts
        self._sampling = None  # a FlowSampling, built at the first SampleFlow (torch loads lazily)
        self._lock = threading.Lock()

    def _parse_start(self, request):
        # the embeddings were checked (shape, finite values) when they were uploaded
        settings = FlowTrainingSettings.from_json(request.config_json, "check", self.state_dir, self.artifacts)
        fields = json.loads(request.config_json or "{}")
        return "flow", request.display_name, fields, settings.flow.epochs

    def SampleFlow(self, request, context):  # noqa: N802 - gRPC method name
        fields = parse_sample(request)
        fields["checkpoint"] = self.checkpoint_of(fields["checkpoint"])
        model_id = fields.pop("model_id")
        guide = self.guide_of(model_id) if model_id else None
        with self._lock:  # one FlowSampling: one copy of each flow on the device
            if self._sampling is None:
                from services.flow.core import FlowSampling

                self._sampling = FlowSampling(self.device)
        result = self._sampling.sample(guide=guide, **fields)
        return flow_pb2.SampleFlowResponse(
            samples=encode_tensor(np.asarray(result.embeddings, dtype=np.float32)),
            lcb=[] if result.lcb is None else [float(v) for v in result.lcb],
            guided_steps=result.guided_steps,
            nearest_train_l2=[] if result.nearest_train_l2 is None else [float(v) for v in result.nearest_train_l2],
            heldout_nearest_l2=result.heldout_nearest_l2 or 0.0,
        )

    def checkpoint_of(self, run_id: str) -> Path:
        """The best checkpoint of flow training run `run_id` (SampleFlow's `checkpoint`)."""
        try:
            self.store.get(run_id)
        except NotFoundError:
            raise NotFoundError(f"checkpoint {shown(run_id)!r}: no flow training run has this id") from None
        path = flow_dir(self.state_dir, run_id) / "best_flow.pt"
        if not path.is_file():
            raise FailedPreconditionError(f"checkpoint {run_id!r}: the run has not finished an epoch yet")
        return path


def flow_service(
    store: RunStore, state_dir: str | Path, guide_of, device: str = "cpu", artifacts=None
) -> tuple[ServiceBinding, RunManager]:
    """The FlowService (runs under `state_dir`/flows/<run id>, trained and sampled on `device`,
    on embeddings uploaded to `artifacts`, by default a store under `state_dir`) and its run
    manager; `guide_of(model_id)` returns the ErrorModel that guides SampleFlow (NotFoundError or
    ValueError naming model_id)."""
    state_dir = Path(state_dir)
    artifacts = artifacts or FilesystemArtifactStore(state_dir / "artifacts", INPUT_KINDS)

    def factory(record, emit, usage, cancelled):
        settings = FlowTrainingSettings.from_json(json.dumps(record.config), record.run_id, state_dir, artifacts)
        return FlowTrainingJob(settings, emit, cancelled, record.run_id, device)

    manager = RunManager(store, factory)
    servicer = FlowServicer(store, manager, state_dir, guide_of, device, artifacts)
    add = flow_pb2_grpc.add_FlowServiceServicer_to_server
    return ServiceBinding.of(flow_pb2, "FlowService", add, servicer), manager
