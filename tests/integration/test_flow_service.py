"""EcoFlow's flow service on a real gRPC server (the surrogate's two services): a training run
with progress and checkpoints, cancelled and resumed without repeating an epoch; sampling
reproducible by seed; guidance by a real GP fitted through FitModel lowers the samples' LCB;
bad input is INVALID_ARGUMENT naming the field, and nothing refused is stored."""

from __future__ import annotations

import json

import grpc
import pytest
import torch
from promptopt.flow.v1 import flow_pb2
from promptopt.operations.v1 import operations_pb2

from services.common.artifact_client import ArtifactClient
from services.common.artifact_server import artifact_binding
from services.common.artifacts import FilesystemArtifactStore
from services.common.config import ServerConfig
from services.common.operation_server import operations_binding
from services.common.operations import RunStore
from services.common.server import serve
from services.flow.client import FlowClient
from services.flow.core import FlowConfig, nearest_l2, split
from services.flow.server import flow_service
from services.flow.training import INPUT_KINDS
from services.flow.types import GuidanceSettings
from services.surrogate.client import SurrogateClient
from services.surrogate.engine import SurrogateEngine
from tests.contract.conftest import surrogate_binding

SMALL = {"hidden_dim": 64, "num_blocks": 2, "time_embed_dim": 32, "batch_size": 128, "lr": 2e-3, "normalize": True}


def known_embeddings(n: int = 1200, dim: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=generator) * torch.linspace(0.5, 2.0, dim) + torch.linspace(-1, 1, dim)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    local = tmp_path_factory.mktemp("client") / "embeddings.pt"  # the client's file, uploaded as content
    torch.save({"embeddings": known_embeddings(), "source": "a known Gaussian"}, local)
    engine = SurrogateEngine()
    store = RunStore(root / "runs.sqlite")
    artifacts = FilesystemArtifactStore(root / "artifacts", INPUT_KINDS)
    flows, manager = flow_service(store, root, engine.error_gp, artifacts=artifacts)
    running = serve(
        ServerConfig(port=0, metrics_port=-1),
        [surrogate_binding(engine), flows, operations_binding({"flow": (store, manager)}), artifact_binding(artifacts)],
        install_signal_handlers=False,
    )
    assert running.ready.wait(60)
    address = f"127.0.0.1:{running.port}"
    with FlowClient(address) as flow, SurrogateClient(address) as surrogate, ArtifactClient(address) as uploads:
        data = uploads.upload("embeddings", local)
        yield flow, surrogate, data, store
    running.stop()


def train(flow: FlowClient, fields: dict) -> tuple[operations_pb2.Run, list]:
    run = flow.start(flow_pb2.StartRunRequest(config_json=json.dumps(fields)))
    events = list(flow.watch(run.run_id))
    return flow.get(run.run_id), events


@pytest.fixture(scope="module")
def trained(served):
    flow, _, data, _ = served
    run, events = train(flow, {"data_artifact": data, "epochs": 12, **SMALL})
    return run, events


def test_a_training_run_reports_each_epoch_and_keeps_the_best_checkpoint(trained):
    run, events = trained
    assert run.state == operations_pb2.RUN_STATE_SUCCEEDED, run.error
    progress = [e.progress.message for e in events if e.WhichOneof("event") == "progress"]
    assert [m for m in progress if m.startswith("epoch ")][0].startswith("epoch 1/12: train loss")
    report = json.loads(next(e.result for e in events if e.WhichOneof("event") == "result").report_json)
    history = report["history"]
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert report["best_val_loss"] == min(h["val_loss"] for h in history) == run.best_score
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"]
    assert run.best_prompt == report["flow_run"] == run.run_id and report["embeddings"] == 1200 and report["dim"] == 6
    assert report["best_checkpoint"] == f"flows/{run.run_id}/best_flow.pt"  # relative: no host path is shown


def test_a_cancelled_training_resumes_from_its_last_epoch(served):
    flow, _, data, _ = served
    run = flow.start(flow_pb2.StartRunRequest(config_json=json.dumps({"data_artifact": data, "epochs": 40, **SMALL})))
    for event in flow.watch(run.run_id):
        if event.WhichOneof("event") == "progress" and event.progress.message.startswith("epoch 3/"):
            flow.cancel(run.run_id)
    assert flow.get(run.run_id).state == operations_pb2.RUN_STATE_CANCELLED
    flow.resume(run.run_id)
    events = list(flow.watch(run.run_id))
    assert flow.get(run.run_id).state == operations_pb2.RUN_STATE_SUCCEEDED
    report = json.loads(next(e.result for e in events if e.WhichOneof("event") == "result").report_json)
    assert [h["epoch"] for h in report["history"]] == list(range(1, 41))  # every epoch once


def test_samples_lie_near_the_data_manifold(served, trained):
    """Each sample's L2 to its nearest training embedding, against the held-out embeddings' own
    and against points off the manifold."""
    flow, *_ = served
    result = flow.sample(trained[0].best_prompt, 200, settings=GuidanceSettings(0.0), seed=1, manifold_distance=True)
    train, held_out = split(known_embeddings(), FlowConfig(**SMALL))  # the split the run trained on
    off = nearest_l2(known_embeddings(200) + 3.0, train)  # the same shape, shifted off the data
    assert result.heldout_nearest_l2 == pytest.approx(float(nearest_l2(held_out, train).mean()), rel=1e-5)
    assert result.nearest_train_l2.shape == (200,) and result.heldout_nearest_l2 > 0
    assert result.nearest_train_l2.mean() < 2.0 * result.heldout_nearest_l2
    assert result.nearest_train_l2.mean() < 0.5 * float(off.mean())


