"""Start the optimizer service: `python -m services.optimizer` (env `PROMPTOPT_OPTIMIZER_*`).

Unfinished runs in the store are resumed at start-up.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from services.common.artifact_server import artifact_binding
from services.common.artifacts import ArtifactLimits, FilesystemArtifactStore
from services.common.config import ClientConfig, ServerConfig, from_env
from services.common.operation_server import operations_binding
from services.common.operations import RunStore
from services.common.server import run_service, serve
from services.decoder.client import DecoderClient
from services.encoder.client import EncoderClient
from services.flow.client import FlowClient
from services.llm_eval.client import Chunking, LlmEvalClient
from services.neuro.client import NeuroClient
from services.optimizer.algorithms.base import ModelServices
from services.optimizer.algorithms.inputs import INPUT_KINDS
from services.optimizer.server import optimizer_service
from services.surrogate.client import SurrogateClient

PREFIX = "PROMPTOPT_OPTIMIZER_"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    llm_eval_address: str = "127.0.0.1:50053"
    encoder_address: str = "127.0.0.1:50051"
    decoder_address: str = "127.0.0.1:50052"
    surrogate_address: str = "127.0.0.1:50054"
    store_path: str = "state/optimizer/runs.sqlite"
    auth_token: str = dataclasses.field(default="", repr=False)
    tls_ca: str = ""
    # the service's own certificate (its server identity) is its client identity under mTLS
    tls_cert: str = ""
    tls_key: str = ""

    def identity(self) -> dict:
        """TLS and token settings for this service's clients."""
        mtls = {"tls_cert": self.tls_cert, "tls_key": self.tls_key} if self.tls_ca else {}
        return {"tls_ca": self.tls_ca, "auth_token": self.auth_token, **mtls}

    # per attempt; transient failures are retried for retry_seconds
    rpc_timeout_seconds: float = 600.0
    retry_seconds: float = 300.0
    # long evaluations: first chunk size, then chunks of about this many seconds
    eval_chunk_questions: int = 16
    eval_chunk_seconds: float = 30.0


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = from_env(OptimizerConfig, PREFIX)

    def client(cls, address):
        return cls(
            ClientConfig(
                address,
                **config.identity(),
                timeout_seconds=config.rpc_timeout_seconds,
                retry_seconds=config.retry_seconds,
            )
        )

    llm = client(LlmEvalClient, config.llm_eval_address)
    models = ModelServices(
        client(EncoderClient, config.encoder_address),
        client(DecoderClient, config.decoder_address),
        client(SurrogateClient, config.surrogate_address),
        client(FlowClient, config.surrogate_address),
        client(NeuroClient, config.surrogate_address),
    )
    chunking = Chunking(config.eval_chunk_questions, config.eval_chunk_seconds)
    store = RunStore(config.store_path, exclusive=True)  # one optimizer per store: it resumes the runs
    state_dir = Path(config.store_path).parent
    artifacts = FilesystemArtifactStore(state_dir / "artifacts", INPUT_KINDS, from_env(ArtifactLimits, PREFIX))
    binding, manager = optimizer_service(store, llm, models, state_dir, chunking, artifacts)
    operations = operations_binding({"optimizer": (store, manager)})
    bindings = [binding, operations, artifact_binding(artifacts)]
    serve(from_env(ServerConfig, PREFIX), bindings, load=manager.resume_unfinished).wait()


if __name__ == "__main__":
    run_service(main)
