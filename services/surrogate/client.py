"""The surrogate's typed client: `SurrogateEngine`'s methods over gRPC."""

from __future__ import annotations

import dataclasses

import numpy as np
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

from services.common.channel import BaseClient, call
from services.common.codec import decode_tensor, encode_tensor
from services.surrogate.convert import settings_to_proto
from services.surrogate.types import (
    AcquisitionConfig,
    FitResult,
    GpTraining,
    InversionConfig,
    JointGpConfig,
    JointVaeConfig,
    JointVaeResult,
    LatentPoint,
    ScorerConfig,
    ScorerTraining,
    VaeConfig,
    VaeResult,
)


class SurrogateClient(BaseClient):
    """Mirrors `services.surrogate.engine.SurrogateEngine` over gRPC, including its NotFoundError
    for an unknown model or VAE id (e.g. after the surrogate restarted)."""

    def __init__(self, config):
        super().__init__(config)
        self.stub = surrogate_pb2_grpc.SurrogateServiceStub(self.channel)

    def train_vae(self, embeddings, config: VaeConfig | None = None, owner: str = "") -> VaeResult:
        config = config or VaeConfig()
        request = surrogate_pb2.TrainVaeRequest(
            embeddings=encode_tensor(embeddings),
            settings=settings_to_proto(config, surrogate_pb2.VaeSettings),
            owner=owner,
        )
        r = call(self.stub.TrainVae, request, None)
        fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(VaeResult) if f.name != "quality"}
        return VaeResult(**fields, quality={f.name: getattr(r.quality, f.name) for f in r.quality.DESCRIPTOR.fields})

    def fit(
        self,
        train_x,
        train_y,
        vae_id: str = "",
        minimize: bool = False,
        training: GpTraining | None = None,
        owner: str = "",
    ):
        request = surrogate_pb2.FitModelRequest(
            train_x=encode_tensor(train_x),
            train_y=list(map(float, train_y)),
            vae_id=vae_id,
            minimize=minimize,
            owner=owner,
        )
        if training is not None:
            request.training.CopyFrom(settings_to_proto(training, surrogate_pb2.GpTrainingSettings))
        r = call(self.stub.FitModel, request, None)
        return FitResult(r.model_id, r.mll, r.epochs_trained)

    def update(self, model_id: str, x, y, training: GpTraining | None = None) -> tuple[int, int]:
        training = training or GpTraining.for_retrain()
        request = surrogate_pb2.UpdateModelRequest(
            model_id=model_id,
            x=encode_tensor(x),
            y=list(map(float, y)),
            training=settings_to_proto(training, surrogate_pb2.GpTrainingSettings),
        )
        r = call(self.stub.UpdateModel, request, None)
        return r.num_observations, r.epochs_trained

    def predict(self, model_id: str, x) -> tuple[np.ndarray, np.ndarray]:
        request = surrogate_pb2.PredictRequest(model_id=model_id, x=encode_tensor(x))
        response = call(self.stub.Predict, request, self.timeout)
        return np.array(response.mean), np.array(response.variance)

    def log_ei(self, model_id: str, x, best_f: float | None = None) -> np.ndarray:
        request = surrogate_pb2.ComputeAcquisitionRequest(
            model_id=model_id, x=encode_tensor(x), acquisition=surrogate_pb2.ACQUISITION_LOG_EI
        )
        if best_f is not None:
            request.best_f = best_f
        return np.array(call(self.stub.ComputeAcquisition, request, self.timeout).values)

    def optimize(self, model_id: str, config: AcquisitionConfig | None = None, best_f=None) -> LatentPoint:
        config = config or AcquisitionConfig()
        fields = surrogate_pb2.OptimizeAcquisitionRequest.DESCRIPTOR.fields_by_name
        shared = {k: v for k, v in dataclasses.asdict(config).items() if k in fields}  # the engine checks the rest
        request = surrogate_pb2.OptimizeAcquisitionRequest(model_id=model_id, **shared)
        if best_f is not None:
            request.best_f = best_f
        r = call(self.stub.OptimizeAcquisition, request, None)
        return LatentPoint(decode_tensor(r.latent).tolist(), decode_tensor(r.embedding)[0].tolist(), r.log_ei)

    def decode(self, model_id: str, latents) -> np.ndarray:
        request = surrogate_pb2.DecodeLatentRequest(model_id=model_id, latents=encode_tensor(latents))
        return decode_tensor(call(self.stub.DecodeLatent, request, self.timeout).embeddings)

    def invert(self, model_id: str, target, latent_init, config: InversionConfig | None = None) -> LatentPoint:
        config = config or InversionConfig()
        request = surrogate_pb2.InvertLatentRequest(
            model_id=model_id,
            target=encode_tensor(np.reshape(target, -1)),
            latent_init=encode_tensor(np.reshape(latent_init, -1)),
            **dataclasses.asdict(config),
        )
        r = call(self.stub.InvertLatent, request, self.timeout)
        return LatentPoint(decode_tensor(r.latent).tolist(), decode_tensor(r.embedding)[0].tolist(), r.loss, r.steps)

    # LIPO-E

    def train_joint_vae(self, instructions, pool, config: JointVaeConfig | None = None, owner: str = ""):
        request = surrogate_pb2.TrainJointVaeRequest(
            instructions=encode_tensor(instructions),
            pool=encode_tensor(pool),
            settings=settings_to_proto(config or JointVaeConfig(), surrogate_pb2.JointVaeSettings),
            owner=owner,
        )
        r = call(self.stub.TrainJointVae, request, None)
        return JointVaeResult(r.epochs_trained, r.final_loss, r.inst_cosine, r.exemplar_f1, r.vae_id, r.kl_divergence)

    def encode_joint(self, vae_id: str, instructions, exemplar_sets) -> np.ndarray:
        request = surrogate_pb2.EncodeJointRequest(
            vae_id=vae_id,
            instructions=encode_tensor(instructions),
            exemplar_sets=[surrogate_pb2.ExemplarSet(ids=list(s)) for s in exemplar_sets],
        )
        return decode_tensor(call(self.stub.EncodeJoint, request, self.timeout).z)

    def decode_joint(self, vae_id: str, z) -> tuple[np.ndarray, list[list[int]]]:
        request = surrogate_pb2.DecodeJointRequest(vae_id=vae_id, z=encode_tensor(z))
        r = call(self.stub.DecodeJoint, request, self.timeout)
        return decode_tensor(r.instructions), [list(s.ids) for s in r.exemplar_sets]

    def fit_joint(self, z, errors, fidelities, config: JointGpConfig | None = None, owner: str = "") -> FitResult:
        request = surrogate_pb2.FitJointModelRequest(
            z=encode_tensor(z),
            errors=list(map(float, errors)),
            fidelities=list(map(int, fidelities)),
            settings=settings_to_proto(config or JointGpConfig(), surrogate_pb2.JointGpSettings),
            owner=owner,
        )
        r = call(self.stub.FitJointModel, request, None)
        return FitResult(r.model_id, r.mll, r.epochs_trained, r.lengthscale_ratio)

    def propose_exemplars(self, vae_id: str, model_id: str, instructions, steps=20, restarts=5, seed=0):
        request = surrogate_pb2.ProposeExemplarsRequest(
            vae_id=vae_id,
            model_id=model_id,
            instructions=encode_tensor(instructions),
            steps=steps,
            restarts=restarts,
            seed=seed,
        )
        r = call(self.stub.ProposeExemplars, request, None)
        return [(list(s.ids), v) for s, v in zip(r.exemplar_sets, r.log_ei, strict=True)]

    def optimize_joint(self, model_id: str, config: AcquisitionConfig | None = None, seed: int = 0):
        config = config or AcquisitionConfig()
        request = surrogate_pb2.OptimizeJointRequest(
            model_id=model_id,
            num_restarts=config.num_restarts,
            raw_samples=config.raw_samples,
            maxiter=config.maxiter,
            latent_margin=config.latent_margin,
            seed=seed,
            acquisition=config.acquisition,
            ucb_beta=config.ucb_beta,
            distance_weight=config.distance_weight,
        )
        r = call(self.stub.OptimizeJoint, request, None)
        return decode_tensor(r.z), r.log_ei

    def train_scorer(self, instructions, pool, relevance, config: ScorerConfig | None = None, owner: str = ""):
        request = surrogate_pb2.TrainScorerRequest(
            instructions=encode_tensor(instructions),
            pool=encode_tensor(pool),
            relevance=encode_tensor(relevance),
            settings=settings_to_proto(config or ScorerConfig(), surrogate_pb2.ScorerSettings),
            owner=owner,
        )
        r = call(self.stub.TrainScorer, request, None)
        return ScorerTraining(r.epochs_trained, r.first_loss, r.final_loss, r.scorer_id)

    def score_exemplars(self, scorer_id: str, instructions, k: int = 0, mmr_lambda: float | None = None):
        request = surrogate_pb2.ScoreExemplarsRequest(
            scorer_id=scorer_id, instructions=encode_tensor(instructions), k=k, mmr_lambda=mmr_lambda
        )
        r = call(self.stub.ScoreExemplars, request, self.timeout)
        return decode_tensor(r.scores), [list(s.ids) for s in r.selected]

    def delete(self, model_id: str) -> None:
        call(self.stub.DeleteModel, surrogate_pb2.DeleteModelRequest(model_id=model_id), self.timeout)

    def delete_owned(self, owner: str) -> int:
        request = surrogate_pb2.DeleteModelRequest(owner=owner)
        return call(self.stub.DeleteModel, request, self.timeout).deleted
