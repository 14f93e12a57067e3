"""EcoFlow's FlowService client: flow training runs as operations, guided sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
from promptopt.flow.v1 import flow_pb2, flow_pb2_grpc

from services.common.channel import call
from services.common.codec import decode_tensor
from services.common.operation_client import OperationClient
from services.flow.types import FlowSamples, GuidanceSettings


class FlowClient(OperationClient):
    """Start, watch and cancel flow training runs; draw (guided) samples from a checkpoint."""

    pb2 = flow_pb2
    stub_class = flow_pb2_grpc.FlowServiceStub
    service = "flow"

    def sample(
        self,
        checkpoint: str,
        n: int,
        model_id: str = "",
        settings: GuidanceSettings | None = None,
        seed: int = 0,
        manifold_distance: bool = False,
    ) -> FlowSamples:
        settings = settings or GuidanceSettings()
        request = flow_pb2.SampleFlowRequest(
            checkpoint=checkpoint,
            n_samples=n,
            model_id=model_id,
            seed=seed,
            manifold_distance=manifold_distance,
            **dataclasses.asdict(settings),
        )
        response = call(self.stub.SampleFlow, request, self.timeout)  # NOT_FOUND: NotFoundError
        return FlowSamples(
            decode_tensor(response.samples),
            np.asarray(response.lcb, dtype=np.float64) if model_id else None,
            response.guided_steps,
            np.asarray(response.nearest_train_l2, dtype=np.float64) if manifold_distance else None,
            response.heldout_nearest_l2 if manifold_distance else None,
        )
