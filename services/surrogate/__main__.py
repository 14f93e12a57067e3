"""Start the surrogate service: `python -m services.surrogate` (env `PROMPTOPT_SURROGATE_*`)."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from pathlib import Path

from prometheus_client import REGISTRY
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

from services.common.artifact_server import artifact_binding
from services.common.artifacts import ArtifactLimits, FilesystemArtifactStore
from services.common.config import ServerConfig, from_env
from services.common.operation_server import operations_binding
from services.common.operations import RunStore
from services.common.server import ServiceBinding, run_service, serve
from services.encoder.types import EMBEDDED_MODEL
from services.flow.server import INPUT_KINDS as FLOW_INPUT_KINDS
from services.flow.server import flow_service
from services.neuro.server import NEURO_DIR, neuro_service
from services.neuro.types import NeuroConfig
from services.surrogate.server import RegistryCollector, SurrogateServicer

PREFIX = "PROMPTOPT_SURROGATE_"
EMBEDDED_GENERATOR = "embedded:Qwen2.5-Coder-0.5B-Instruct-Q4_K_M"  # the project's CPU LLM, through transformers


@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
    """max_model_mb: bound on the memory of held models (VAEs, GPs); past it the least recently
    used are evicted. 0 = unbounded. state_dir: EcoFlow's flow training runs and checkpoints, and
    the Neuro-Latent runs, checkpoints and feedback (neuro/). device: where flow models train and
    sample and the Neuro-Latent models run (cuda in the GPU images); GPs and VAEs stay on CPU.
    neuro_encoder / neuro_generator: the Neuro-Latent frozen models new training runs use (the
    embedded CPU defaults; the GPU overlays set the seed's roberta-base and t5-small)."""

    max_model_mb: int = 4096
    # flow training runs (runs.sqlite) and their checkpoints (flows/<run id>/); neuro/
    state_dir: str = "state/surrogate"
    device: str = "cpu"
    neuro_encoder: str = EMBEDDED_MODEL
    neuro_generator: str = EMBEDDED_GENERATOR
    neuro_models: str = ""  # other encoder or generator names a training run may ask for, comma-separated

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

        servicer.engine = SurrogateEngine(ModelRegistry(config.max_model_mb * 1024 * 1024))

    store = RunStore(str(Path(config.state_dir) / "runs.sqlite"), exclusive=True)
    guide_of = lambda model_id: servicer.engine.error_gp(model_id)  # noqa: E731 - the engine loads later
    artifacts = FilesystemArtifactStore(
        Path(config.state_dir) / "artifacts", FLOW_INPUT_KINDS, from_env(ArtifactLimits, PREFIX)
    )
    flows, manager = flow_service(store, config.state_dir, guide_of, config.device, artifacts)

    defaults = NeuroConfig(encoder=config.neuro_encoder, generator=config.neuro_generator)
    neuro_store = RunStore(str(Path(config.state_dir) / NEURO_DIR / "runs.sqlite"), exclusive=True)
    allowed = tuple(name.strip() for name in config.neuro_models.split(",") if name.strip())
    neuro, neuro_manager, rewriters = neuro_service(
        neuro_store, config.state_dir, defaults, config.device, allowed_models=allowed
    )

    def start_neuro():  # the newest trained model's frozen models take a while to load: not before SERVING
        rewriters.load_newest()
        neuro_manager.resume_unfinished()

    def load_and_resume():
        load()
        manager.resume_unfinished()  # flow training runs left unfinished by a previous process
        threading.Thread(target=start_neuro, name="neuro-start", daemon=True).start()

    operations = operations_binding({"flow": (store, manager), "neuro": (neuro_store, neuro_manager)})
    bindings = [binding, flows, neuro, operations, artifact_binding(artifacts)]
    serve(from_env(ServerConfig, PREFIX), bindings, load=load_and_resume).wait()


if __name__ == "__main__":
    run_service(main)
