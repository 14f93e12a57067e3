"""The compose stack: the cpu profile of deploy/docker-compose.yml started as local processes on
loopback (the `make demo` stack), or as real containers with PROMPTOPT_STACK=compose (`make
test-containers`), with the real CPU LLM.

Covers: reflection and health on every port, /metrics, tiny OPRO and ProTeGi runs through the
CLI, every Grafana dashboard metric exported by a running service, a killed optimizer that
resumes its run without paying for answers twice, a run that rides out a crashed llm_eval, and a
cancelled run resumed through `promptopt resume`.
"""

from __future__ import annotations

import os
import sqlite3
import time

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from promptopt.operations.v1 import operations_pb2
from promptopt.optimizer.v1 import optimizer_pb2

from services.cli import main as cli
from services.common.launcher import LocalStack
from services.encoder.client import EncoderClient
from services.llm_eval.client import LlmEvalClient
from services.llm_eval.types import EvaluationRequest
from services.optimizer.client import OptimizerClient
from tests.deploy.validate import dashboard_metrics, dashboard_queries, exported_metrics
from tests.integration import prometheus
from tests.integration.compose_stack import ComposeStack
from tests.integration.harness import metric, run_cli, scrape

EXPECTED = {
    "encoder": "promptopt.encoder.v1.EncoderService",
    "decoder": "promptopt.decoder.v1.DecoderService",
    "llm_eval": "promptopt.llm_eval.v1.LlmEvalService",
    "surrogate": "promptopt.surrogate.v1.SurrogateService",
    "optimizer": "promptopt.optimizer.v1.OptimizerService",
    "tuner": "promptopt.tuner.v1.TunerService",
}
# series that exist only on GPU, or once a tuning ran (per run; tests/integration/test_tuner.py reads them)
WHILE_WORKING = (
    "promptopt_gpu_",
    "promptopt_tuner_trials",
    "promptopt_tuner_best_objective",
    "promptopt_tuner_workers_alive",
    "promptopt_tuner_worker_heartbeat_age",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, datasets_dir):
    env = {
        "PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets_dir),
        "PROMPTOPT_LLM_EVAL_DEFAULT_MAX_TOKENS": "48",
        "PROMPTOPT_LLM_EVAL_N_CTX": "2048",
    }
    if os.environ.get("PROMPTOPT_STACK") == "compose":  # real containers (make test-containers)
        with ComposeStack(tmp_path_factory.mktemp("compose"), env, datasets_dir=datasets_dir) as s:
            yield s
        return
    with LocalStack(tmp_path_factory.mktemp("stack"), port_offset=1000, env=env) as s:
        yield s


def list_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return {s.name for r in responses for s in r.list_services_response.service}


def test_reflection_health_and_metrics(stack):
    for name, full in EXPECTED.items():
        address = stack.address(name)
        assert full in list_services(address)
        runs_operations = name in ("optimizer", "tuner", "surrogate")  # the surrogate's process: flow, neuro
        assert ("promptopt.operations.v1.OperationsService" in list_services(address)) is runs_operations
        assert "grpc.health.v1.Health" in list_services(address)
        with LlmEvalClient(address) as client:
            assert client.health() == "SERVING"
            assert client.health(full) == "SERVING"
    with LlmEvalClient(stack.address("llm_eval")) as client:
        assert client.dataset_info("gsm8k")["test"] == 1319
    text = scrape(stack.services["llm_eval"].metrics_port)
    assert metric(text, "promptopt_rpc_requests_total", 'method="GetDatasetInfo"') >= 1
    assert "promptopt_rpc_latency_seconds_bucket" in text


