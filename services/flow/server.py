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

from services.common.codec import encode_tensor
from services.common.operation_server import OperationServicer
from services.common.operations import RunManager, RunStore
from services.common.server import ServiceBinding
from services.flow.convert import parse_sample
from services.flow.training import FlowTrainingJob, FlowTrainingSettings


class FlowServicer(OperationServicer):
    """The six run RPCs over the flow training runs, and SampleFlow (guided by `guide_of(model_id)`,
    an ErrorModel from the process's surrogate)."""

    def __init__(self, store: RunStore, manager: RunManager, state_dir: Path, guide_of, device: str):
        super().__init__(flow_pb2, store, manager, lambda request: self._parse_start(request))
        self.state_dir, self.guide_of, self.device = state_dir, guide_of, device
        self._sampling = None  # a FlowSampling, built at the first SampleFlow (torch loads lazily)
        self._lock = threading.Lock()

    def _parse_start(self, request):
        settings = FlowTrainingSettings.from_json(request.config_json, "check", self.state_dir)
        fields = json.loads(request.config_json or "{}")
        if fields.get("output_dir") and (Path(settings.output_dir) / "last_flow.pt").is_file():
            raise ValueError(f"output_dir {settings.output_dir!r} holds another training run's checkpoints")
        from services.flow.core import load_embeddings

        load_embeddings(settings.data)  # refused now, not at the first epoch
        return "flow", request.display_name, fields, settings.flow.epochs

    def SampleFlow(self, request, context):  # noqa: N802 - gRPC method name
        fields = parse_sample(request)
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


def flow_service(
    store: RunStore, state_dir: str | Path, guide_of, device: str = "cpu"
) -> tuple[ServiceBinding, RunManager]:
    """The FlowService (runs under `state_dir`/flows/<run id>, trained and sampled on `device`)
    and its run manager; `guide_of(model_id)` returns the ErrorModel that guides SampleFlow
    (NotFoundError or ValueError naming model_id)."""
    state_dir = Path(state_dir)

    def factory(record, emit, usage, cancelled):
        settings = FlowTrainingSettings.from_json(json.dumps(record.config), record.run_id, state_dir)
        return FlowTrainingJob(settings, emit, cancelled, record.run_id, device)

    manager = RunManager(store, factory)
    servicer = FlowServicer(store, manager, state_dir, guide_of, device)
    add = flow_pb2_grpc.add_FlowServiceServicer_to_server
    return ServiceBinding.of(flow_pb2, "FlowService", add, servicer), manager
