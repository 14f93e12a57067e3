"""Storage faults: a corrupted SQLite file, a state directory that cannot be written, a full
disk, two optimizers on one store. Each is a clear error and nothing stored before is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import pytest
from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc
from promptopt.operations.v1 import operations_pb2
from promptopt.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc

from services.common.errors import StoreError
from services.common.operations import RunStore
from services.llm_eval.cache import AnswerCache
from services.optimizer.server import optimizer_service
from tests.conftest import replay_evaluator, start_server
from tests.contract.conftest import llm_eval_binding


def start_optimizer(store_path, **env) -> subprocess.Popen:
    variables = {
        **os.environ,
        "PROMPTOPT_OPTIMIZER_PORT": "0",
        "PROMPTOPT_OPTIMIZER_METRICS_PORT": "-1",
        "PROMPTOPT_OPTIMIZER_STORE_PATH": str(store_path),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.optimizer"],
        env=variables,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_corrupted_file_is_named_and_left_as_it_was(tmp_path):
    garbage = b"this is not a database" * 100
    for path, open_store in ((tmp_path / "runs.sqlite", RunStore), (tmp_path / "answers.sqlite", AnswerCache)):
        path.write_bytes(garbage)
        with pytest.raises(StoreError, match=f"{path} cannot be used: file is not a database"):
            open_store(path)
        assert path.read_bytes() == garbage
    optimizer = start_optimizer(tmp_path / "runs.sqlite")
    _, err = optimizer.communicate(timeout=60)
    assert optimizer.returncode == 2
    assert err.strip().splitlines() == [
        f"cannot start: run store {tmp_path / 'runs.sqlite'} cannot be used: file is not a database"
        " (nothing in it was changed)"
    ]
    env = {**os.environ, "PROMPTOPT_LLM_EVAL_PORT": "0", "PROMPTOPT_LLM_EVAL_METRICS_PORT": "-1"}
    env["PROMPTOPT_LLM_EVAL_CACHE_PATH"] = str(tmp_path / "answers.sqlite")
    llm_eval = subprocess.run(
        [sys.executable, "-m", "services.llm_eval"], env=env, capture_output=True, text=True, timeout=120
    )
    assert llm_eval.returncode == 2 and llm_eval.stderr.strip().splitlines() == [
        f"cannot start: answer cache {tmp_path / 'answers.sqlite'} cannot be used: file is not a database"
        " (nothing in it was changed)"
    ]
    assert (tmp_path / "answers.sqlite").read_bytes() == garbage


def test_a_state_directory_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    for open_store in (RunStore, AnswerCache):
        with pytest.raises(StoreError, match="state/x.sqlite cannot be used"):
            open_store(blocker / "x.sqlite")
    if os.geteuid() != 0:  # root ignores mode bits
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        with pytest.raises(StoreError, match="cannot be used"):
            RunStore(readonly / "runs.sqlite")


def test_two_optimizers_on_one_store_refuse_the_second_and_keep_the_runs(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    run_id = store.create("opro", "kept", {"x": 1}, 3).run_id
    store.append_event(run_id, "progress", {"message": "stored before"}, store.get(run_id).usage)
    first = RunStore(path, exclusive=True)
    with pytest.raises(StoreError, match=f"run store {path} is in use by another process \\(pid {os.getpid()}\\)"):
        RunStore(path, exclusive=True)
    optimizer = start_optimizer(path)  # a second optimizer process on the same store
    _, err = optimizer.communicate(timeout=60)
    assert optimizer.returncode == 2 and f"is in use by another process (pid {os.getpid()})" in err
    assert len(err.strip().splitlines()) == 1
    assert first.get(run_id).display_name == "kept"
    assert [e.payload["message"] for e in first.events(run_id, 0)] == ["stored before"]


def test_the_lock_is_released_when_its_holder_dies(tmp_path):
    path = tmp_path / "runs.sqlite"
    holder = start_optimizer(path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "runs.sqlite.lock").exists() or not (tmp_path / "runs.sqlite.lock").read_text():
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.1)
    with pytest.raises(StoreError, match=f"pid {holder.pid}"):
        RunStore(path, exclusive=True)
    holder.kill()
    holder.wait()
    RunStore(path, exclusive=True)  # a SIGKILLed optimizer leaves no stale lock behind


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (mounting needs root; skipped otherwise, saying so) and a way to fill it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mount failed: {mounted.stderr.decode().strip()}")

    def fill():  # leave no byte free
        with (disk / "filler").open("ab", buffering=0) as f:
            for size in (1 << 16, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    pass

    yield disk, fill
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_refuses_new_work_clearly_and_keeps_what_is_stored(tmp_path, small_disk):
    disk, fill = small_disk
    evaluator, instruction = replay_evaluator(tmp_path / "replay", disk / "answers.sqlite")
    store = RunStore(disk / "runs.sqlite")
    kept_run = store.create("opro", "kept", {"x": 1}, 3).run_id
    llm_server = start_server(llm_eval_binding(evaluator))
    binding, manager = optimizer_service(store, evaluator, state_dir=disk)
    optimizer_server = start_server(binding)
    llm = llm_eval_pb2_grpc.LlmEvalServiceStub(grpc.insecure_channel(f"127.0.0.1:{llm_server.port}"))
    optimizer = optimizer_pb2_grpc.OptimizerServiceStub(grpc.insecure_channel(f"127.0.0.1:{optimizer_server.port}"))
    request = llm_eval_pb2.EvaluatePromptRequest(instruction=instruction, dataset="gsm8k", split="test", fidelity=5)
    before = llm.EvaluatePrompt(request)
    try:
        fill()
        more = llm_eval_pb2.EvaluatePromptRequest(instruction=instruction, dataset="gsm8k", split="test", fidelity=40)
        with pytest.raises(grpc.RpcError) as refused:
            llm.EvaluatePrompt(more)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # not retried: it would repay the LLM
        assert refused.value.details().startswith(f"answer cache {disk / 'answers.sqlite'}: database or disk is full")
        assert "nothing stored was lost" in refused.value.details()
        start = optimizer_pb2.StartRunRequest(opro=optimizer_pb2.OproConfig(iterations=1))
        with pytest.raises(grpc.RpcError) as refused:
            optimizer.StartRun(start)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details().startswith(f"run store {disk / 'runs.sqlite'}: database or disk is full")
        # what was stored still reads, while the disk is full
        assert optimizer.GetRun(optimizer_pb2.GetRunRequest(run_id=kept_run)).run.display_name == "kept"
        assert [r.run_id for r in optimizer.ListRuns(optimizer_pb2.ListRunsRequest()).runs] == [kept_run]
        again = llm.EvaluatePrompt(request)  # answered from the cache, which lost nothing
        assert (again.accuracy, again.usage.cache_hits) == (before.accuracy, 5)
        (disk / "filler").unlink()  # space again: both stores work as before
        assert llm.EvaluatePrompt(more).num_evaluated == 40
        run_id = optimizer.StartRun(start).run.run_id
        manager.join(run_id, timeout=60)  # it ends either way (replay cannot write OPRO proposals)
        ended = optimizer.GetRun(optimizer_pb2.GetRunRequest(run_id=run_id)).run.state
        assert ended in (operations_pb2.RUN_STATE_SUCCEEDED, operations_pb2.RUN_STATE_FAILED)  # its end was stored
    finally:
        optimizer_server.server.stop(0)
        llm_server.server.stop(0)
