"""gRPC transport for the surrogate service: request validation and proto <-> domain conversion."""

from __future__ import annotations

import dataclasses

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

from services.common.codec import decode_tensor, encode_tensor
from services.common.errors import require
from services.surrogate.convert import settings_from_proto
from services.surrogate.types import (
    AcquisitionConfig,
    GpTraining,
    InversionConfig,
    JointGpConfig,
    JointVaeConfig,
    ScorerConfig,
    VaeConfig,
)

# Exported at 0 when none is held.
MODEL_KINDS = (
    "InstructionVAE",
    "DeepKernelSurrogate",
    "ExactGP",
    "StructureAwareVAE",
    "JointPromptGP",
    "ExemplarScorer",
)


class RegistryCollector:
    """Scrape-time metrics of the servicer's model registry: models and bytes held by kind, evictions."""

    def __init__(self, servicer):
        self.servicer = servicer

    def collect(self):
        models = GaugeMetricFamily("promptopt_surrogate_models", "Trained models held, by kind.", labels=["kind"])
        size = GaugeMetricFamily("promptopt_surrogate_model_bytes", "Memory of held models, by kind.", labels=["kind"])
        evictions = CounterMetricFamily(
            "promptopt_surrogate_evictions", "Models evicted to stay under the registry's byte bound."
        )
        if self.servicer.engine is not None:
            registry = self.servicer.engine.registry
            stats = registry.stats()
            for kind in sorted(set(MODEL_KINDS) | set(stats)):
                count, nbytes = stats.get(kind, (0, 0))
                models.add_metric([kind], count)
                size.add_metric([kind], nbytes)
            evictions.add_metric([], registry.evictions)
        yield from (models, size, evictions)


