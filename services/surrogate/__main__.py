"""Start the surrogate service: `python -m services.surrogate` (env `PROMPTOPT_SURROGATE_*`)."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from prometheus_client import REGISTRY
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

from services.common.config import ServerConfig, from_env
from services.common.operations import RunStore
from services.common.server import ServiceBinding, run_service, serve
from services.surrogate.flow_service import flow_service
from services.surrogate.server import RegistryCollector, SurrogateServicer

PREFIX = "PROMPTOPT_SURROGATE_"


@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
    """max_model_mb: bound on the memory of held models (VAEs, GPs); past it the least recently
    used are evicted. 0 = unbounded. state_dir: EcoFlow's flow training runs and checkpoints.
    device: where flow models train and sample (cuda in the GPU images); GPs and VAEs stay on CPU."""

    max_model_mb: int = 4096
    # flow training runs (runs.sqlite) and their checkpoints (flows/<run id>/)
    state_dir: str = "state/surrogate"
    device: str = "cpu"

    def __post_init__(self):
        if self.max_model_mb < 0:
            raise ValueError(f"max_model_mb must be >= 0, got {self.max_model_mb}")
        if self.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = from_env(SurrogateConfig, PREFIX)
    servicer = SurrogateServicer(None)
    REGISTRY.register(RegistryCollector(servicer))
    binding = ServiceBinding.of(
        surrogate_pb2, "SurrogateService", surrogate_pb2_grpc.add_SurrogateServiceServicer_to_server, servicer
    )

    def load():  # importing torch/BoTorch is the slow part of start-up; health turns SERVING after it
        import torch

        from services.surrogate.core import ModelRegistry
        from services.surrogate.engine import SurrogateEngine

        if config.device != "cpu" and not torch.cuda.is_available():
            raise RuntimeError(f"PROMPTOPT_SURROGATE_DEVICE={config.device} but this torch sees no CUDA device")

        servicer.engine = SurrogateEngine(ModelRegistry(config.max_model_mb * 1024 * 1024), config.device)

    store = RunStore(str(Path(config.state_dir) / "runs.sqlite"), exclusive=True)
    flows, manager = flow_service(store, config.state_dir, lambda: servicer.engine, config.device)

    def load_and_resume():
        load()
        manager.resume_unfinished()  # flow training runs left unfinished by a previous process

    serve(from_env(ServerConfig, PREFIX), [binding, flows], load=load_and_resume).wait()


if __name__ == "__main__":
    run_service(main)