def test_opro_end_to_end(stack, tmp_path, capsys):
    meta = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M"  # named explicitly: the one model this stack serves
    args = ["opro", "--iterations", "1", "--candidates-per-step", "2", "--fidelity", "3", "--test-fidelity", "3"]
    doc = run_cli(stack, tmp_path, *args, "--meta-model", meta)
    assert doc["state"] == "RUN_STATE_SUCCEEDED"
    assert doc["candidates"][0]["prompt"] == "Let's solve the problem."
    assert len(doc["candidates"]) >= 2  # the initial prompt and at least one new proposal
    assert doc["best_score"] == max(c["score"] for c in doc["candidates"])
    assert doc["usage"]["llm_calls"] >= 3 + 2  # 3 answers for the seed prompt, 2 meta proposals
    assert doc["config"]["algorithm"]["num_buckets"] == 20 and doc["config"]["meta_model"] == meta
    held_out = doc["held_out"]
    assert (held_out["prompt"], held_out["validation_score"]) == (doc["best_prompt"], doc["best_score"])
    assert (held_out["validation_split"], held_out["validation_questions"]) == ("train", 3)
    assert (held_out["test_split"], held_out["test_questions"]) == ("test", 3)
    assert "held-out accuracy" in capsys.readouterr().out
    code = cli.main(["--optimizer", stack.address("optimizer"), "run", *args, "--meta-model", "gpt-9"])
    assert code == 2 and "meta_model 'gpt-9' is not served" in capsys.readouterr().out


@pytest.mark.slow
def test_protegi_end_to_end(stack, tmp_path):
    doc = run_cli(
        stack,
        tmp_path,
        "protegi",
        "--iterations",
        "1",
        "--beam-width",
        "1",
        "--minibatch-size",
        "3",
        "--num-gradients",
        "1",
        "--errors-per-gradient",
        "2",
        "--paraphrases-per-edit",
        "0",
        "--bandit-sample-size",
        "2",
        "--bandit-budget",
        "3",
        "--fidelity",
        "3",
        "--test-fidelity",
        "3",
    )
    assert doc["state"] == "RUN_STATE_SUCCEEDED"
    assert doc["candidates"][0]["step"] == 0 and {c["step"] for c in doc["candidates"]} <= {0, 1}
    # step 1 expanded the beam: 3 answers to collect errors, a gradient and an edit (the 0.5B model
    # often echoes the prompt, so a new candidate is not guaranteed), then 3 held-out answers;
    # answers the OPRO test already paid for come from the cache
    usage = doc["usage"]
    assert usage["llm_calls"] >= 2 and usage["llm_calls"] + usage["cache_hits"] >= 3 + 3 + 2 + 3
    assert doc["config"]["algorithm"]["beam_width"] == 1
    fixed = [c for c in doc["candidates"] if c["comparable"]]
    assert {c["num_evaluated"] for c in fixed} == {3} and doc["held_out"]["test_questions"] == 3
    assert doc["best_score"] == max(c["score"] for c in fixed)


@pytest.mark.slow
def test_lipo_debug_end_to_end(stack, tmp_path):
    """`promptopt run lipo --debug` on the CPU stack: an APE pool written by the real LLM, the VAE,
    Hyperband with BO proposals, one InvBO iteration decoded by LLM-guided inversion; the seed's
    results JSON and a plot."""
    doc = run_cli(
        stack,
        tmp_path,
        "lipo",
        "--debug",
        "--fidelity",
        "4",
        "--bmin",
        "2",
        "--ape-instructions",
        "4",
        "--ape-batch-size",
        "4",
        "--ape-max-tokens",
        "30",
        "--decoder-steps",
        "1",
        "--max-inversion-iters",
        "1",
        "--test-fidelity",
        "2",
    )
    assert doc["state"] == "RUN_STATE_SUCCEEDED"
    for key in ("timestamp", "vae_quality_metrics", "vae_training", "hyperband", "inference", "total_llm_calls"):
        assert doc[key] is not None, key
    config = doc["config"]
    assert (config["mode"], config["debug"], config["iterations"], config["vae_beta"]) == ("standard", True, 1, 0.003)
    assert doc["vae_quality_metrics"]["total_dims"] == 64 and doc["vae_training"]["epochs_trained"] > 0
    hyperband = doc["hyperband"]
    assert (hyperband["nvalid"], hyperband["smax"], hyperband["budget"]) == (4, 1, 8)
    assert hyperband["evaluations_by_fidelity"]["2"] == 2 and hyperband["best_instruction"]
    [iteration] = doc["inference"]["history"]
    assert 0 < iteration["decoder_cosine"] <= 1 and iteration["gap"] is not None
    assert iteration["instruction"] == doc["inference"]["best_instruction"]
    assert doc["total_llm_calls"] == doc["usage"]["llm_calls"] > 0  # APE, task answers, decoder, held-out
    assert doc["held_out"]["test_questions"] == 2 and doc["held_out"]["validation_questions"] == 4


