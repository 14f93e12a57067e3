"""gRPC transport for the surrogate service."""

from __future__ import annotations

import numpy as np
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

from services.common.codec import decode_tensor
from services.common.errors import require
from services.surrogate.core import ExactGP, ModelRegistry


class SurrogateServicer(surrogate_pb2_grpc.SurrogateServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def FitModel(self, request, context):
        x = decode_tensor(request.train_x, "train_x", ndim=2)
        model = ExactGP(x, np.asarray(request.train_y, dtype=np.float64))
        return surrogate_pb2.FitModelResponse(model_id=self.registry.add(model), mll=model.mll)

    def Predict(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        mean, var = self.registry.get(request.model_id).predict(decode_tensor(request.x, "x", ndim=2))
        return surrogate_pb2.PredictResponse(mean=mean.tolist(), variance=var.tolist())

    def ComputeAcquisition(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        model = self.registry.get(request.model_id)
        x = decode_tensor(request.x, "x", ndim=2)
        if request.acquisition == surrogate_pb2.ACQUISITION_LOG_EI:
            values = model.log_ei(x, request.best_f if request.HasField("best_f") else None)
        elif request.acquisition == surrogate_pb2.ACQUISITION_UCB:
            beta = request.beta if request.HasField("beta") else 2.0
            require(beta >= 0, "beta must be >= 0")
            values = model.ucb(x, beta)
        else:
            raise ValueError(f"acquisition {request.acquisition} is not supported (use LOG_EI or UCB)")
        return surrogate_pb2.ComputeAcquisitionResponse(values=np.asarray(values).tolist())

    def DeleteModel(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        self.registry.delete(request.model_id)
        return surrogate_pb2.DeleteModelResponse()