class SurrogateServicer(surrogate_pb2_grpc.SurrogateServiceServicer):
    def __init__(self, engine):
        """engine: a `services.surrogate.engine.SurrogateEngine` (set once models can load)."""
        self.engine = engine

    def TrainVae(self, request, context):
        embeddings = decode_tensor(request.embeddings, "embeddings", ndim=2)
        result = self.engine.train_vae(embeddings, settings_from_proto(request.settings, VaeConfig()), request.owner)
        fields = dataclasses.asdict(result)
        return surrogate_pb2.TrainVaeResponse(**fields | {"quality": surrogate_pb2.VaeQuality(**result.quality)})

    def FitModel(self, request, context):
        x = decode_tensor(request.train_x, "train_x", ndim=2)
        training = settings_from_proto(request.training, GpTraining())
        result = self.engine.fit(
            x, np.asarray(request.train_y), request.vae_id, request.minimize, training, request.owner
        )
        return surrogate_pb2.FitModelResponse(
            model_id=result.model_id, mll=result.mll, epochs_trained=result.epochs_trained
        )

    def UpdateModel(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        x = decode_tensor(request.x, "x", ndim=2)
        require(x.shape[0] == len(request.y) > 0, f"y has {len(request.y)} values but x has {x.shape[0]} rows")
        training = settings_from_proto(request.training, GpTraining.for_retrain())
        n, epochs = self.engine.update(request.model_id, x, np.asarray(request.y), training)
        return surrogate_pb2.UpdateModelResponse(num_observations=n, epochs_trained=epochs)

    def Predict(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        mean, var = self.engine.predict(request.model_id, decode_tensor(request.x, "x", ndim=2))
        return surrogate_pb2.PredictResponse(mean=mean.tolist(), variance=var.tolist())

    def ComputeAcquisition(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        x = decode_tensor(request.x, "x", ndim=2)
        if request.acquisition == surrogate_pb2.ACQUISITION_LOG_EI:
            values = self.engine.log_ei(request.model_id, x, request.best_f if request.HasField("best_f") else None)
        elif request.acquisition == surrogate_pb2.ACQUISITION_UCB:
            beta = request.beta if request.HasField("beta") else 2.0
            require(beta >= 0, "beta must be >= 0")
            values = self.engine.ucb(request.model_id, x, beta)
        else:
            raise ValueError(f"acquisition {request.acquisition} is not supported (use LOG_EI or UCB)")
        return surrogate_pb2.ComputeAcquisitionResponse(values=np.asarray(values).tolist())

    def OptimizeAcquisition(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        fields = {f.name: v for f, v in request.ListFields() if f.name not in ("model_id", "best_f")}
        point = self.engine.optimize(
            request.model_id, AcquisitionConfig(**fields), request.best_f if request.HasField("best_f") else None
        )
        return surrogate_pb2.OptimizeAcquisitionResponse(
            latent=encode_tensor(point.latent), embedding=encode_tensor([point.embedding]), log_ei=point.value
        )

    def DecodeLatent(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        embeddings = self.engine.decode(request.model_id, decode_tensor(request.latents, "latents", ndim=2))
        return surrogate_pb2.DecodeLatentResponse(embeddings=encode_tensor(embeddings))

    def InvertLatent(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        fields = {f.name: v for f, v in request.ListFields() if f.name not in ("model_id", "target", "latent_init")}
        point = self.engine.invert(
            request.model_id,
            decode_tensor(request.target, "target", ndim=1),
            decode_tensor(request.latent_init, "latent_init", ndim=1),
            InversionConfig(**fields),
        )
        return surrogate_pb2.InvertLatentResponse(
            latent=encode_tensor(point.latent),
            embedding=encode_tensor([point.embedding]),
            loss=point.value,
            steps=point.steps,
        )

    def TrainJointVae(self, request, context):
        result = self.engine.train_joint_vae(
            decode_tensor(request.instructions, "instructions", ndim=2),
            decode_tensor(request.pool, "pool", ndim=2),
            settings_from_proto(request.settings, JointVaeConfig()),
            request.owner,
        )
        return surrogate_pb2.TrainJointVaeResponse(**dataclasses.asdict(result))

    def EncodeJoint(self, request, context):
        require(bool(request.vae_id), "vae_id must be set")
        z = self.engine.encode_joint(
            request.vae_id,
            decode_tensor(request.instructions, "instructions", ndim=2),
            [list(s.ids) for s in request.exemplar_sets],
        )
        return surrogate_pb2.EncodeJointResponse(z=encode_tensor(z))

    def DecodeJoint(self, request, context):
        require(bool(request.vae_id), "vae_id must be set")
        embeddings, sets = self.engine.decode_joint(request.vae_id, decode_tensor(request.z, "z", ndim=2))
        return surrogate_pb2.DecodeJointResponse(
            instructions=encode_tensor(embeddings), exemplar_sets=[surrogate_pb2.ExemplarSet(ids=s) for s in sets]
        )

    def FitJointModel(self, request, context):
        z = decode_tensor(request.z, "z", ndim=2)
        require(
            len(request.errors) == len(request.fidelities) == z.shape[0],
            f"errors ({len(request.errors)}) and fidelities ({len(request.fidelities)}) need one value per row of z"
            f" ({z.shape[0]})",
        )
        settings = settings_from_proto(request.settings, JointGpConfig())
        result = self.engine.fit_joint(z, list(request.errors), list(request.fidelities), settings, request.owner)
        return surrogate_pb2.FitModelResponse(**dataclasses.asdict(result))

    def ProposeExemplars(self, request, context):
        require(bool(request.vae_id) and bool(request.model_id), "vae_id and model_id must be set")
        proposals = self.engine.propose_exemplars(
            request.vae_id,
            request.model_id,
            decode_tensor(request.instructions, "instructions", ndim=2),
            request.steps or 20,
            request.restarts or 5,
            request.seed,
        )
        return surrogate_pb2.ProposeExemplarsResponse(
            exemplar_sets=[surrogate_pb2.ExemplarSet(ids=ids) for ids, _ in proposals],
            log_ei=[value for _, value in proposals],
        )

    def OptimizeJoint(self, request, context):
        require(bool(request.model_id), "model_id must be set")
        fields = {f.name: v for f, v in request.ListFields() if f.name not in ("model_id", "seed")}  # 0 = default
        z, value = self.engine.optimize_joint(request.model_id, AcquisitionConfig(**fields), request.seed)
        return surrogate_pb2.OptimizeJointResponse(z=encode_tensor(z), log_ei=value)

    def TrainScorer(self, request, context):
        result = self.engine.train_scorer(
            decode_tensor(request.instructions, "instructions", ndim=2),
            decode_tensor(request.pool, "pool", ndim=2),
            decode_tensor(request.relevance, "relevance", ndim=2),
            settings_from_proto(request.settings, ScorerConfig()),
            request.owner,
        )
        return surrogate_pb2.TrainScorerResponse(**dataclasses.asdict(result))

    def ScoreExemplars(self, request, context):
        require(bool(request.scorer_id), "scorer_id must be set")
        scores, selected = self.engine.score_exemplars(
            request.scorer_id,
            decode_tensor(request.instructions, "instructions", ndim=2),
            request.k,
            request.mmr_lambda if request.HasField("mmr_lambda") else None,
        )
        return surrogate_pb2.ScoreExemplarsResponse(
            scores=encode_tensor(scores), selected=[surrogate_pb2.ExemplarSet(ids=s) for s in selected]
        )

    def DeleteModel(self, request, context):
        require(bool(request.model_id) != bool(request.owner), "exactly one of model_id and owner must be set")
        if request.owner:
            return surrogate_pb2.DeleteModelResponse(deleted=self.engine.delete_owned(request.owner))
        self.engine.delete(request.model_id)
        return surrogate_pb2.DeleteModelResponse(deleted=1)
