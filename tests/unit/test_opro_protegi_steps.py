"""OPRO and ProTeGi step logic against a scripted llm_eval whose instructions have known true
accuracies: what the meta-LLM is shown, which candidates survive, which one wins, and that
the winner is reported on the held-out split it was never selected on."""

import math
import random
import re

import numpy as np
import pytest

from services.common.types import Usage
from services.llm_eval.client import MeteredLlm
from services.optimizer.algorithms.base import EvaluationSettings
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
    # a second tagged instruction in a reply is ignored: one proposal per meta-LLM call
    return ScriptedLlmService(
        lambda prompt, model: f"<INS>proposal {next(counter)}</INS> or <INS>ignored</INS>", accuracy
    )


def test_opro_shows_the_top_k_ascending_and_the_winner_is_held_out():
    service = opro_service()
    config = OproConfig(iterations=3, candidates_per_step=4, top_k=3, num_exemplars=2)
    optimizer, events = make(OproOptimizer, config, service)
    state = run_to_end(optimizer)
    assert optimizer.total_steps() == 5 and len(state["history"]) == 1 + 3 * 4
    assert all(h["n"] == 200 and h["comparable"] for h in state["history"])
    assert (state["history"][0]["prompt"], state["history"][0]["step"]) == ("Let's solve the problem.", 0)
    assert "ignored" not in {h["prompt"] for h in state["history"]}
    # proposals sample at the meta temperature, each call with its own seed
    assert {(p.temperature, p.max_tokens) for p in service.params} == {(1.0, 256)}
    assert len({p.seed for p in service.params}) == len(service.params) == 3 * 4
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


def test_opro_default_fidelity_is_261_questions_capped_at_the_split():
    for sizes, expected in (({"train": 2000, "test": 1000}, 261), ({"train": 100, "test": 1000}, 100)):
        service = ScriptedLlmService(lambda prompt, model: "<INS>x</INS>", {}, sizes=sizes)
        optimizer, _ = make(OproOptimizer, OproConfig(iterations=1), service, fidelity=0)
        state = optimizer.step(optimizer.initial_state())
        assert state["history"][0]["n"] == optimizer.fidelity() == expected


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


@pytest.mark.parametrize("seed", range(5))
def test_ucb_with_the_default_config_concentrates_pulls_under_noise(seed):
    """ProTeGi's defaults (c = 1 over question counts, 4 pulls per candidate, 8 questions per
    pull): the three best of 12 arms get well over their uniform share, the three worst less."""
    rng = np.random.default_rng(seed)
    means = np.linspace(0.15, 0.7, 12)
    draws = {}

    def pull(arm, k):
        return draws.setdefault((arm, k), rng.binomial(8, means[arm]) / 8)

    config = ProtegiConfig()
    kept, stats = ucb_bandit(12, config.budget(12), config.beam_width, pull, config.ucb_c, config.bandit_sample_size)
    assert sum(stats.counts) == 48 == config.budget(12)
    assert sum(stats.counts[-3:]) > 1.5 * 12 and sum(stats.counts[:3]) < 12
    assert 11 in kept


