"""Start the decoder service: `python -m services.decoder` (env `PROMPTOPT_DECODER_*`)."""

from __future__ import annotations

import dataclasses
import logging
import time

import grpc
from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc

from services.common.config import ClientConfig, ServerConfig, from_env
from services.common.server import ServiceBinding, run_service, serve
from services.common.text import EncodeMemo
from services.decoder.core import (
    GTR_ST,
    Inverter,
    LlmGuidedInverter,
    NearestTextInverter,
    SonarInverter,
    Vec2TextInverter,
    vec2text_model,
)
from services.decoder.server import DecoderServicer
from services.encoder.client import EncoderClient
from services.encoder.types import SONAR_ENCODER, SONAR_PREFIX
from services.llm_eval.client import LlmEvalClient
from services.llm_eval.types import ModelRole

PREFIX = "PROMPTOPT_DECODER_"
BACKENDS = ("llm-guided", "nearest", "vec2text", "sonar")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """backend: llm-guided (CPU default, needs llm_eval) | nearest | vec2text | sonar.

    vec2text_model_type: 32_tokens (the ielabgroup pair over sentence-transformers GTR), gtr-base
    (vec2text's pair over its own GTR embedding) or 512_tokens (the seed's default: an
    InversionModel named by vec2text_inversion_model, inverting vec2text_embedder's output).
    The encoder must serve the embedding the inverter was trained on; start-up checks it.
    """

    backend: str = "llm-guided"
    encoder_address: str = "127.0.0.1:50051"
    llm_eval_address: str = "127.0.0.1:50053"
    num_steps: int = 3
    beam_width: int = 4
    candidates_per_step: int = 4
    vec2text_model_type: str = "512_tokens"
    vec2text_inversion_model: str = ""
    vec2text_embedder: str = GTR_ST
    vec2text_num_steps: int = 20
    vec2text_beam: int = 8
    sonar_decoder: str = "text_sonar_basic_decoder"
    auth_token: str = dataclasses.field(default="", repr=False)
    tls_ca: str = ""
    # the service's own certificate (its server identity) is its client identity under mTLS
    tls_cert: str = ""
    tls_key: str = ""

    def identity(self) -> dict:
        """TLS and token settings for this service's clients."""
        mtls = {"tls_cert": self.tls_cert, "tls_key": self.tls_key} if self.tls_ca else {}
        return {"tls_ca": self.tls_ca, "auth_token": self.auth_token, **mtls}

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "vec2text":
            vec2text_model(self.vec2text_model_type, self.vec2text_inversion_model, self.vec2text_embedder)


def build_inverter(config: DecoderConfig, encoder: EncoderClient, info) -> Inverter:
    """The configured inverter over `encoder` (whose GetModelInfo is `info`)."""
    encode = EncodeMemo(encoder.encode)  # callers send the same seed pool with every Invert
    if config.backend == "nearest":
        return NearestTextInverter(encode)
    if config.backend == "vec2text":
        model = vec2text_model(config.vec2text_model_type, config.vec2text_inversion_model, config.vec2text_embedder)
        if info.model != model.embedder:
            raise ValueError(
                f"vec2text {config.vec2text_model_type} inverts {model.embedder} embeddings, but the encoder "
                f"serves {info.model!r}: set PROMPTOPT_ENCODER_MODEL={model.embedder}"
            )
        return Vec2TextInverter(encode, model, info.normalized, config.vec2text_num_steps, config.vec2text_beam)
    if config.backend == "sonar":
        if not info.model.startswith(SONAR_PREFIX):
            raise ValueError(
                f"the sonar decoder inverts SONAR embeddings, but the encoder serves {info.model!r}: "
                f"set PROMPTOPT_ENCODER_MODEL={SONAR_ENCODER}"
            )
        return SonarInverter(encode, config.sonar_decoder)
    llm = LlmEvalClient(ClientConfig(config.llm_eval_address, **config.identity()))
    return LlmGuidedInverter(
        encode,
        lambda prompts, params: llm.generate(prompts, params, ModelRole.META),
        config.num_steps,
        config.beam_width,
        config.candidates_per_step,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = from_env(DecoderConfig, PREFIX)
    encoder = EncoderClient(ClientConfig(config.encoder_address, **config.identity()))
    servicer = DecoderServicer(None)

    def load():
        while True:  # the encoder may still be loading its model
            try:
                info = encoder.model_info()
                break
            except grpc.RpcError:
                time.sleep(1.0)
        servicer.dimension = info.dimension
        servicer.inverter = build_inverter(config, encoder, info)

    binding = ServiceBinding.of(
        decoder_pb2, "DecoderService", decoder_pb2_grpc.add_DecoderServiceServicer_to_server, servicer
    )
    serve(from_env(ServerConfig, PREFIX), [binding], load=load).wait()


if __name__ == "__main__":
    run_service(main)
