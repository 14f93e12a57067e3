"""The trial worker loop on a real SQLite Optuna storage with a scripted trial function: budget,
errors, out-of-memory retries with backoff, preemption re-enqueued through Optuna's retry
callback, and a result for a trial already failed as stale."""

import json
import time

import optuna
import pytest
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from services.tuner import study as study_module
from services.tuner.hyperspace import BASELINE
from services.tuner.settings import TuningSettings
from services.tuner.study import Preempted, Worker, counts, finished, open_study

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture
def phase(tmp_path):
    settings = TuningSettings.from_json(json.dumps({"trials_per_phase": 3, "phases": ["scorer"]}), "t", tmp_path)
    return open_study(settings, "scorer", dict(BASELINE)), tmp_path / "t"


def worker(phase, run_trial) -> Worker:
    study, out = phase
    return Worker(optuna.load_study(study_name=study.study_name, storage=study._storage), run_trial, out, "w1")


def test_the_loop_spends_the_budget_and_records_each_trial(phase):
    values = iter([0.2, 0.9, 0.5])
    outcomes = worker(phase, lambda p, config, seed: {"ndcg_at_8": next(values), "mrr": 0.5}).run()
    assert [o.state for o in outcomes] == ["COMPLETE"] * 3
    study, out = phase
    assert study.best_value == 0.9 and study.trials[0].user_attrs["baseline"] is True
    metrics = json.loads((out / "trials" / "scorer_IMPORTANT_1" / "metrics.json").read_text())  # tier 2 from trial 1
    assert metrics["metrics"]["ndcg_at_8"] == 0.9 and finished(counts(study), 3)


def test_errors_count_towards_the_budget_and_are_not_retried(phase):
    def broken(p, config, seed):
        raise RuntimeError("surrogate said no")

    outcomes = worker(phase, broken).run()
    study, _ = phase
    c = counts(study)
    assert [o.state for o in outcomes] == ["FAIL"] * 3 and c["error"] == 3 and c["stale"] == c["waiting"] == 0
    assert study.trials[0].user_attrs["error"] == "RuntimeError: surrogate said no"


def test_out_of_memory_is_retried_in_place_with_exponential_backoff(phase, monkeypatch):
    delays, calls = [], []
    monkeypatch.setattr(study_module.time, "sleep", delays.append)

    def flaky(p, config, seed):
        calls.append(seed)
        if len(calls) <= 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"ndcg_at_8": 0.7}

    outcomes = worker(phase, flaky).run(max_trials=1)
    assert [o.state for o in outcomes] == ["COMPLETE"] and delays == [2.0, 4.0] and len(set(calls)) == 1
    delays.clear()

    def always(p, config, seed):
        raise RuntimeError("CUDA out of memory")

    outcomes = worker(phase, always).run(max_trials=1)  # three retries, then it fails as an error
    assert [o.state for o in outcomes] == ["FAIL"] and delays == [2.0, 4.0, 8.0]


def test_a_preempted_trial_is_re_enqueued_with_its_params_and_the_worker_stops(phase):
    seeds = []

    def stopped(p, config, seed):
        seeds.append(seed)
        raise Preempted("signal SIGTERM")

    w = worker(phase, stopped)
    outcomes = w.run()
    study, _ = phase
    assert [o.state for o in outcomes] == ["FAIL"]
    first, retry = study.trials
    assert first.user_attrs["preempted"] is True and retry.state == TrialState.WAITING
    assert RetryFailedTrialCallback.retried_trial_number(retry) == first.number
    assert retry.system_attrs["fixed_params"] == first.params
    c = counts(study)
    assert (c["preempted"], c["stale"], c["error"], c["waiting"]) == (1, 0, 0, 1) and not finished(c, 3)
    # the retry runs next, with its inherited "preempted" cleared
    outcomes = worker(phase, lambda p, config, seed: seeds.append(seed) or {"ndcg_at_8": 0.4}).run(max_trials=1)
    assert outcomes[0].number == retry.number and outcomes[0].state == "COMPLETE"
    assert study.trials[retry.number].user_attrs["preempted"] is False
    assert seeds[0] == seeds[1]  # the retry reruns its trial, seed included


def test_a_retry_does_not_inherit_its_parents_error(phase):
    """A trial failed with an error and then found stale (its worker died after recording it):
    its retry copies the attribute, and must not count as an error once it runs."""
    study, _ = phase
    trial = study.ask()
    trial.set_user_attr("error", "RuntimeError: boom")
    study.tell(trial, state=TrialState.FAIL)
    RetryFailedTrialCallback(max_retry=3)(study, study.trials[trial.number])
    assert counts(study)["waiting"] == 1 and study.get_trials()[-1].user_attrs["error"]
    worker(phase, lambda p, config, seed: {"ndcg_at_8": 0.4}).run(max_trials=1)
    c = counts(study)
    assert (c["error"], c["complete"]) == (1, 1) and study.trials[-1].user_attrs["error"] is None


def test_a_result_for_a_trial_already_failed_as_stale_does_not_crash_the_worker(phase):
    study, _ = phase

    def outlived(p, config, seed):
        running = study.get_trials(states=(TrialState.RUNNING,))[0]
        study._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)  # as fail_stale_trials does
        return {"ndcg_at_8": 0.8}

    outcomes = worker(phase, outlived).run(max_trials=2)
    assert len(outcomes) == 2 and all(o.state == "FAIL" for o in outcomes)


def test_heartbeat_ages_are_per_worker_running_a_trial_on_the_databases_clock(phase):
    study, _ = phase
    beating = [study.ask(), study.ask()]
    for trial, worker_id in zip(beating, ("host-a:1", "host-b:2"), strict=True):
        trial.set_user_attr("worker", worker_id)
        study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.2)  # SQLite's clock counts whole seconds
    study._storage.record_heartbeat(beating[1]._trial_id)
    study.tell(study.ask(), 0.5)  # a finished trial has no live worker
    storage = study_module.storage_for(TuningSettings.from_dict(study.user_attrs["settings"]))
    ages = study_module.heartbeat_ages(storage, study)
    assert set(ages) == {"host-a:1", "host-b:2"}
    assert 1.0 <= ages["host-a:1"] <= 4.0 and 0.0 <= ages["host-b:2"] < ages["host-a:1"]
