"""The surrogate's typed clients: `SurrogateEngine`'s methods over gRPC, and EcoFlow's FlowService
(flow training runs as operations, guided sampling)."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
from promptopt.flow.v1 import flow_pb2, flow_pb2_grpc
from promptopt.neuro.v1 import neuro_pb2, neuro_pb2_grpc
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

from services.common.channel import BaseClient
from services.common.codec import decode_tensor, encode_tensor
from services.common.errors import NotFoundError
from services.common.operation_client import OperationClient
from services.surrogate.convert import settings_to_proto
from services.surrogate.types import (
    AcquisitionConfig,
    Feedback,
    FitResult,
    FlowSamples,
    GpTraining,
    GuidanceSettings,
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

    @staticmethod
    def _call(rpc, request, timeout):
        try:
            return rpc(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(exc.details()) from exc
            raise

    def train_vae(self, embeddings, config: VaeConfig | None = None, owner: str = "") -> VaeResult:
        config = config or VaeConfig()
        request = surrogate_pb2.TrainVaeRequest(
            embeddings=encode_tensor(embeddings),
            settings=settings_to_proto(config, surrogate_pb2.VaeSettings),
            owner=owner,
        )
        r = self._call(self.stub.TrainVae, request, None)
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
        r = self._call(self.stub.FitModel, request, None)
        return FitResult(r.model_id, r.mll, r.epochs_trained)

    def update(self, model_id: str, x, y, training: GpTraining | None = None) -> tuple[int, int]:
        training = training or GpTraining.for_retrain()
        request = surrogate_pb2.UpdateModelRequest(
            model_id=model_id,
            x=encode_tensor(x),
            y=list(map(float, y)),
            training=settings_to_proto(training, surrogate_pb2.GpTrainingSettings),
        )
        r = self._call(self.stub.UpdateModel, request, None)
        return r.num_observations, r.epochs_trained

    def predict(self, model_id: str, x) -> tuple[np.ndarray, np.ndarray]:
        request = surrogate_pb2.PredictRequest(model_id=model_id, x=encode_tensor(x))
        response = self._call(self.stub.Predict, request, self.timeout)
        return np.array(response.mean), np.array(response.variance)

    def log_ei(self, model_id: str, x, best_f: float | None = None) -> np.ndarray:
        request = surrogate_pb2.ComputeAcquisitionRequest(
            model_id=model_id, x=encode_tensor(x), acquisition=surrogate_pb2.ACQUISITION_LOG_EI
        )
        if best_f is not None:
            request.best_f = best_f
        return np.array(self._call(self.stub.ComputeAcquisition, request, self.timeout).values)

    def optimize(self, model_id: str, config: AcquisitionConfig | None = None, best_f=None) -> LatentPoint:
        config = config or AcquisitionConfig()
        fields = surrogate_pb2.OptimizeAcquisitionRequest.DESCRIPTOR.fields_by_name
        shared = {k: v for k, v in dataclasses.asdict(config).items() if k in fields}  # the engine checks the rest
        request = surrogate_pb2.OptimizeAcquisitionRequest(model_id=model_id, **shared)
        if best_f is not None:
            request.best_f = best_f
        r = self._call(self.stub.OptimizeAcquisition, request, None)
        return LatentPoint(decode_tensor(r.latent).tolist(), decode_tensor(r.embedding)[0].tolist(), r.log_ei)

    def decode(self, model_id: str, latents) -> np.ndarray:
        request = surrogate_pb2.DecodeLatentRequest(model_id=model_id, latents=encode_tensor(latents))
        return decode_tensor(self._call(self.stub.DecodeLatent, request, self.timeout).embeddings)

    def invert(self, model_id: str, target, latent_init, config: InversionConfig | None = None) -> LatentPoint:
        config = config or InversionConfig()
        request = surrogate_pb2.InvertLatentRequest(
            model_id=model_id,
            target=encode_tensor(np.reshape(target, -1)),
            latent_init=encode_tensor(np.reshape(latent_init, -1)),
            **dataclasses.asdict(config),
        )
        r = self._call(self.stub.InvertLatent, request, self.timeout)
        return LatentPoint(decode_tensor(r.latent).tolist(), decode_tensor(r.embedding)[0].tolist(), r.loss, r.steps)

    # LIPO-E

    def train_joint_vae(self, instructions, pool, config: JointVaeConfig | None = None, owner: str = ""):
        request = surrogate_pb2.TrainJointVaeRequest(
            instructions=encode_tensor(instructions),
            pool=encode_tensor(pool),
            settings=settings_to_proto(config or JointVaeConfig(), surrogate_pb2.JointVaeSettings),
            owner=owner,
        )
        r = self._call(self.stub.TrainJointVae, request, None)
        return JointVaeResult(r.epochs_trained, r.final_loss, r.inst_cosine, r.exemplar_f1, r.vae_id, r.kl_divergence)

    def encode_joint(self, vae_id: str, instructions, exemplar_sets) -> np.ndarray:
        request = surrogate_pb2.EncodeJointRequest(
            vae_id=vae_id,
            instructions=encode_tensor(instructions),
            exemplar_sets=[surrogate_pb2.ExemplarSet(ids=list(s)) for s in exemplar_sets],
        )
        return decode_tensor(self._call(self.stub.EncodeJoint, request, self.timeout).z)

    def decode_joint(self, vae_id: str, z) -> tuple[np.ndarray, list[list[int]]]:
        request = surrogate_pb2.DecodeJointRequest(vae_id=vae_id, z=encode_tensor(z))
        r = self._call(self.stub.DecodeJoint, request, self.timeout)
        return decode_tensor(r.instructions), [list(s.ids) for s in r.exemplar_sets]

    def fit_joint(self, z, errors, fidelities, config: JointGpConfig | None = None, owner: str = "") -> FitResult:
        request = surrogate_pb2.FitJointModelRequest(
            z=encode_tensor(z),
            errors=list(map(float, errors)),
            fidelities=list(map(int, fidelities)),
            settings=settings_to_proto(config or JointGpConfig(), surrogate_pb2.JointGpSettings),
            owner=owner,
        )
        r = self._call(self.stub.FitJointModel, request, None)
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
        r = self._call(self.stub.ProposeExemplars, request, None)
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
        r = self._call(self.stub.OptimizeJoint, request, None)
        return decode_tensor(r.z), r.log_ei

    def train_scorer(self, instructions, pool, relevance, config: ScorerConfig | None = None, owner: str = ""):
        request = surrogate_pb2.TrainScorerRequest(
            instructions=encode_tensor(instructions),
            pool=encode_tensor(pool),
            relevance=encode_tensor(relevance),
            settings=settings_to_proto(config or ScorerConfig(), surrogate_pb2.ScorerSettings),
            owner=owner,
        )
        r = self._call(self.stub.TrainScorer, request, None)
        return ScorerTraining(r.epochs_trained, r.first_loss, r.final_loss, r.scorer_id)

    def score_exemplars(self, scorer_id: str, instructions, k: int = 0, mmr_lambda: float | None = None):
        request = surrogate_pb2.ScoreExemplarsRequest(
            scorer_id=scorer_id, instructions=encode_tensor(instructions), k=k, mmr_lambda=mmr_lambda
        )
        r = self._call(self.stub.ScoreExemplars, request, self.timeout)
        return decode_tensor(r.scores), [list(s.ids) for s in r.selected]

    def delete(self, model_id: str) -> None:
        self._call(self.stub.DeleteModel, surrogate_pb2.DeleteModelRequest(model_id=model_id), self.timeout)

    def delete_owned(self, owner: str) -> int:
        request = surrogate_pb2.DeleteModelRequest(owner=owner)
        return self._call(self.stub.DeleteModel, request, self.timeout).deleted


class FlowClient(OperationClient):
    """Start, watch and cancel flow training runs; draw (guided) samples from a checkpoint."""

    pb2 = flow_pb2
    stub_class = flow_pb2_grpc.FlowServiceStub

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
        response = SurrogateClient._call(self.stub.SampleFlow, request, self.timeout)  # NOT_FOUND: NotFoundError
        return FlowSamples(
            decode_tensor(response.samples),
            np.asarray(response.lcb, dtype=np.float64) if model_id else None,
            response.guided_steps,
            np.asarray(response.nearest_train_l2, dtype=np.float64) if manifold_distance else None,
            response.heldout_nearest_l2 if manifold_distance else None,
        )


class NeuroClient(OperationClient):
    """Start, watch and cancel Neuro-Latent training runs; rewrite prompts; store feedback."""

    pb2 = neuro_pb2
    stub_class = neuro_pb2_grpc.NeuroServiceStub

    def optimize(
        self,
        raw_prompt: str,
        max_length: int | None = None,
        num_return_sequences: int | None = None,
        checkpoint: str = "",
        temperature: float | None = None,
        seed: int = 0,
    ) -> tuple[list[str], str]:
        """(rewritten prompts, the checkpoint that wrote them); unset values take the seed's."""
        request = neuro_pb2.OptimizeRequest(
            raw_prompt=raw_prompt,
            max_length=max_length,
            num_return_sequences=num_return_sequences,
            checkpoint=checkpoint,
            temperature=temperature,
            seed=seed,
        )
        response = SurrogateClient._call(self.stub.Optimize, request, self.timeout)
        return list(response.optimized_prompts), response.checkpoint

    def submit_feedback(self, feedback: Feedback) -> tuple[int, int]:
        """(the stored feedback's id, feedback stored so far)."""
        request = neuro_pb2.SubmitFeedbackRequest(feedback=neuro_pb2.Feedback(**dataclasses.asdict(feedback)))
        response = SurrogateClient._call(self.stub.SubmitFeedback, request, self.timeout)
        return response.feedback_id, response.total

    def list_feedback(self, page_size: int = 50, page_token: str = "") -> tuple[list[tuple[int, float, Feedback]], str]:
        """((id, time, feedback) newest first, the next page's token or "")."""
        request = neuro_pb2.ListFeedbackRequest(page_size=page_size, page_token=page_token)
        response = SurrogateClient._call(self.stub.ListFeedback, request, self.timeout)
        rows = [
            (
                row.feedback_id,
                row.time,
                Feedback(**{f.name: getattr(row.feedback, f.name) for f in dataclasses.fields(Feedback)}),
            )
            for row in response.feedback
        ]
        return rows, response.next_page_token
