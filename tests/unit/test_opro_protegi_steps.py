"""OPRO and ProTeGi step logic against a scripted llm_eval whose instructions have known true
accuracies: what the meta-LLM is shown, which candidates survive, which one wins, and that
the winner is reported on the held-out split it was never selected on."""

import math
import re

import pytest

from services.common.types import Usage
from services.optimizer.algorithms.base import EvaluationSettings, MeteredLlm
from services.optimizer.algorithms.opro import OproConfig, OproOptimizer
from services.optimizer.algorithms.protegi import (
    ProtegiConfig,
    ProtegiOptimizer,
    successive_rejects,
    ucb_bandit,
)
from tests.unit.scripted import ScriptedLlmService


def run_to_end(optimizer):
    state = optimizer.initial_state()
    while state["step"] < optimizer.total_steps():
        state = optimizer.step(state)
    return state


def make(cls, config, service, **evaluation):
    events = []
    settings = EvaluationSettings(**{"split": "train", "fidelity": 200, "seed": 1, "test_fidelity": 300, **evaluation})
    optimizer = cls(config, settings, MeteredLlm(service, Usage()), lambda kind, p: events.append((kind, p)))
    return optimizer, events


# -- OPRO ------------------------------------------------------------------------------------


def opro_service():
    """The meta-LLM proposes `<INS>proposal N</INS>`; proposal N's true accuracy is N / 20."""
    counter = iter(range(1, 1000))
    accuracy = {f"proposal {n}": n / 20 for n in range(1, 20)}
    accuracy["Let's solve the problem."] = 0.1
    return ScriptedLlmService(lambda prompt, model: f"<INS>proposal {next(counter)}</INS>", accuracy)


def test_opro_shows_the_top_k_ascending_and_the_winner_is_held_out():
    service = opro_service()
    config = OproConfig(iterations=3, candidates_per_step=4, top_k=3, num_exemplars=2)
    optimizer, events = make(OproOptimizer, config, service)
    state = run_to_end(optimizer)
    assert optimizer.total_steps() == 5 and len(state["history"]) == 1 + 3 * 4
    assert all(h["n"] == 200 and h["comparable"] for h in state["history"])
    # the meta-prompt of step 3 shows the 3 best so far (proposals 6, 7, 8), lowest score first
    meta = [p for p, _ in service.generated][-4]
    shown = [int(n) for n in re.findall(r"proposal (\d+)", meta)]
    assert shown == [6, 7, 8], meta
    assert len(re.findall(r"Q: question \d+", meta)) == 2  # exemplars from the validation questions
    winner = optimizer.winner(state)
    assert winner["prompt"] == max(state["history"], key=lambda h: h["score"])["prompt"]
    assert winner["prompt"] in {"proposal 11", "proposal 12"}  # the truly best proposals
    held = state["held_out"]
    assert (held["prompt"], held["validation_score"], held["validation_questions"]) == (
        winner["prompt"],
        winner["score"],
        200,
    )
    assert (held["test_split"], held["test_questions"]) == ("test", 300)
    assert held["test_score"] == pytest.approx(service.accuracy[winner["prompt"]], abs=0.1)
    # the held-out split was used once, for the winner only, after every validation evaluation
    assert [e for e in service.evaluated if e[1] == "test"] == [(winner["prompt"], "test", 300)]
    assert service.evaluated[-1][1] == "test"
    assert optimizer.best(state) == (winner["prompt"], winner["score"])
    assert optimizer.result(state)["held_out"]["test_score"] == held["test_score"]


def test_evaluation_settings_keep_the_test_split_held_out():
    with pytest.raises(ValueError, match="evaluation.test_split 'train' is the validation split"):
        EvaluationSettings(split="train", test_split="train")
    with pytest.raises(ValueError, match="evaluation.split"):
        EvaluationSettings(split="train[oops]")
    settings = EvaluationSettings(split="test[:60%]", test_split="test[50%:]")
    with pytest.raises(ValueError, match="shares questions with evaluation.split"):
        settings.check_sizes({"train": 100, "test": 100})
    EvaluationSettings(split="test[:50%]", test_split="test[50%:]").check_sizes({"test": 1319})
    with pytest.raises(ValueError, match="evaluation.test_fidelity 700 exceeds the 660 questions"):
        EvaluationSettings(split="test[:50%]", test_split="test[50%:]", test_fidelity=700).check_sizes({"test": 1319})
    with pytest.raises(ValueError, match="has no split 'dev'"):
        EvaluationSettings(test_split="dev").check_sizes({"train": 10, "test": 10})


# -- ProTeGi bandits -------------------------------------------------------------------------