def test_samples_are_reproducible_and_guidance_lowers_the_lcb(served, trained):
    flow, surrogate, _, _ = served
    checkpoint = trained[0].best_prompt
    plain = GuidanceSettings(guidance_strength=0.0)
    one = flow.sample(checkpoint, 64, settings=plain, seed=3)
    assert one.embeddings.shape == (64, 6) and one.lcb is None and one.guided_steps == 0
    assert (flow.sample(checkpoint, 64, settings=plain, seed=3).embeddings == one.embeddings).all()
    x = known_embeddings(40).numpy()
    errors = 1 / (1 + torch.exp(-torch.as_tensor(x[:, 0]))).numpy()  # lower error where x0 is small
    model_id = surrogate.fit(x, errors, minimize=True).model_id
    unguided = flow.sample(checkpoint, 128, model_id, plain, seed=4)
    guided = flow.sample(checkpoint, 128, model_id, GuidanceSettings(), seed=4)  # the seed's defaults
    assert guided.guided_steps == 48  # 50 steps, the first 4% (2) unguided
    wider = flow.sample(checkpoint, 128, model_id, GuidanceSettings(guidance_strength=0.0, alpha=2.0), seed=4)
    assert (wider.embeddings == unguided.embeddings).all() and (wider.lcb < unguided.lcb).all()  # alpha counts
    assert guided.lcb.mean() < unguided.lcb.mean() - 0.02
    assert guided.embeddings[:, 0].mean() < unguided.embeddings[:, 0].mean()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_samples": 0}, "n_samples must be in"),
        ({"method": "rk4"}, "method must be one of"),
        ({"num_steps": 0}, "num_steps must be in [1, 1000]"),
        ({"zero_init": "never"}, "zero_init must be one of"),
        ({"zero_init_fraction": 1.5}, "zero_init_fraction must lie in"),
        ({"guidance_strength": 1.0, "model_id": ""}, "guidance_strength > 0 needs model_id"),
        ({"checkpoint": "/no/such/flow.pt"}, "checkpoint '/no/such/flow.pt': no flow training run has this id"),
        ({"checkpoint": "../../runs.sqlite"}, "no flow training run has this id"),
        ({"model_id": "nope"}, "model_id 'nope' not found"),
        ({"n_samples": 4097}, "n_samples must be in [1, 4096]"),
        ({"num_steps": 1001}, "num_steps must be in [1, 1000]"),
        ({"guidance_strength": float("nan")}, "guidance_strength must be a finite number"),
        ({"guidance_strength": -1.0, "model_id": "x"}, "guidance_strength must be a finite number >= 0"),
        ({"alpha": float("inf")}, "alpha must be a finite number"),
    ],
)
def test_bad_sampling_requests_are_invalid_argument(served, trained, fields, message):
    flow, *_ = served
    request = {"checkpoint": trained[0].best_prompt, "n_samples": 4, "num_steps": 5, "method": "heun"}
    request |= {"guidance_strength": 0.0}
    request |= {"zero_init": "guidance", "alpha": 1.0, **fields}
    with pytest.raises(grpc.RpcError) as info:
        flow.stub.SampleFlow(flow_pb2.SampleFlowRequest(**request))
    found = "not found" in message or "no flow training run" in message
    expected = grpc.StatusCode.NOT_FOUND if found else grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code() == expected and message in info.value.details()


def test_guidance_needs_an_exact_gp_of_the_flows_dimension(served, trained):
    flow, surrogate, *_ = served
    request = {"checkpoint": trained[0].best_prompt, "n_samples": 2, "num_steps": 5, "guidance_strength": 1.0}
    generator = torch.Generator().manual_seed(4)
    for x, minimize, message in [
        (torch.rand(6, 3, generator=generator), True, "model_id's GP is over 3-D inputs but the flow samples 6-D"),
        (torch.rand(6, 6, generator=generator), False, "is not an exact GP of errors"),
    ]:
        fit = surrogate.fit(x.double().numpy(), torch.rand(6, generator=generator).double().numpy(), minimize=minimize)
        with pytest.raises(grpc.RpcError) as info:
            flow.stub.SampleFlow(flow_pb2.SampleFlowRequest(**request, model_id=fit.model_id))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()


def test_bad_training_requests_are_refused_and_not_stored(served, tmp_path):
    flow, _, data, store = served
    before = len(flow.list().runs)
    with ArtifactClient(flow.config) as uploads:
        with pytest.raises(grpc.RpcError) as junk:
            uploads.put("embeddings", b"junk")
        assert junk.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "content is not a valid embeddings artifact: the file is not a torch file" in junk.value.details()
    for fields, message in [
        ({}, "data_artifact must name uploaded embeddings"),
        ({"data": "/etc/passwd"}, "data is retired (a request names no path on the surrogate's host)"),
        ({"data_artifact": "0" * 32}, "data_artifact '" + "0" * 32 + "' is no artifact on this service"),
        ({"data_artifact": "../../runs.sqlite"}, "data_artifact must be an artifact id"),
        ({"data_artifact": data, "epochs": 0}, "epochs must be >= 1"),
        ({"data_artifact": data, "epochs": "5"}, "epochs must be a int"),
        ({"data_artifact": data, "colour": 1}, "unknown fields ['colour']"),
        ({"data_artifact": data, "output_dir": str(tmp_path)}, "output_dir is retired"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            flow.start(flow_pb2.StartRunRequest(config_json=json.dumps(fields)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details(), fields
    assert len(flow.list().runs) == before