@pytest.mark.slow
def test_dashboard_metrics_are_exported(stack):
    """Runs after the OPRO and ProTeGi tests, so the run and LLM series carry samples."""
    with EncoderClient(stack.address("encoder")) as client:
        assert client.encode(["Let's think step by step."]).shape[0] == 1
    declared, sampled = set(), set()
    for name in EXPECTED:
        found, with_values = exported_metrics(scrape(stack.services[name].metrics_port))
        declared |= found
        sampled |= with_values
    used = dashboard_metrics()
    assert used - declared == set(), "dashboard metrics no service exports"
    # Only the WHILE_WORKING series may lack samples; everything else must have values.
    assert {m for m in used if not m.startswith(WHILE_WORKING)} - sampled == set()


@pytest.mark.slow
def test_prometheus_scrapes_the_stack_and_every_dashboard_query_has_samples(stack, tmp_path):
    """A real Prometheus with deploy/prometheus/prometheus.yml (targets mapped to loopback) evaluates
    each Grafana expression ($__rate_interval as 1m) through its HTTP API while the stack works."""
    reason = prometheus.available()
    if reason:
        pytest.skip(reason)
    assert "SUCCESS" in prometheus.check_config()
    # the compose network aliases (encoder, llm-eval, ...) that the file's targets name
    addresses = {name.replace("_", "-"): f"127.0.0.1:{spec.metrics_port}" for name, spec in stack.services.items()}
    server = prometheus.LocalPrometheus(prometheus.loopback_config(addresses), tmp_path / "prometheus")
    try:
        targets = server.wait_scrapes(2)
        assert sorted(t["labels"]["component"] for t in targets) == sorted(addresses)
        # fresh work while it scrapes: a run, an encoding, an evaluation and a refused request
        request = optimizer_pb2.StartRunRequest(
            evaluation=optimizer_pb2.EvaluationSettings(fidelity=2, seed=21, test_fidelity=1),
            opro=optimizer_pb2.OproConfig(iterations=1, candidates_per_step=1),
        )
        with OptimizerClient(stack.address("optimizer")) as client:
            run_id = client.start(request).run_id
            list(client.watch(run_id))
            with pytest.raises(grpc.RpcError):
                client.get("no-such-run")
        with EncoderClient(stack.address("encoder")) as client:
            client.encode(["Answer with one number."])
        with LlmEvalClient(stack.address("llm_eval")) as client:
            client.evaluate(EvaluationRequest("Answer with one number.", split="test", fidelity=2, shuffle_seed=99))
        server.wait_scrapes(2)  # rate() sees the work: two scrapes after it
        results = {expr: server.query(expr.replace("$__rate_interval", "1m")) for expr in dashboard_queries()}
    finally:
        server.close()
    # every panel has samples but those of WHILE_WORKING series
    assert [e for e, samples in results.items() if not samples and not any(m in e for m in WHILE_WORKING)] == []
    questions = results["sum(rate(promptopt_llm_eval_questions_total[$__rate_interval]))"]
    assert float(questions[0]["value"][1]) > 0


def crash_mid_run(stack, request, until, service: str) -> tuple:
    """Start `request`, SIGKILL `service` at the first event `until(event)` accepts, restart it and
    watch the run to its end; (run, events after the crash, answers cached when it died)."""
    with OptimizerClient(stack.address("optimizer")) as client:
        run_id = client.start(request).run_id
        for event in client.watch(run_id):
            if until(event):
                break
    stack.kill(service)
    with sqlite3.connect(stack.services["llm_eval"].env["PROMPTOPT_LLM_EVAL_CACHE_PATH"]) as db:
        answered = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    stack.start(service)
    stack.wait_serving(service)
    with OptimizerClient(stack.address("optimizer")) as client:
        events = list(client.watch(run_id))
        run = client.get(run_id)
    return run, events, answered


