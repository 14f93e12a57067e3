"""Storage faults: a corrupted SQLite file, a state directory that cannot be written, two
optimizers on one store. Each is a clear one-line error and nothing stored before is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from services.common.errors import StoreError
from services.common.operations import RunStore
from services.llm_eval.cache import AnswerCache


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
