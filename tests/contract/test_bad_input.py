"""Bad input to every RPC gets a clear status code naming the field; nothing stored is lost."""

from __future__ import annotations

import json
import threading

import grpc
import numpy as np
import pytest
from promptopt.common.v1 import common_pb2
from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc
from promptopt.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc
from promptopt.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc
from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc
from promptopt.tuner.v1 import tuner_pb2, tuner_pb2_grpc

from services.common.artifacts import FilesystemArtifactStore
from services.common.codec import encode_tensor
from services.common.config import ServerConfig
from services.common.operations import RunStore
from services.common.server import ServiceBinding, serve
from services.decoder.core import NearestTextInverter
from services.decoder.server import DecoderServicer
from services.optimizer.algorithms.inputs import INPUT_KINDS
from services.optimizer.server import optimizer_service, parse_start
from services.surrogate.client import SurrogateClient
from services.surrogate.engine import SurrogateEngine
from services.surrogate.server import SurrogateServicer
from services.tuner.server import tuner_service
from tests.conftest import DATASETS, start_server
from tests.contract.conftest import encoder_binding, llm_eval_binding

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def expect(code, match, call, *args):
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    assert info.value.code() == code, info.value.details()
    assert match in info.value.details()


@pytest.fixture
def channel_to():
    servers, channels = [], []

    def make(b):
        server = start_server(b)
        servers.append(server)
        channels.append(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        return channels[-1]

    yield make
    for c in channels:
        c.close()
    for s in servers:
        s.server.stop(0)


def test_encoder_bad_input(channel_to, embedder):
    stub = encoder_pb2_grpc.EncoderServiceStub(channel_to(encoder_binding(embedder)))
    expect(INVALID, "texts must contain", stub.Encode, encoder_pb2.EncodeRequest())
    expect(INVALID, "texts[1] is empty", stub.Encode, encoder_pb2.EncodeRequest(texts=["a", " "]))
    expect(INVALID, "max_batch_size", stub.Encode, encoder_pb2.EncodeRequest(texts=["a"] * 65))
    assert stub.GetModelInfo(encoder_pb2.GetModelInfoRequest()).dimension == embedder.dimension


def test_llm_eval_bad_input(channel_to, evaluator):
    stub = llm_eval_pb2_grpc.LlmEvalServiceStub(channel_to(llm_eval_binding(evaluator)))
    R = llm_eval_pb2.EvaluatePromptRequest
    P = llm_eval_pb2.DecodingParams
    expect(INVALID, "prompts must not be empty", stub.Generate, llm_eval_pb2.GenerateRequest())
    expect(
        INVALID,
        "params.temperature",
        stub.Generate,
        llm_eval_pb2.GenerateRequest(prompts=["x"], params=P(temperature=3)),
    )
    expect(INVALID, "role 7", stub.Generate, llm_eval_pb2.GenerateRequest(prompts=["x"], role=7))
    expect(
        INVALID,
        "model 'gpt-9' is not served here",
        stub.Generate,
        llm_eval_pb2.GenerateRequest(prompts=["x"], model="gpt-9"),
    )
    expect(INVALID, "instruction must not be empty", stub.EvaluatePrompt, R(dataset="gsm8k", split="test"))
    expect(INVALID, "dataset must be set", stub.EvaluatePrompt, R(instruction="x", split="test"))
    expect(
        INVALID,
        "fidelity must be >= 0",
        stub.EvaluatePrompt,
        R(instruction="x", dataset="gsm8k", split="test", fidelity=-1),
    )
    expect(
        INVALID,
        "params.max_tokens",
        stub.EvaluatePrompt,
        R(instruction="x", dataset="gsm8k", split="test", params=P(max_tokens=-2)),
    )
    expect(
        INVALID,
        "exemplar_ids",
        stub.EvaluatePrompt,
        R(instruction="x", dataset="gsm8k", split="test", exemplar_ids=[10**6], exemplar_pool="train"),
    )
    expect(
        INVALID,
        "exemplar_pool must name",
        stub.EvaluatePrompt,
        R(instruction="x", dataset="gsm8k", split="test", exemplar_ids=[1]),
    )
    expect(
        INVALID,
        "non-empty question and answer",
        stub.EvaluatePrompt,
        R(instruction="x", dataset="gsm8k", split="test", exemplars=[llm_eval_pb2.Exemplar(question="q")]),
    )
    G = llm_eval_pb2.GetExemplarsRequest
    expect(INVALID, "dataset must be set", stub.GetExemplars, G(exemplar_pool="train"))
    expect(
        INVALID,
        "exemplar_pool 'train[3:3]' is empty",
        stub.GetExemplars,
        G(dataset="gsm8k", exemplar_pool="train[3:3]"),
    )
    expect(
        INVALID,
        "exemplar_ids [9999] out of range",
        stub.GetExemplars,
        G(dataset="gsm8k", exemplar_pool="train[:10]", exemplar_ids=[9999]),
    )
    shots = stub.GetExemplars(G(dataset="gsm8k", exemplar_pool="train[:10]", exemplar_ids=[2, 0])).exemplars
    assert len(shots) == 2 and shots[0].answer.endswith(".") and "The answer is" in shots[0].answer
    expect(NOT_FOUND, "dataset 'nope' not found", stub.EvaluatePrompt, R(instruction="x", dataset="nope", split="test"))
    expect(NOT_FOUND, "split 'dev'", stub.EvaluatePrompt, R(instruction="x", dataset="gsm8k", split="dev"))
    expect(INVALID, "not a valid dataset name", stub.GetDatasetInfo, llm_eval_pb2.GetDatasetInfoRequest(dataset="../x"))
    expect(INVALID, "dataset must be set", stub.GetDatasetInfo, llm_eval_pb2.GetDatasetInfoRequest())
    assert stub.GetUsage(llm_eval_pb2.GetUsageRequest()).task_model


def test_surrogate_bad_input_and_real_fit(channel_to):
    channel = channel_to(
        ServiceBinding.of(
            surrogate_pb2,
            "SurrogateService",
            surrogate_pb2_grpc.add_SurrogateServiceServicer_to_server,
            SurrogateServicer(SurrogateEngine()),
        )
    )
    stub = surrogate_pb2_grpc.SurrogateServiceStub(channel)
    x = np.random.default_rng(0).uniform(size=(12, 2))
    y = np.sin(6 * x[:, 0]) + x[:, 1]
    bad = common_pb2.Tensor(shape=[2, 2], data=b"\x00" * 4)
    expect(INVALID, "train_x.data has 4 bytes", stub.FitModel, surrogate_pb2.FitModelRequest(train_x=bad))
    expect(
        INVALID,
        "train_y has 3 values",
        stub.FitModel,
        surrogate_pb2.FitModelRequest(train_x=encode_tensor(x), train_y=[1, 2, 3]),
    )
    expect(
        INVALID,
        "at least 2 points",
        stub.FitModel,
        surrogate_pb2.FitModelRequest(train_x=encode_tensor(x[:1]), train_y=[1.0]),
    )
    expect(INVALID, "model_id must be set", stub.Predict, surrogate_pb2.PredictRequest())
    expect(
        NOT_FOUND, "model_id 'gone'", stub.Predict, surrogate_pb2.PredictRequest(model_id="gone", x=encode_tensor(x))
    )
    expect(NOT_FOUND, "model_id 'gone'", stub.DeleteModel, surrogate_pb2.DeleteModelRequest(model_id="gone"))
    expect(INVALID, "exactly one of model_id and owner", stub.DeleteModel, surrogate_pb2.DeleteModelRequest())
    expect(
        INVALID,
        "exactly one of model_id and owner",
        stub.DeleteModel,
        surrogate_pb2.DeleteModelRequest(model_id="a", owner="b"),
    )

    client = SurrogateClient(channel._channel.target().decode())
    model_id = client.fit(x, y).model_id
    mean, var = client.predict(model_id, x)
    assert np.corrcoef(mean, y)[0, 1] > 0.9 and (var > 0).all()
    expect(
        INVALID,
        "x must have shape [m, 2]",
        stub.Predict,
        surrogate_pb2.PredictRequest(model_id=model_id, x=encode_tensor(np.zeros((1, 3)))),
    )
    expect(
        INVALID,
        "acquisition 0 is not supported",
        stub.ComputeAcquisition,
        surrogate_pb2.ComputeAcquisitionRequest(model_id=model_id, x=encode_tensor(x)),
    )
    log_ei = client.log_ei(model_id, np.array([[0.26, 1.0], [0.8, 0.0]]))
    assert log_ei[0] > log_ei[1]  # near the optimum beats far from it
    stub.DeleteModel(surrogate_pb2.DeleteModelRequest(model_id=model_id))
    expect(NOT_FOUND, "not found", stub.Predict, surrogate_pb2.PredictRequest(model_id=model_id, x=encode_tensor(x)))


def test_decoder_bad_input(channel_to, embedder):
    servicer = DecoderServicer(NearestTextInverter(embedder.encode), embedder.dimension)
    stub = decoder_pb2_grpc.DecoderServiceStub(
        channel_to(
            ServiceBinding.of(
                decoder_pb2, "DecoderService", decoder_pb2_grpc.add_DecoderServiceServicer_to_server, servicer
            )
        )
    )
    target = embedder.encode(["Solve the math problem step by step."])
    expect(INVALID, "embeddings.shape must have 2", stub.Invert, decoder_pb2.InvertRequest())
    expect(
        INVALID,
        "seed_texts must not be empty",
        stub.Invert,
        decoder_pb2.InvertRequest(embeddings=encode_tensor(target)),
    )
    expect(
        INVALID,
        "expected 384",
        stub.Invert,
        decoder_pb2.InvertRequest(embeddings=encode_tensor(np.ones((1, 5))), seed_texts=["a"]),
    )
    expect(
        INVALID,
        "num_steps",
        stub.Invert,
        decoder_pb2.InvertRequest(embeddings=encode_tensor(target), seed_texts=["a"], num_steps=-1),
    )
    response = stub.Invert(
        decoder_pb2.InvertRequest(
            embeddings=encode_tensor(target),
            seed_texts=["The weather is nice.", "Work through the math problem step by step."],
        )
    )
    assert response.inversions[0].text.startswith("Work through") and response.inversions[0].cosine > 0.7


@pytest.mark.parametrize("service", ["optimizer", "tuner"])
def test_operations_bad_input(channel_to, tmp_path, service, evaluator):
    pb2, grpc_mod, name = {
        "optimizer": (optimizer_pb2, optimizer_pb2_grpc, "OptimizerService"),
        "tuner": (tuner_pb2, tuner_pb2_grpc, "TunerService"),
    }[service]
    store = RunStore(tmp_path / "runs.sqlite")
    artifacts = FilesystemArtifactStore(tmp_path / "artifacts", INPUT_KINDS)
    binding = (
        optimizer_service(store, evaluator, state_dir=tmp_path, artifacts=artifacts)[0]
        if service == "optimizer"
        else tuner_service(store, state_dir=tmp_path)[0]
    )
    stub = getattr(grpc_mod, f"{name}Stub")(channel_to(binding))
    expect(INVALID, "run_id must be set", stub.GetRun, pb2.GetRunRequest())
    expect(NOT_FOUND, "run_id 'r1' not found", stub.GetRun, pb2.GetRunRequest(run_id="r1"))
    expect(NOT_FOUND, "run_id 'r1' not found", stub.CancelRun, pb2.CancelRunRequest(run_id="r1"))
    expect(NOT_FOUND, "run_id 'r1' not found", stub.WatchRun, pb2.WatchRunRequest(run_id="r1"))
    expect(INVALID, "after_sequence", stub.WatchRun, pb2.WatchRunRequest(run_id="r1", after_sequence=-1))
    expect(INVALID, "page_token", stub.ListRuns, pb2.ListRunsRequest(page_token="abc"))
    expect(INVALID, "page_size", stub.ListRuns, pb2.ListRunsRequest(page_size=-1))
    if service == "tuner":
        tune = [
            ("", INVALID, "config_json must be set"),
            ("{not json", INVALID, "config_json is not JSON"),
            (
                '{"phases": ["vae", "decoder"]}',
                INVALID,
                "phases must be a non-empty subset of ['vae', 'scorer', 'gp', 'inference'], got unknown ['decoder']",
            ),
            ('{"phases": ["gp", "vae"]}', INVALID, "phases must be in coordinate-descent order"),
            (
                '{"space": {"vae_beta": [0.001, 0.05]}}',
                INVALID,
                "space.vae_beta [0.001, 0.05] is outside the seed's range [0.005, 0.1]",
            ),
            (
                '{"space": {"vae_epochs": [1000]}}',
                INVALID,
                "space.vae_epochs must be a non-empty subset of the seed's choices",
            ),
            ('{"space": {"beta": [0.01, 0.02]}}', INVALID, "space: unknown parameters ['beta']"),
            ('{"workers": -1}', INVALID, "workers must be an integer in [0, 16], got -1"),
            ('{"workers": 64}', INVALID, "workers must be an integer in [0, 16], got 64"),
            ('{"trials_per_phase": 0}', INVALID, "trials_per_phase must be an integer in [1, 10000], got 0"),
            ('{"seed": -1}', INVALID, "seed must be an integer in [0, 2147483647], got -1"),
            ('{"budget": {"gp_epochs": 1000000000}}', INVALID, "budget.gp_epochs must be a positive integer up to"),
            ('{"study_prefix": "../x"}', INVALID, "study_prefix must match"),
            (json.dumps({"study_prefix": "p" * 65}), INVALID, "study_prefix must match"),
            ('{"max_retry": "3"}', INVALID, "max_retry must be an integer in [0, 10], got '3'"),
            ('{"quick": "no"}', INVALID, "quick must be true or false, got 'no'"),
            ('{"split": 5}', INVALID, "split must be a string, got 5"),
            ('{"space": ["vae_beta"]}', INVALID, "space must be an object"),
            ('{"space": {"vae_beta": [true, 0.05]}}', INVALID, "space.vae_beta must be [low, high]"),
            ('{"phases": 5}', INVALID, "phases must be a list of phases"),
            ('{"colour": 1}', INVALID, "config_json: unknown fields ['colour']"),
            # no request names a place on the tuner (issue 26): storage is the operator's, output by run id
            (
                '{"storage": "postgresql+psycopg://u@10.0.0.1/x"}',
                INVALID,
                "storage is not a request field: the Optuna storage is the operator's",
            ),
            ('{"storage": "sqlite:////tmp/x.db"}', INVALID, "storage is not a request field"),
            (json.dumps({"output_dir": str(tmp_path)}), INVALID, "output_dir is not a request field"),
            (json.dumps({"grid_dir": str(tmp_path)}), INVALID, "grid_dir is not a request field: upload the grid"),
            ('{"corpus_path": "/etc/passwd"}', INVALID, "corpus_path is not a request field: upload the corpus"),
            ('{"resume": true}', INVALID, "resume is not a request field: name the run"),
            ('{"resume_run": "../optimizer"}', INVALID, "resume_run must be a tuner run id, got '../optimizer'"),
            ('{"resume_run": "bolt-none"}', INVALID, "resume_run 'bolt-none' is no tuning of this tuner"),
            ('{"resume_run": "artifacts"}', INVALID, "resume_run 'artifacts' is no tuning of this tuner"),
            (
                '{"resume_run": "bolt-1", "phases": ["gp"]}',
                INVALID,
                "resume_run continues a tuning with its saved settings: ['phases'] cannot change",
            ),
            (json.dumps({"grid_artifact": "0" * 32}), INVALID, "give all three, or none"),
            (json.dumps({"corpus_artifact": "0" * 32}), INVALID, "is no artifact on this service: upload"),
            ('{"corpus_artifact": "/etc/passwd"}', INVALID, "corpus_artifact must be an artifact id"),
        ]
        for config_json, code, message in tune:
            expect(code, message, stub.StartRun, pb2.StartRunRequest(config_json=config_json))
        assert stub.ListRuns(pb2.ListRunsRequest()).runs == []  # nothing refused was stored
        return
    expect(INVALID, "algorithm must be set", stub.StartRun, pb2.StartRunRequest())
    expect(
        INVALID,
        "opro.iterations must be in [1, 10000], got 0",
        stub.StartRun,
        pb2.StartRunRequest(opro=pb2.OproConfig(iterations=0)),
    )
    expect(INVALID, "protegi.ucb_c", stub.StartRun, pb2.StartRunRequest(protegi=pb2.ProtegiConfig(ucb_c=-1)))
    expect(
        INVALID,
        "protegi.bandit must be one of",
        stub.StartRun,
        pb2.StartRunRequest(protegi=pb2.ProtegiConfig(bandit="x")),
    )
    expect(
        INVALID,
        "protegi.gradient_model 'gpt-9' is not served by llm_eval",
        stub.StartRun,
        pb2.StartRunRequest(protegi=pb2.ProtegiConfig(gradient_model="gpt-9")),
    )
    expect(
        INVALID,
        "meta_model 'gpt-9' is not served",
        stub.StartRun,
        pb2.StartRunRequest(opro=pb2.OproConfig(), meta_model="gpt-9"),
    )
    for settings, message in [
        (pb2.EvaluationSettings(split="train", test_split="train"), "evaluation.test_split 'train' is the validation"),
        (pb2.EvaluationSettings(split="test[:60%]", test_split="test[50%:]"), "shares questions with evaluation.split"),
        (pb2.EvaluationSettings(test_split="dev"), "evaluation.test_split 'dev': dataset 'gsm8k' has no split 'dev'"),
        (pb2.EvaluationSettings(split="train[:"), "evaluation.split 'train[:' is not a split name or slice"),
        (pb2.EvaluationSettings(test_fidelity=5000), "evaluation.test_fidelity 5000 exceeds the 1319 questions"),
        (pb2.EvaluationSettings(dataset="nope"), "dataset 'nope' not found"),
        (pb2.EvaluationSettings(split="test[50%:50%]"), "evaluation.split 'test[50%:50%]' has no questions"),
    ]:
        code = NOT_FOUND if settings.dataset == "nope" else INVALID
        expect(code, message, stub.StartRun, pb2.StartRunRequest(evaluation=settings, opro=pb2.OproConfig()))
    expect(INVALID, "lipo.mode must be one of", stub.StartRun, pb2.StartRunRequest(lipo=pb2.LipoConfig(mode="fast")))
    expect(
        INVALID,
        "lipo.hyperband_evals_path is retired (a request names no path on the optimizer's host): upload the file",
        stub.StartRun,
        pb2.StartRunRequest(lipo=pb2.LipoConfig(mode="skip-hbbops", hyperband_evals_path="/etc/passwd")),
    )
    for section, message, retired in [
        ("lipo_e", pb2.LipoEConfig, ("ape_cache_path", "instructions_path", "exemplar_sets_path")),
        ("lipo", pb2.LipoConfig, ("ape_cache_path", "grid_path")),
        ("ecoflow", pb2.EcoFlowConfig, ("initial_pool_path",)),
    ]:
        for name in retired:
            request = pb2.StartRunRequest(**{section: message(**{name: "/tmp/victim/deep/created.json"})})
            expect(INVALID, f"{section}.{name} is retired", stub.StartRun, request)
    for value, message in [
        ("0" * 32, f"lipo.hyperband_evals_artifact '{'0' * 32}' is no artifact on this service"),
        ("../../etc/passwd", "lipo.hyperband_evals_artifact must be an artifact id (32 hex digits"),
    ]:
        request = pb2.StartRunRequest(lipo=pb2.LipoConfig(mode="skip-hbbops", hyperband_evals_artifact=value))
        expect(INVALID, message, stub.StartRun, request)
    expect(
        INVALID,
        "lipo.bmin must be in [1, 100000], got 0",
        stub.StartRun,
        pb2.StartRunRequest(lipo=pb2.LipoConfig(bmin=0)),
    )
    expect(
        INVALID,
        "lipo.eta must be in [1.1, 100.0]",
        stub.StartRun,
        pb2.StartRunRequest(lipo=pb2.LipoConfig(eta=1.00000001)),
    )
    long_name = pb2.StartRunRequest(display_name="n" * 300, opro=pb2.OproConfig())
    expect(INVALID, "display_name must be at most 200 characters", stub.StartRun, long_name)
    grid = DATASETS / "hbbops_dev"

    def upload(kind, name):
        return artifacts.put(kind, name, (grid / name).read_bytes()).artifact_id

    instructions, sets = upload("instructions", "instructions.json"), upload("exemplar_sets", "exemplar_sets.json")
    E = pb2.LipoEConfig
    expect(
        INVALID,
        "lipo_e.exemplar_sets_artifact must be set",
        stub.StartRun,
        pb2.StartRunRequest(lipo_e=E(mode="grid", instructions_artifact=instructions)),
    )
    grid_run = dict(mode="grid", instructions_artifact=instructions)
    expect(
        INVALID,
        "lipo_e.exemplar_sets_artifact: sets [0, 1, 2, 3, 4] have more than num_slots=4",
        stub.StartRun,
        pb2.StartRunRequest(lipo_e=E(**grid_run, exemplar_sets_artifact=sets, num_slots=4)),
    )
    expect(
        INVALID,
        f"lipo_e.exemplar_sets_artifact '{instructions}' holds instructions, not exemplar_sets",
        stub.StartRun,
        pb2.StartRunRequest(lipo_e=E(**grid_run, exemplar_sets_artifact=instructions)),
    )
    expect(
        INVALID,
        "lipo_e.qa_pool_split 'train[:6154]' shares questions with evaluation.split 'train'",
        stub.StartRun,
        pb2.StartRunRequest(lipo_e=E(), evaluation=pb2.EvaluationSettings(split="train")),
    )
    expect(
        INVALID,
        "lipo_e.qa_pool_size 9000 exceeds the 7473",
        stub.StartRun,
        pb2.StartRunRequest(
            lipo_e=E(qa_pool_size=9000), evaluation=pb2.EvaluationSettings(split="test[:50%]", test_split="test[50%:]")
        ),
    )
    expect(
        INVALID,
        "evaluation.fidelity",
        stub.StartRun,
        pb2.StartRunRequest(evaluation=pb2.EvaluationSettings(fidelity=-3), opro=pb2.OproConfig()),
    )
    recorded = (DATASETS / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json").read_bytes()  # on GSM8K test
    skip = pb2.LipoConfig(
        mode="skip-hbbops", hyperband_evals_artifact=artifacts.put("evaluations", "", recorded).artifact_id
    )
    expect(
        INVALID,
        "evaluation.test_split 'test' shares questions with lipo.evaluations_split 'test'",
        stub.StartRun,
        pb2.StartRunRequest(lipo=skip),
    )
    assert stub.ListRuns(pb2.ListRunsRequest()).runs == []  # rejected runs store nothing
    honest = pb2.EvaluationSettings(split="train[1000:]", test_split="train[:1000]")
    assert parse_start(pb2.StartRunRequest(lipo=skip, evaluation=honest), evaluator, artifacts)[0] == "lipo"


def test_loading_is_unavailable_and_token_is_checked(embedder):
    gate = threading.Event()
    running = serve(
        ServerConfig(port=0, metrics_port=-1, auth_token="s3cret"),
        [encoder_binding(embedder)],
        load=gate.wait,
        install_signal_handlers=False,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        auth = (("authorization", "Bearer s3cret"),)
        expect(grpc.StatusCode.UNAVAILABLE, "loading", stub.GetModelInfo, encoder_pb2.GetModelInfoRequest(), None, auth)
        gate.set()
        assert running.ready.wait(10)
        expect(grpc.StatusCode.UNAUTHENTICATED, "bearer token", stub.GetModelInfo, encoder_pb2.GetModelInfoRequest())
        assert stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), metadata=auth).dimension == embedder.dimension
    finally:
        running.server.stop(0)
