"""Start the surrogate service: `python -m services.surrogate` (env `PROMPTOPT_SURROGATE_*`)."""

from __future__ import annotations

import logging

from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

from services.common.config import ServerConfig, from_env
from services.common.server import ServiceBinding, serve
from services.surrogate.server import SurrogateServicer

PREFIX = "PROMPTOPT_SURROGATE_"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    servicer = SurrogateServicer(None)
    binding = ServiceBinding.of(
        surrogate_pb2, "SurrogateService", surrogate_pb2_grpc.add_SurrogateServiceServicer_to_server, servicer
    )

    def load():  # importing torch/BoTorch is the slow part of start-up; health turns SERVING after it
        from services.surrogate.engine import SurrogateEngine

        servicer.engine = SurrogateEngine()

    serve(from_env(ServerConfig, PREFIX), [binding], load=load).wait()


if __name__ == "__main__":
    main()
