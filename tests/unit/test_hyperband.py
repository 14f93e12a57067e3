import random

import pytest

from services.optimizer.algorithms.hyperband import (
    Evaluation,
    HyperbandSchedule,
    RandomProposer,
    high_fidelity,
    incumbent,
    run_bracket,
)


def test_schedule_numbers_for_gsm8k_test():
    schedule = HyperbandSchedule(nvalid=1319, bmin=10, eta=2.0)
    assert schedule.smax == 7  # floor(log2(131.9))
    assert schedule.budget == 8 * 1319 == 10552
    assert schedule.brackets() == [7, 6, 5, 4, 3, 2, 1, 0]
    starts = {s: schedule.bracket(s)[0][0] for s in schedule.brackets()}
    assert starts == {7: 128, 6: 74, 5: 43, 4: 26, 3: 16, 2: 11, 1: 8, 0: 8}
    # b_i = floor(nvalid * eta^(i - s)): bmin-sized first stage, full fidelity (all 1319) last
    assert schedule.bracket(7) == [(128, 10), (64, 20), (32, 41), (16, 82), (8, 164), (4, 329), (2, 659), (1, 1319)]
    assert schedule.bracket(3) == [(16, 164), (8, 329), (4, 659), (2, 1319)]
    assert schedule.bracket(0) == [(8, 1319)]
    for s in schedule.brackets():
        assert schedule.bracket(s)[-1][1] == 1319


@pytest.mark.parametrize(("nvalid", "bmin", "eta"), [(7473, 10, 2.0), (1000, 10, 2.0), (1319, 10, 3.0), (200, 20, 2.0)])
def test_every_bracket_runs_bmin_to_full_fidelity(nvalid, bmin, eta):
    schedule = HyperbandSchedule(nvalid=nvalid, bmin=bmin, eta=eta)
    first = schedule.bracket(schedule.smax)
    assert bmin <= first[0][1] < eta * bmin  # the seed's bmin, up to rounding
    for s in schedule.brackets():
        stages = schedule.bracket(s)
        assert len(stages) == s + 1 and stages[-1][1] == nvalid
        assert all(b1 < b2 for (_, b1), (_, b2) in zip(stages, stages[1:], strict=False))


def test_schedule_small_and_invalid():
    schedule = HyperbandSchedule(nvalid=20)
    assert (schedule.smax, schedule.budget) == (1, 40)
    assert [schedule.bracket(s) for s in schedule.brackets()] == [[(2, 10), (1, 20)], [(2, 20)]]
    assert HyperbandSchedule(nvalid=30).bracket(1) == [(2, 15), (1, 30)]
    assert HyperbandSchedule(nvalid=80, bmin=10).smax == 3  # exact power of eta is not lost to rounding
    with pytest.raises(ValueError, match="nvalid"):
        HyperbandSchedule(nvalid=5, bmin=10)
    with pytest.raises(ValueError, match="eta"):
        HyperbandSchedule(nvalid=100, eta=1.0)
    with pytest.raises(ValueError, match="bracket s"):
        HyperbandSchedule(nvalid=100).bracket(9)


def test_successive_halving_keeps_the_best():
    schedule = HyperbandSchedule(nvalid=40, bmin=10)  # smax 2: 4 x 10 -> 2 x 20 -> 1 x 40
    true_error = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2]
    calls = []

    def evaluate(index, fidelity):
        calls.append((index, fidelity))
        return true_error[index]

    history = []
    done = run_bracket(schedule, 2, len(true_error), evaluate, RandomProposer(), history, random.Random(0))
    assert done == history
    stage0 = [i for i, b in calls if b == 10]
    assert len(stage0) == 4 and len(set(stage0)) == 4
    stage1 = [i for i, b in calls if b == 20]
    assert sorted(stage1) == sorted(sorted(stage0, key=lambda i: true_error[i])[:2])
    final = [i for i, b in calls if b == 40]
    assert final == [min(stage0, key=lambda i: true_error[i])]
    assert incumbent(history, 40).index == final[0]


def test_high_fidelity_takes_each_instructions_top_evaluation():
    history = [Evaluation(0, 10, 0.5), Evaluation(0, 40, 0.3), Evaluation(1, 30, 0.2), Evaluation(2, 10, 0.0)]
    assert high_fidelity(history, 30) == {0: Evaluation(0, 40, 0.3), 1: Evaluation(1, 30, 0.2)}


def test_incumbent_comes_from_full_fidelity_only():
    history = [Evaluation(0, 10, 0.0), Evaluation(1, 40, 0.3), Evaluation(2, 40, 0.25), Evaluation(3, 20, 0.1)]
    assert incumbent(history, 40) == Evaluation(2, 40, 0.25)  # never the 0.0 measured on 10 questions
    assert incumbent(history[:1], 40) is None
    assert incumbent([], 40) is None


def test_schedule_validation_boundaries():
    assert HyperbandSchedule(nvalid=10, bmin=10).smax == 0  # nvalid == bmin is allowed: one stage
    assert HyperbandSchedule(nvalid=100, eta=1.5).smax == 5  # floor(log(10) / log(1.5))
    with pytest.raises(ValueError, match="bmin must be positive, got 0"):
        HyperbandSchedule(nvalid=100, bmin=0)
    with pytest.raises(ValueError, match=r"nvalid \(9\) must be >= bmin \(10\)"):
        HyperbandSchedule(nvalid=9, bmin=10)


class RecordingProposer:
    """Proposes the first `count` candidates and remembers what it was shown."""

    def __init__(self):
        self.seen = []

    def propose(self, candidates, count, history, rng):
        self.seen.append((list(candidates), count, list(history)))
        return list(candidates)[:count]


def test_run_bracket_shows_history_reports_stages_and_halves_by_error():
    schedule = HyperbandSchedule(nvalid=40, bmin=10)  # bracket 2: 4 x 10 -> 2 x 20 -> 1 x 40
    earlier = [Evaluation(5, 40, 0.5)]
    history, stages, proposer = list(earlier), [], RecordingProposer()
    # at 10 questions 1 < 3 < 2 < 0; at 20 questions 3 beats 1: the final stage takes stage 1's best
    errors = {10: {0: 0.4, 1: 0.1, 2: 0.3, 3: 0.2}, 20: {1: 0.3, 3: 0.2}, 40: {3: 0.25}}
    done = run_bracket(
        schedule,
        2,
        6,
        lambda i, b: errors[b][i],
        proposer,
        history,
        random.Random(0),
        lambda stage, n, b: stages.append((stage, n, b)),
    )
    assert proposer.seen == [([0, 1, 2, 3, 4, 5], 4, earlier)]  # n_0 of the pool, with the history so far
    assert stages == [(0, 4, 10), (1, 2, 20), (2, 1, 40)]
    assert [(e.index, e.fidelity) for e in done] == [(0, 10), (1, 10), (2, 10), (3, 10), (1, 20), (3, 20), (3, 40)]
    assert history == earlier + done
    # a bracket's first stage is capped at the pool size
    three = run_bracket(schedule, 2, 3, lambda i, b: 0.5, RecordingProposer(), [], random.Random(0))
    assert [e.index for e in three if e.fidelity == 10] == [0, 1, 2]