def bernoulli_arms(means: list[float]):
    """pull(arm, k): deterministic 0/1 rewards whose running mean tracks `means[arm]`."""

    def pull(arm: int, k: int) -> float:
        return float(math.floor((k + 1) * means[arm]) > math.floor(k * means[arm]))

    return pull


def test_ucb_spends_its_budget_on_the_promising_arms():
    means = [0.2, 0.9, 0.5, 0.3, 0.85, 0.1]
    kept, stats = ucb_bandit(len(means), 60, 2, bernoulli_arms(means), c=1.0)
    assert sum(stats.counts) == 60 and min(stats.counts) >= 1
    assert sorted(kept) == [1, 4]
    assert stats.counts[1] + stats.counts[4] > 60 / 2  # most pulls go to the two best arms
    assert stats.counts[1] > stats.counts[5]


def test_successive_rejects_follows_its_schedule_and_keeps_the_best():
    means = [0.2, 0.9, 0.5, 0.3, 0.8]
    pulls = []
    pull = bernoulli_arms(means)
    kept, stats = successive_rejects(5, 40, 2, lambda arm, k: pulls.append(arm) or pull(arm, k))
    # logbar(5) = 1/2 + 1/2 + 1/3 + 1/4 + 1/5; n_k = ceil(35 / (logbar * (6 - k))) = 4, 5, 7
    assert stats.counts == [4, 7, 7, 5, 7]  # rejected in order: arm 0 (mean 0.2), arm 3 (0.3), arm 2 (0.5)
    assert sorted(kept) == [1, 4] and len(pulls) == 30 <= 40


# -- ProTeGi steps ---------------------------------------------------------------------------


def protegi_service():
    """Gradients name the failure; edits and paraphrases produce instructions whose true accuracy
    is known: 'good' edits are much better than 'bad' ones and than the start."""
    counter = iter(range(1000))

    def reply(prompt: str, model: str) -> str:
        n = next(counter)
        if "reason(s) why the instruction" in prompt:
            return f"<START>gradient {n} from {model}<END>"
        if "Generate a variation" in prompt:
            return f"<START>paraphrase {n} of {prompt.split('Input: ')[1].splitlines()[0]}<END>"
        return f"<START>{'good' if n % 2 else 'bad'} edit {n} by {model}<END>"

    accuracy = {"Let's solve the problem.": 0.3}
    service = ScriptedLlmService(reply, accuracy)
    service.accuracy_of = lambda text: 0.9 if text.startswith("good") or "of good" in text else 0.15
    service.correct = lambda instruction, split, q: _draw(service, instruction, split, q)
    return service


def _draw(service, instruction, split, q):
    import random

    p = service.accuracy.get(instruction, service.accuracy_of(instruction))
    return random.Random(f"{instruction}|{split}|{q}").random() < p


def test_protegi_expands_with_its_models_selects_the_good_edits_and_reports_held_out():
    service = protegi_service()
    config = ProtegiConfig(
        iterations=1,
        beam_width=2,
        minibatch_size=16,
        num_gradients=2,
        paraphrases_per_edit=1,
        bandit_sample_size=8,
        gradient_model="critic",
        edit_model="editor",
    )
    optimizer, events = make(ProtegiOptimizer, config, service)
    state = run_to_end(optimizer)
    models = [(p.split("\n")[0][:40], m) for p, m in service.generated]
    assert {m for p, m in service.generated if "reason(s) why the instruction" in p} == {"critic"}
    assert {m for p, m in service.generated if "reason(s) why the instruction" not in p} == {"editor"}
    assert len(models) == 2 * (1 + 1 + 1)  # per gradient: critique, edit, one paraphrase
    assert all(text.startswith(("good", "paraphrase")) for text in state["beam"]), state["beam"]
    bandit = [h for h in state["history"] if not h["comparable"]]
    assert len(bandit) == 5 and sum(h["n"] for h in bandit) == 8 * 4 * 5  # 5 candidates, 4 pulls each
    fixed = [h for h in state["history"] if h["comparable"]]
    assert {h["n"] for h in fixed} == {200} and {h["prompt"] for h in fixed} == {
        "Let's solve the problem.",
        *state["beam"],
    }
    winner = optimizer.winner(state)
    assert winner["prompt"] in state["beam"] and winner["score"] > 0.7
    assert state["held_out"]["prompt"] == winner["prompt"] and state["held_out"]["test_questions"] == 300
    # bandit means never win, even when one is higher than every fixed-set score
    state["history"].append({"prompt": "lucky", "score": 1.0, "n": 8, "comparable": False})
    assert optimizer.winner(state)["prompt"] == winner["prompt"]
