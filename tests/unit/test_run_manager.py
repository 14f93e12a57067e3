"""RunManager over a real SQLite RunStore: the best-score hook follows every step, the final
result event carries the job's typed result fields, and every ended run releases its resources."""

import pytest

from services.common.operations import Job, RunManager, RunState, RunStore


class CountingJob(Job):
    """Three steps; optionally fails at step 2; scores 0.1, 0.5, 0.3 (the best stays 0.5)."""

    def __init__(self, fail=False):
        self.fail, self.released = fail, 0

    def total_steps(self):
        return 3

    def initial_state(self):
        return {"step": 0}

    def step(self, state):
        if self.fail and state["step"] == 2:
            raise RuntimeError("boom")
        return {"step": state["step"] + 1}

    def best(self, state):
        return "p", max([0.0, 0.1, 0.5, 0.3][: state["step"] + 1])

    def result(self, state):
        return {"held_out": {"prompt": "p", "test_score": 0.25, "test_questions": 7}}

    def release(self):
        self.released += 1


@pytest.mark.parametrize("fail", [False, True])
def test_runs_report_best_scores_results_and_release(tmp_path, fail):
    store = RunStore(tmp_path / "runs.sqlite")
    job, seen = CountingJob(fail), []
    manager = RunManager(store, lambda record, emit, usage, cancelled: job, on_best=lambda r, s: seen.append(s))
    run = store.create("counting", "", {}, 3)
    manager.start(run.run_id)
    manager.join(run.run_id, 30)
    record = store.get(run.run_id)
    assert job.released == 1
    if fail:
        assert record.state == RunState.FAILED and seen == [0.1, 0.5]
        return
    assert record.state == RunState.SUCCEEDED and seen == [0.1, 0.5, 0.5]
    result = [e for e in store.events(run.run_id) if e.kind == "result"][0].payload
    assert result["best_score"] == 0.5 and result["held_out"]["test_score"] == 0.25


def test_results_best_line_and_gauge_use_comparable_scores_only(tmp_path):
    from prometheus_client import REGISTRY

    from services.common.operations import RunRecord
    from services.common.types import Usage
    from services.optimizer.results import best_so_far, plot_scores
    from services.optimizer.server import track_best

    candidates = [
        {"llm_calls": 10, "score": 0.4, "comparable": True, "num_evaluated": 100},
        {"llm_calls": 12, "score": 1.0, "comparable": False, "num_evaluated": 8},  # an 8-question fluke
        {"llm_calls": 30, "score": 0.5, "comparable": True, "num_evaluated": 100},
    ]
    assert best_so_far(candidates) == [(10, 0.4), (30, 0.5)]
    document = {
        "run_id": "r",
        "candidates": candidates,
        "config": {"evaluation": {"split": "train"}},
        "held_out": {"test_split": "test", "test_questions": 50, "test_score": 0.45},
    }
    plot_scores(document, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    record = RunRecord("run-g", "opro", "", RunState.RUNNING, 1, 3, "", 0.0, Usage(), {}, None, "", 0, 0, 0, False)
    track_best(record, 0.5)
    labels = {"run_id": "run-g", "algorithm": "opro"}
    assert REGISTRY.get_sample_value("promptopt_optimizer_best_score_ratio", labels) == 0.5
