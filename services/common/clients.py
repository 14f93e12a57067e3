"""Typed clients, one per service, returning domain types.

Channels retry UNAVAILABLE with exponential backoff (gRPC service config), carry the bearer
token when configured, use TLS when a CA is given, and set a deadline on every call.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc
from promptopt.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc
from promptopt.operations.v1 import operations_pb2
from promptopt.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc
from promptopt.tuner.v1 import tuner_pb2_grpc

from services.common import convert
from services.common.codec import decode_tensor, encode_tensor
from services.common.config import ClientConfig
from services.common.errors import NotFoundError
from services.common.types import (
    AcquisitionConfig,
    DecodingParams,
    EvaluationRequest,
    EvaluationResult,
    FitResult,
    GenerateResult,
    GpTraining,
    InversionConfig,
    LatentPoint,
    ModelRole,
    UsageReport,
    VaeConfig,
    VaeResult,
)

_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


class _TokenAuth(grpc.AuthMetadataPlugin):
    def __init__(self, token: str):
        self._token = token

    def __call__(self, context, callback):
        callback((("authorization", f"Bearer {self._token}"),), None)


class _BearerInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the bearer token on insecure (loopback) channels, where call credentials are refused."""

    def __init__(self, token: str):
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = [*(details.metadata or ()), self._metadata]
        return _Details(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


class _Details(
    collections.namedtuple("_Details", "method timeout metadata credentials wait_for_ready compression"),
    grpc.ClientCallDetails,
):
    pass


def make_channel(config: ClientConfig) -> grpc.Channel:
    """A channel with retries, message-size limits and optional TLS/token."""
    size = config.max_message_mb * 1024 * 1024
    options = [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(_RETRY_POLICY)),
    ]
    if config.tls_ca:
        with open(config.tls_ca, "rb") as fh:
            creds = grpc.ssl_channel_credentials(root_certificates=fh.read())
        if config.auth_token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.metadata_call_credentials(_TokenAuth(config.auth_token))
            )
        return grpc.secure_channel(config.address, creds, options)
    channel = grpc.insecure_channel(config.address, options)
    if config.auth_token:
        channel = grpc.intercept_channel(channel, _BearerInterceptor(config.auth_token))
    return channel


