"""The `neuro` search (seed 002's rewriter in a loop) against a scripted llm_eval with known true
accuracies and a scripted rewriter: each step rewrites the best prompt so far (never another),
the winner is the best comparable candidate and is reported on the held-out split, and the debug
budget equals OPRO's."""

import pytest

from services.optimizer.algorithms.neuro import NeuroOptimizer, NeuroOptimizerConfig
from services.optimizer.algorithms.opro import OproConfig, OproOptimizer
from tests.unit.scripted import ScriptedLlmService
from tests.unit.test_opro_protegi_steps import make, run_to_end

START = "Let's solve the problem."


class ScriptedRewriter:
    """Rewrite k of prompt P is `P +k`: the first rewrite of any prompt gains 0.3 accuracy, the
    others lose 0.05 (so only building on the incumbent climbs)."""

    def __init__(self):
        self.asked: list[tuple[str, int, int]] = []  # (raw prompt, n, seed)
        self.checkpoints: list[str] = []

    def optimize(self, raw, max_length, n, checkpoint, temperature, seed):
        self.asked.append((raw, n, seed))
        self.checkpoints.append(checkpoint)
        return [f"{raw} +{k}" for k in range(n)], "neuro_final_model.pt"


def accuracy_of(prompt: str) -> float:
    value = 0.1
    for part in prompt.split(" +")[1:]:
        value += 0.3 if part == "0" else -0.05
    return min(max(value, 0.0), 1.0)


class Accuracies(dict):
    def get(self, key, default=None):
        return accuracy_of(key)


def test_each_step_rewrites_the_incumbent_and_the_best_wins():
    service = ScriptedLlmService(lambda prompt, model: "", Accuracies())
    rewriter = ScriptedRewriter()
    config = NeuroOptimizerConfig(iterations=3, rewrites_per_step=3)
    optimizer, events = make(NeuroOptimizer, config, service)
    optimizer.rewriter = rewriter
    state = run_to_end(optimizer)
    incumbents = [raw for raw, _, _ in rewriter.asked]
    assert incumbents == [START, f"{START} +0", f"{START} +0 +0"]  # the best so far, each step
    assert [n for _, n, _ in rewriter.asked] == [3, 3, 3] and len({s for _, _, s in rewriter.asked}) == 3
    assert len(state["history"]) == 1 + 3 * 3 and all(h["n"] == 200 for h in state["history"])
    assert state["held_out"]["prompt"] == f"{START} +0 +0 +0" and state["held_out"]["test_questions"] == 300
    assert optimizer.best(state)[0] == f"{START} +0 +0 +0"
    assert state["checkpoint"] == "neuro_final_model.pt"
    assert rewriter.checkpoints == ["", "neuro_final_model.pt", "neuro_final_model.pt"]  # pinned once known
    assert not service.generated  # no meta-LLM: the rewriter proposes


def test_repeated_and_empty_rewrites_are_not_scored_twice():
    class Repeating(ScriptedRewriter):
        def optimize(self, raw, max_length, n, checkpoint, temperature, seed):
            super().optimize(raw, max_length, n, checkpoint, temperature, seed)
            return [START, "", " ", f"{raw} +0", f"{raw} +0"], "c.pt"

    service = ScriptedLlmService(lambda prompt, model: "", Accuracies())
    optimizer, _ = make(NeuroOptimizer, NeuroOptimizerConfig(iterations=1, rewrites_per_step=5), service)
    optimizer.rewriter = Repeating()
    state = run_to_end(optimizer)
    assert [h["prompt"] for h in state["history"]] == [START, f"{START} +0"]


def test_the_debug_budget_is_opros():
    neuro = NeuroOptimizerConfig.from_fields({"debug": True})
    opro = OproConfig.from_fields({"debug": True})
    assert (neuro.iterations, neuro.rewrites_per_step) == (opro.iterations, opro.candidates_per_step) == (2, 2)
    assert NeuroOptimizerConfig.from_fields({"debug": True, "iterations": 5}).iterations == 5
    defaults = NeuroOptimizerConfig()
    assert (defaults.iterations, defaults.rewrites_per_step, defaults.max_length, defaults.temperature) == (
        10,
        8,
        200,
        0.7,
    )
    service = ScriptedLlmService(lambda prompt, model: "<INS>x</INS>", {})
    for cls, config in ((NeuroOptimizer, neuro), (OproOptimizer, opro)):
        optimizer, _ = make(cls, config, service, fidelity=0)
        assert optimizer.fidelity() == 20 and optimizer.total_steps() == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rewrites_per_step": 0}, r"neuro.rewrites_per_step must be in \[1, 16\], got 0"),
        ({"rewrites_per_step": 17}, r"neuro.rewrites_per_step must be in \[1, 16\], got 17"),
        ({"max_length": 2000}, r"neuro.max_length must be in \[1, 1024\]"),
        ({"temperature": 0.0}, r"neuro.temperature must be in \(0.0, 2.0\]"),
        ({"initial_prompts": ("",)}, "neuro.initial_prompts must be non-empty"),
    ],
)
def test_bad_configs_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        NeuroOptimizerConfig.from_fields(fields)


def test_without_the_neuro_service_the_first_rewrite_step_says_so():
    service = ScriptedLlmService(lambda prompt, model: "", Accuracies())
    optimizer, _ = make(NeuroOptimizer, NeuroOptimizerConfig(iterations=1), service)
    state = optimizer.step(optimizer.initial_state())
    with pytest.raises(ValueError, match="needs the surrogate's NeuroService"):
        optimizer.step(state)
