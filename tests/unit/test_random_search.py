"""`random`: random search over a pool at full fidelity, the baseline the comparisons need. Against
a scripted llm_eval with known true accuracies: the best scored candidate wins (the search's
direction), candidates are drawn without replacement and seeded, a grid run scores instruction x
exemplar-set pairs with their exemplars, and the server reads it from the registry."""

import pytest
from promptopt.optimizer.v1 import optimizer_pb2

from services.optimizer.algorithms import registry
from services.optimizer.algorithms.random_search import RandomSearchConfig, RandomSearchOptimizer, load_grid
from services.optimizer.server import parse_start
from tests.unit.scripted import ScriptedLlmService
from tests.unit.test_opro_protegi_steps import make, run_to_end

POOL = [f"instruction {k}" for k in range(8)]
ACCURACY = {p: 0.05 + 0.1 * k for k, p in enumerate(POOL)}  # instruction 7 is the best


def test_the_best_scored_candidate_wins_and_is_reported_held_out():
    service = ScriptedLlmService(lambda prompt, model: "", ACCURACY)
    optimizer, events = make(
        RandomSearchOptimizer, RandomSearchConfig(num_candidates=8, instructions=tuple(POOL)), service
    )
    state = run_to_end(optimizer)
    scores = {h["prompt"]: h["score"] for h in state["history"]}
    assert sorted(scores) == sorted(POOL) and all(h["n"] == 200 for h in state["history"])
    assert state["held_out"]["prompt"] == max(scores, key=scores.get) == "instruction 7"
    assert state["held_out"]["test_questions"] == 300
    assert [n for instruction, split, n in service.evaluated if split == "train"] == [200] * 8


def test_candidates_are_drawn_without_replacement_and_seeded():
    service = ScriptedLlmService(lambda prompt, model: "", ACCURACY)

    def drawn(seed, n):
        optimizer, _ = make(
            RandomSearchOptimizer, RandomSearchConfig(num_candidates=n, instructions=tuple(POOL)), service, seed=seed
        )
        state = optimizer.step(optimizer.initial_state())
        return [c[0] for c in state["candidates"]]

    assert drawn(1, 5) == drawn(1, 5) and drawn(1, 5) != drawn(2, 5)
    assert len(set(drawn(1, 5))) == 5
    assert sorted(drawn(3, 50)) == sorted(POOL)  # more than the pool: each once, in as many steps
    optimizer, _ = make(RandomSearchOptimizer, RandomSearchConfig(num_candidates=50, instructions=tuple(POOL)), service)
    assert optimizer.total_steps() == 1 + len(POOL) + 1


def test_defaults_and_debug_values():
    assert RandomSearchConfig().num_candidates == 20
    assert RandomSearchConfig.from_fields({"debug": True}).num_candidates == 4
    optimizer, _ = make(RandomSearchOptimizer, RandomSearchConfig.from_fields({"debug": True}), None, fidelity=0)
    assert optimizer.nvalid() == 20 and optimizer.total_steps() == 1 + 4 + 1


def test_a_grid_run_scores_pairs_with_their_exemplars():
    instructions, sets = load_grid("hbbops_dev")
    service = ScriptedLlmService(lambda prompt, model: "", {})
    optimizer, _ = make(RandomSearchOptimizer, RandomSearchConfig(num_candidates=3, grid="hbbops_dev"), service)
    state = run_to_end(optimizer)
    assert len(state["candidates"]) == 3 and all(c[0] in instructions for c in state["candidates"])
    top = optimizer.winner(state)
    chosen = next(c for c in state["candidates"] if c[0] == top["prompt"])
    assert [e.question for e in top["exemplars"]] == [e["question"] for e in sets[chosen[1]]]
    assert len(state["held_out"]["exemplar_ids"]) == len(sets[chosen[1]])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_candidates": 0}, r"random.num_candidates must be in \[1, 10000\], got 0"),
        ({"num_candidates": 2**31 - 1}, r"random.num_candidates must be in \[1, 10000\]"),
        ({"grid": "../etc"}, "random.grid '../etc': no such grid"),
        ({"grid": "hbbops_dev", "instructions": ["x"]}, "exclude each other"),
        ({"instructions": [" "]}, "random.instructions must be non-empty strings"),
    ],
)
def test_bad_settings_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        RandomSearchConfig.from_fields(fields)


def test_the_server_starts_it_from_the_registry():
    assert registry.spec("random").optimizer is RandomSearchOptimizer and registry.spec("random").requires == ()
    request = optimizer_pb2.StartRunRequest(random=optimizer_pb2.RandomSearchConfig(num_candidates=3))
    request.random.instructions.extend(POOL[:4])
    algorithm, _, resolved, steps = parse_start(request)
    assert algorithm == "random" and steps == 1 + 3 + 1
    assert resolved["algorithm"]["instructions"] == POOL[:4]
