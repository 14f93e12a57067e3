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


def test_gauge_and_best_follow_the_winner_not_screening_flukes(tmp_path):
    """A scripted ProTeGi run through RunManager: a bandit mean (8-question pulls) beats every
    fixed-set score, yet the best-score gauge, the run's best score and the held-out validation
    score are the winner's score on the fixed 200 questions."""
    import dataclasses

    from prometheus_client import REGISTRY

    from services.optimizer.algorithms.base import EvaluationSettings
    from services.optimizer.algorithms.protegi import ProtegiConfig
    from services.optimizer.server import build_optimizer, track_best
    from tests.unit.test_opro_protegi_steps import protegi_service

    service = protegi_service()
    store = RunStore(tmp_path / "runs.sqlite")
    config = ProtegiConfig(iterations=1, beam_width=2, minibatch_size=16, num_gradients=2, paraphrases_per_edit=1)
    evaluation = EvaluationSettings(fidelity=200, seed=1, test_fidelity=300)
    resolved = {"algorithm": dataclasses.asdict(config), "evaluation": dataclasses.asdict(evaluation), "meta_model": ""}
    run = store.create("protegi", "", resolved, 3)
    manager = RunManager(store, lambda r, e, u, c: build_optimizer(r, service, e, u, c), on_best=track_best)
    manager.start(run.run_id)
    manager.join(run.run_id, 60)
    record = store.get(run.run_id)
    assert record.state == RunState.SUCCEEDED, record.error
    events = store.events(run.run_id)
    screening = [e.payload["score"] for e in events if e.kind == "candidate" and not e.payload["comparable"]]
    fixed = [e.payload["score"] for e in events if e.kind == "candidate" and e.payload["comparable"]]
    gauge = REGISTRY.get_sample_value(
        "promptopt_optimizer_best_score_ratio", {"run_id": run.run_id, "algorithm": "protegi"}
    )
    assert max(screening) > gauge == record.best_score == max(fixed)
    result = [e for e in events if e.kind == "result"][0].payload
    assert result["held_out"]["validation_score"] == gauge and result["held_out"]["test_questions"] == 300


def test_plot_draws_the_best_line_from_comparable_scores_only(tmp_path, monkeypatch):
    import matplotlib.axes

    from services.cli.results import best_so_far, plot_scores

    candidates = [
        {"llm_calls": 10, "score": 0.4, "comparable": True, "num_evaluated": 100},
        {"llm_calls": 12, "score": 1.0, "comparable": False, "num_evaluated": 8},  # an 8-question fluke
        {"llm_calls": 30, "score": 0.5, "comparable": True, "num_evaluated": 100},
    ]
    assert best_so_far(candidates) == [(10, 0.4), (30, 0.5)]
    drawn, step = [], matplotlib.axes.Axes.step
    monkeypatch.setattr(
        matplotlib.axes.Axes, "step", lambda ax, x, y, *a, **k: drawn.append((x, y)) or step(ax, x, y, *a, **k)
    )
    document = {
        "run_id": "r",
        "candidates": candidates,
        "config": {"evaluation": {"split": "train"}},
        "held_out": {"test_split": "test", "test_questions": 50, "test_score": 0.45},
    }
    plot_scores(document, tmp_path / "r.png")
    assert drawn == [([10, 30], [0.4, 0.5])]
    assert (tmp_path / "r.png").stat().st_size > 1000
