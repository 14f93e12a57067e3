"""Start the decoder service: `python -m services.decoder` (env `PROMPTOPT_DECODER_*`)."""

from __future__ import annotations

import dataclasses
import logging
import time

import grpc
from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc

from services.common.clients import EncoderClient
from services.common.config import ClientConfig, ServerConfig, from_env
from services.common.server import ServiceBinding, serve
from services.decoder.core import NearestTextInverter
from services.decoder.server import DecoderServicer

PREFIX = "PROMPTOPT_DECODER_"


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    encoder_address: str = "127.0.0.1:50051"
    auth_token: str = ""
    tls_ca: str = ""


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = from_env(DecoderConfig, PREFIX)
    encoder = EncoderClient(ClientConfig(config.encoder_address, tls_ca=config.tls_ca, auth_token=config.auth_token))
    servicer = DecoderServicer(None)

    def load():
        while True:  # the encoder may still be loading its model
            try:
                servicer.dimension = encoder.model_info().dimension
                break
            except grpc.RpcError:
                time.sleep(1.0)
        servicer.inverter = NearestTextInverter(encoder.encode)

    binding = ServiceBinding.of(
        decoder_pb2, "DecoderService", decoder_pb2_grpc.add_DecoderServiceServicer_to_server, servicer
    )
    serve(from_env(ServerConfig, PREFIX), [binding], load=load).wait()


if __name__ == "__main__":
    main()
