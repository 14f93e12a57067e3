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
    assert schedule.bracket(7) == [(128, 10), (64, 20), (32, 40), (16, 80), (8, 160), (4, 320), (2, 640), (1, 1280)]
    assert schedule.bracket(3) == [(16, 160), (8, 320), (4, 640), (2, 1280)]
    assert schedule.bracket(0) == [(8, 1280)]
    assert schedule.top_fidelity == 1280


def test_schedule_small_and_invalid():
    schedule = HyperbandSchedule(nvalid=20)
    assert (schedule.smax, schedule.budget) == (1, 40)
    assert [schedule.bracket(s) for s in schedule.brackets()] == [[(2, 10), (1, 20)], [(2, 20)]]
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
    assert incumbent(history).index == final[0]


def test_high_fidelity_takes_each_instructions_top_evaluation():
    history = [Evaluation(0, 10, 0.5), Evaluation(0, 40, 0.3), Evaluation(1, 30, 0.2), Evaluation(2, 10, 0.0)]
    assert high_fidelity(history, 30) == {0: 0.3, 1: 0.2}
    assert incumbent(history) == Evaluation(0, 40, 0.3)
    assert incumbent([]) is None