def task_calls_and_cached(stack) -> tuple[float, int]:
    """(task-model LLM calls llm_eval's process has counted, answers in its cache)."""
    text = scrape(stack.services["llm_eval"].metrics_port)
    with LlmEvalClient(stack.address("llm_eval")) as client:
        return metric(text, "promptopt_llm_eval_llm_calls_total", 'role="task"'), client.usage().cached_answers


@pytest.mark.slow
def test_killed_optimizer_resumes_without_repaying(stack):
    request = optimizer_pb2.StartRunRequest(
        evaluation=optimizer_pb2.EvaluationSettings(fidelity=4, seed=11, test_fidelity=2),
        opro=optimizer_pb2.OproConfig(iterations=2, candidates_per_step=2),
    )
    # killed once step 1 has scored a candidate
    run, events, _ = crash_mid_run(
        stack, request, lambda e: e.WhichOneof("event") == "candidate" and e.candidate.step == 1, "optimizer"
    )
    assert run.state == operations_pb2.RUN_STATE_SUCCEEDED, run.error
    messages = [e.progress.message for e in events if e.WhichOneof("event") == "progress"]
    assert any(m.startswith("resumed at step 1/4") for m in messages)
    assert run.usage.cache_hits > 0  # the re-run step found its answers in the cache
    # Nothing paid twice: every task-model call produced a distinct cached answer.
    calls, cached = task_calls_and_cached(stack)
    assert calls == cached


@pytest.mark.slow
def test_run_rides_out_an_llm_eval_crash(stack):
    request = optimizer_pb2.StartRunRequest(
        evaluation=optimizer_pb2.EvaluationSettings(fidelity=24, seed=12, test_fidelity=2),
        opro=optimizer_pb2.OproConfig(iterations=1, candidates_per_step=1),
    )
    # killed once the first chunk of an evaluation is answered
    run, events, answered = crash_mid_run(
        stack, request, lambda e: e.WhichOneof("event") == "progress" and e.progress.questions_total, "llm_eval"
    )
    assert run.state == operations_pb2.RUN_STATE_SUCCEEDED, run.error  # the optimizer retried; nobody resumed
    chunks = [(e.progress.questions_done, e.progress.questions_total) for e in events if e.progress.questions_total]
    assert (24, 24) in chunks and (16, 24) in chunks
    # nothing paid twice: every task-model call of the restarted llm_eval made a new cached answer
    calls, cached = task_calls_and_cached(stack)
    assert calls == cached - answered > 0


@pytest.mark.slow
def test_cancelled_run_resumes_through_the_cli(stack, tmp_path, capsys):
    address = stack.address("optimizer")
    args = ["run", "opro", "--iterations", "2", "--candidates-per-step", "1", "--fidelity", "3"]
    assert cli.main(["--optimizer", address, *args, "--test-fidelity", "2", "--no-watch"]) == 0
    run_id = capsys.readouterr().out.split()[-1]
    with OptimizerClient(address) as client:
        for event in client.watch(run_id):
            if event.WhichOneof("event") == "candidate":
                client.cancel(run_id)
                break
        list(client.watch(run_id))
        assert client.get(run_id).state == operations_pb2.RUN_STATE_CANCELLED
    assert cli.main(["--optimizer", address, "--results-dir", str(tmp_path), "resume", run_id]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"resumed {run_id}" in out and "resume requested after CANCELLED" in out
    with OptimizerClient(address) as client:
        run = client.get(run_id)
    assert run.state == operations_pb2.RUN_STATE_SUCCEEDED and run.step == run.total_steps
    assert cli.main(["--optimizer", address, "resume", run_id]) == 2  # a finished run: one clear line
    assert "only FAILED or CANCELLED runs resume" in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow
def test_sigterm_drains_and_exits_cleanly(stack):
    assert stack.stop("tuner") == 0
    stack.start("tuner")
    stack.wait_serving("tuner", timeout=60)
    time.sleep(0.1)