def test_successive_rejects_follows_its_schedule_and_keeps_the_best():
    means = [0.2, 0.9, 0.5, 0.3, 0.8]
    pulls = []
    pull = bernoulli_arms(means)
    kept, stats = successive_rejects(5, 40, 2, lambda arm, k: pulls.append(arm) or pull(arm, k))
    # logbar = 2/3 + 1/3 + 1/4 + 1/5; n_k = floor(40 / (logbar * (6 - k))) = 5, 6, 9
    # rejected in order: arm 3 (ties arm 0 at 1/5 after 5 pulls; the later arm goes), arm 0, arm 2
    assert stats.counts == [6, 9, 9, 5, 9]
    assert sorted(kept) == [1, 4] and 40 - 3 <= len(pulls) <= 40  # the budget, short by rounding only
    kept, stats = successive_rejects(3, 30, 1, bernoulli_arms([0.5, 0.5, 0.5]))
    assert kept == [0]  # ties: the later arm is rejected first


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
    assert [h["score"] for h in bandit] == sorted((h["score"] for h in bandit), reverse=True)
    good = [h["n"] for h in bandit if h["prompt"] in state["beam"]]
    assert sum(good) > 2 * 4 * 8  # UCB (c = 1, over questions) spends more than a fair share on them
    fixed = [h for h in state["history"] if h["comparable"]]
    assert {h["n"] for h in fixed} == {200} and {h["prompt"] for h in fixed} == {
        "Let's solve the problem.",
        *state["beam"],
    }
    winner = optimizer.winner(state)
    assert winner["prompt"] in state["beam"] and winner["score"] > 0.7
    assert len({h["prompt"] for h in fixed}) == len(fixed)  # each beam member scored once
    assert state["held_out"]["prompt"] == winner["prompt"] and state["held_out"]["test_questions"] == 300
    # bandit means never win, even when one is higher than every fixed-set score
    state["history"].append({"prompt": "lucky", "score": 1.0, "n": 8, "comparable": False})
    assert optimizer.winner(state)["prompt"] == winner["prompt"]


def test_protegi_successive_rejects_step_and_paired_pulls():
    service = protegi_service()
    config = ProtegiConfig(
        iterations=1,
        beam_width=2,
        minibatch_size=16,
        num_gradients=2,
        paraphrases_per_edit=1,
        bandit="successive-rejects",
    )
    optimizer, _ = make(ProtegiOptimizer, config, service)
    state = run_to_end(optimizer)
    assert all(text.startswith(("good", "paraphrase")) for text in state["beam"]), state["beam"]
    pulls = [(i, q) for i, split, q in service.evaluated if split == "train" and q == 8]
    assert 5 <= len(pulls) <= config.budget(5) == 20  # successive rejects spends at most its budget
    # paired pulls: the k-th pull of every candidate scores the same questions, later pulls new ones
    pulls_by_arm: dict[str, list[tuple[int, ...]]] = {}
    inner = service.evaluate

    def recording(request):
        pulls_by_arm.setdefault(request.instruction, []).append(request.question_indices)
        return inner(request)

    service.evaluate = recording
    arms = [f"arm {i}" for i in range(5)]
    optimizer._select(arms, random.Random(0), 2000, {"history": [], "step": 1})
    assert set(pulls_by_arm) == set(arms)
    for pulls in pulls_by_arm.values():
        assert all(len(q) == 8 for q in pulls)
        assert len({i for q in pulls for i in q}) == 8 * len(pulls)  # no question twice for one arm
        for k, questions in enumerate(pulls):
            assert all(other[k] == questions for other in pulls_by_arm.values() if len(other) > k)


def test_protegi_resumes_checkpoints_written_before_scores_were_marked():
    """Older runs stored ucb_rounds/ucb_sample_size and unmarked bandit means in the history."""
    config = ProtegiConfig.from_fields({"iterations": 1, "ucb_rounds": 3, "ucb_sample_size": 4})
    assert config.bandit_sample_size == 4 and config.bandit_budget == 0
    service = protegi_service()
    optimizer, _ = make(ProtegiOptimizer, config, service)
    old = {"step": 1, "beam": ["Let's solve the problem."], "history": [{"prompt": "fluke", "score": 1.0, "n": 8}]}
    assert optimizer.winner(old) is None  # an unmarked 8-question mean never wins
    optimizer._score_beam(old, 2000)
    assert optimizer.winner(old)["prompt"] == "Let's solve the problem." and optimizer.winner(old)["n"] == 200