class BaseClient:
    """Base: owns a channel and a default deadline."""

    def __init__(self, config: ClientConfig | str):
        self.config = ClientConfig(config) if isinstance(config, str) else config
        self.channel = make_channel(self.config)
        self.timeout = self.config.timeout_seconds

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The health status name (SERVING, NOT_SERVING, ...) of `service` ('' = overall)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EncoderClient(BaseClient):
    def __init__(self, config):
        super().__init__(config)
        self.stub = encoder_pb2_grpc.EncoderServiceStub(self.channel)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings, shape [len(texts), dim]."""
        response = self.stub.Encode(encoder_pb2.EncodeRequest(texts=list(texts)), timeout=self.timeout)
        return decode_tensor(response.embeddings, "embeddings", ndim=2)

    def model_info(self) -> encoder_pb2.GetModelInfoResponse:
        return self.stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=self.timeout)


class DecoderClient(BaseClient):
    def __init__(self, config):
        super().__init__(config)
        self.stub = decoder_pb2_grpc.DecoderServiceStub(self.channel)

    def invert(self, embeddings, seed_texts: Sequence[str] = (), num_steps: int = 0, beam_width: int = 0):
        """([(text, cosine)] per embedding row, LLM usage). No deadline: LLM-guided inversion is slow on CPU."""
        response = self.stub.Invert(
            decoder_pb2.InvertRequest(
                embeddings=encode_tensor(embeddings),
                seed_texts=list(seed_texts),
                num_steps=num_steps,
                beam_width=beam_width,
            ),
            timeout=None,
        )
        return [(inv.text, inv.cosine) for inv in response.inversions], convert.usage_from_proto(response.usage)


class LlmEvalClient(BaseClient):
    """Same methods and types as `services.llm_eval.core.LlmEvaluator`."""

    def __init__(self, config):
        super().__init__(config)
        self.stub = llm_eval_pb2_grpc.LlmEvalServiceStub(self.channel)

    def generate(
        self, prompts: Sequence[str], params: DecodingParams, role: ModelRole = ModelRole.META, model: str = ""
    ) -> GenerateResult:
        request = llm_eval_pb2.GenerateRequest(
            prompts=list(prompts), params=convert.params_to_proto(params), role=int(role), model=model
        )
        return convert.generate_result_from_proto(self.stub.Generate(request, timeout=self.timeout))

    def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        response = self.stub.EvaluatePrompt(convert.eval_request_to_proto(request), timeout=self.timeout)
        return convert.eval_result_from_proto(response)

    def dataset_info(self, dataset: str) -> dict[str, int]:
        response = self.stub.GetDatasetInfo(llm_eval_pb2.GetDatasetInfoRequest(dataset=dataset), timeout=self.timeout)
        return {s.name: s.size for s in response.splits}

    def usage(self) -> UsageReport:
        return convert.usage_report_from_proto(self.stub.GetUsage(llm_eval_pb2.GetUsageRequest(), timeout=self.timeout))


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
            settings=convert.settings_to_proto(config, surrogate_pb2.VaeSettings),
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
            request.training.CopyFrom(convert.settings_to_proto(training, surrogate_pb2.GpTrainingSettings))
        r = self._call(self.stub.FitModel, request, None)
        return FitResult(r.model_id, r.mll, r.epochs_trained)

    def update(self, model_id: str, x, y, training: GpTraining | None = None) -> tuple[int, int]:
        training = training or GpTraining.for_retrain()
        request = surrogate_pb2.UpdateModelRequest(
            model_id=model_id,
            x=encode_tensor(x),
            y=list(map(float, y)),
            training=convert.settings_to_proto(training, surrogate_pb2.GpTrainingSettings),
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
        request = surrogate_pb2.OptimizeAcquisitionRequest(model_id=model_id, **dataclasses.asdict(config))
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

    def delete(self, model_id: str) -> None:
        self._call(self.stub.DeleteModel, surrogate_pb2.DeleteModelRequest(model_id=model_id), self.timeout)

    def delete_owned(self, owner: str) -> int:
        request = surrogate_pb2.DeleteModelRequest(owner=owner)
        return self._call(self.stub.DeleteModel, request, self.timeout).deleted


class OptimizerClient(BaseClient):
    """Operation-pattern client for the optimizer (raw protos: runs are the user's objects)."""

    pb2 = optimizer_pb2

    def __init__(self, config):
        super().__init__(config)
        self.stub = optimizer_pb2_grpc.OptimizerServiceStub(self.channel)

    def start(self, request) -> operations_pb2.Run:
        return self.stub.StartRun(request, timeout=self.timeout).run

    def get(self, run_id: str):
        return self.stub.GetRun(self.pb2.GetRunRequest(run_id=run_id), timeout=self.timeout).run

    def list(self, page_size: int = 50, page_token: str = ""):
        return self.stub.ListRuns(
            self.pb2.ListRunsRequest(page_size=page_size, page_token=page_token), timeout=self.timeout
        )

    def cancel(self, run_id: str):
        return self.stub.CancelRun(self.pb2.CancelRunRequest(run_id=run_id), timeout=self.timeout).run

    def watch(self, run_id: str, after_sequence: int = 0, timeout: float | None = None) -> Iterator:
        """The run's `operations.v1.RunEvent`s after `after_sequence`, until the run ends."""
        request = self.pb2.WatchRunRequest(run_id=run_id, after_sequence=after_sequence)
        for response in self.stub.WatchRun(request, timeout=timeout):
            yield response.event


class TunerClient(OptimizerClient):
    """Same operation pattern over the tuner service."""

    from promptopt.tuner.v1 import tuner_pb2 as pb2

    def __init__(self, config):
        BaseClient.__init__(self, config)
        self.stub = tuner_pb2_grpc.TunerServiceStub(self.channel)