@pytest.mark.parametrize(
    ("cls", "fields", "message"),
    [
        (OproConfig, {"candidates_per_step": 0}, "opro.candidates_per_step must be in [1, 256], got 0"),
        (OproConfig, {"top_k": 0}, "opro.top_k must be in [1, 1000], got 0"),
        (OproConfig, {"num_buckets": 0}, "opro.num_buckets must be in [1, 1000], got 0"),
        (OproConfig, {"num_exemplars": -1}, "opro.num_exemplars must be in [0, 64], got -1"),
        (OproConfig, {"meta_temperature": 2.1}, "opro.meta_temperature must be in"),
        (OproConfig, {"meta_max_tokens": 2**31 - 1}, "opro.meta_max_tokens must be in [1, 4096]"),
        (ProtegiConfig, {"meta_max_tokens": 0}, "protegi.meta_max_tokens must be in [1, 4096], got 0"),
        (OproConfig, {"meta_temperature": -0.1}, "opro.meta_temperature must be in"),
        (OproConfig, {"initial_prompts": (" ",)}, "opro.initial_prompts"),
        (OproConfig, {"initial_prompts": ()}, "opro.initial_prompts"),
        (ProtegiConfig, {"iterations": 0}, "protegi.iterations must be in [1, 10000], got 0"),
        (ProtegiConfig, {"minibatch_size": 0}, "protegi.minibatch_size must be in [1, 10000], got 0"),
        (ProtegiConfig, {"num_gradients": 0}, "protegi.num_gradients must be in [1, 64], got 0"),
        (ProtegiConfig, {"errors_per_gradient": 0}, "protegi.errors_per_gradient must be in [1, 64], got 0"),
        (ProtegiConfig, {"edits_per_gradient": 0}, "protegi.edits_per_gradient must be in [1, 64], got 0"),
        (ProtegiConfig, {"bandit_sample_size": 0}, "protegi.bandit_sample_size must be in [1, 10000], got 0"),
        (ProtegiConfig, {"paraphrases_per_edit": -1}, "protegi.paraphrases_per_edit must be in [0, 64], got -1"),
        (ProtegiConfig, {"bandit_budget": -1}, "protegi.bandit_budget must be in [0, 1000000], got -1"),
        (ProtegiConfig, {"ucb_c": -0.5}, "protegi.ucb_c must be in [0.0, 100.0], got -0.5"),
        (ProtegiConfig, {"initial_prompts": ("",)}, "protegi.initial_prompts"),
    ],
)
def test_config_validation_names_the_field(cls, fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(**fields)


def test_config_edges_are_accepted_and_defaults_hold():
    assert OproConfig(num_exemplars=0, meta_temperature=0.0).meta_temperature == 0.0
    assert OproConfig(meta_temperature=2.0).num_buckets == 20
    assert ProtegiConfig(paraphrases_per_edit=0, bandit_budget=0, ucb_c=0.0).ucb_c == 0.0
    defaults = ProtegiConfig()
    assert (defaults.beam_width, defaults.minibatch_size, defaults.num_gradients, defaults.errors_per_gradient) == (
        4,
        64,
        4,
        4,
    )
    assert (defaults.iterations, defaults.paraphrases_per_edit, defaults.bandit, defaults.ucb_c) == (6, 2, "ucb", 1.0)
    assert (defaults.bandit_sample_size, defaults.budget(10), defaults.budget(1)) == (8, 40, 4)
    assert ProtegiConfig(bandit_budget=3).budget(10) == 10  # at least one pull per candidate
    opro = OproConfig()
    assert (opro.iterations, opro.candidates_per_step, opro.top_k, opro.num_exemplars) == (10, 8, 20, 3)


def test_protegi_keeps_a_beam_that_is_not_full_without_pulls():
    service = protegi_service()
    optimizer, _ = make(ProtegiOptimizer, ProtegiConfig(beam_width=3), service)
    state = {"history": [], "step": 1}
    assert optimizer._select(["a", "b", "c"], random.Random(0), 2000, state) == ["a", "b", "c"]
    assert service.evaluated == [] and state["history"] == []


def test_successive_rejects_pulls_every_arm_once_on_the_smallest_budget():
    kept, stats = successive_rejects(5, 5, 2, bernoulli_arms([0.1, 0.2, 0.9, 0.8, 0.3]))
    assert stats.counts == [1, 1, 1, 1, 1] and len(kept) == 2
