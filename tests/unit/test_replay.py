import json

import pytest

from services.llm_eval.cache import AnswerCache
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.replay import ReplayBackend, convert_grid, convert_results, load_table, main
from services.llm_eval.types import DecodingParams, EvaluationRequest, Exemplar


@pytest.fixture
def recorded(datasets_dir, tmp_path):
    path = tmp_path / "table.jsonl"
    convert_results(datasets_dir / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json", path)
    return load_table(path)


def evaluator(datasets_dir, table, path, seed=0):
    store = DatasetStore(datasets_dir)
    backend = ReplayBackend(table, store.load("gsm8k", "test"), seed)
    return LlmEvaluator(backend, backend, store, AnswerCache(path), batch_size=512)


def test_full_split_reproduces_recorded_accuracy(datasets_dir, recorded, tmp_path):
    source = json.loads((datasets_dir / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json").read_text())
    ev = evaluator(datasets_dir, recorded, tmp_path / "a.sqlite")
    for row in source["results"][:3]:
        result = ev.evaluate(EvaluationRequest(row["instruction"], split="test"))
        assert result.num_correct == row["correct"] and result.num_evaluated == 1319
        assert result.usage.llm_calls == 1319


def test_fidelities_nest_and_draws_are_seeded(datasets_dir, recorded, tmp_path):
    instruction = next(iter(recorded))[0]
    ev = evaluator(datasets_dir, recorded, tmp_path / "a.sqlite")
    low = ev.evaluate(EvaluationRequest(instruction, split="test", fidelity=40, shuffle_seed=3, include_details=True))
    high = ev.evaluate(EvaluationRequest(instruction, split="test", fidelity=80, shuffle_seed=3, include_details=True))
    assert high.usage.llm_calls == 40 and high.usage.cache_hits == 40  # fidelity extension
    assert [r.correct for r in high.results[:40]] == [r.correct for r in low.results]
    again = evaluator(datasets_dir, recorded, tmp_path / "b.sqlite")
    same = again.evaluate(EvaluationRequest(instruction, split="test", fidelity=80, shuffle_seed=3))
    assert same.num_correct == high.num_correct
    draws = set()
    for seed in range(6):
        other = evaluator(datasets_dir, recorded, tmp_path / f"s{seed}.sqlite", seed=seed)
        draws.add(other.evaluate(EvaluationRequest(instruction, split="test", fidelity=80, shuffle_seed=3)).num_correct)
    assert len(draws) > 1  # the replay seed changes which questions are right


def test_unknown_prompt_and_bad_rows_are_errors(datasets_dir, recorded, tmp_path):
    ev = evaluator(datasets_dir, recorded, tmp_path / "a.sqlite")
    with pytest.raises(ValueError, match="not in the replay table"):
        ev.evaluate(EvaluationRequest("An instruction nobody recorded.", split="test", fidelity=2))
    with pytest.raises(ValueError, match="not in the replay table"):
        ev.generate(["Write a new instruction."], DecodingParams())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "error_rate": 0.2, "n": 10}\n{"instruction": "y", "n": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_table(bad)
    bad.write_text('{"instruction": "x", "error_rate": 1.5, "n": 10}\n')
    with pytest.raises(ValueError, match="error_rate must be in"):
        load_table(bad)


def test_replay_seeds_on_a_shared_cache_do_not_share_answers(datasets_dir, recorded, tmp_path):
    """The replay seed changes which questions are right, so it is part of every answer's key."""
    instruction = next(iter(recorded))[0]
    request = EvaluationRequest(instruction, split="test", fidelity=200, shuffle_seed=3, include_details=True)
    results = [evaluator(datasets_dir, recorded, tmp_path / "shared.sqlite", seed).evaluate(request) for seed in (0, 1)]
    assert results[1].usage.cache_hits == 0 and results[1].usage.llm_calls == 200
    assert [r.correct for r in results[0].results] != [r.correct for r in results[1].results]
    again = evaluator(datasets_dir, recorded, tmp_path / "shared.sqlite", 0).evaluate(request)
    assert again.usage.cache_hits == 200 and again.num_correct == results[0].num_correct


def test_a_split_slice_shares_answers_with_its_split(datasets_dir, recorded, tmp_path):
    instruction = next(iter(recorded))[0]
    ev = evaluator(datasets_dir, recorded, tmp_path / "a.sqlite")
    whole = ev.evaluate(EvaluationRequest(instruction, split="test", include_details=True))
    second_half = ev.evaluate(EvaluationRequest(instruction, split="test[50%:]", include_details=True))
    assert second_half.num_evaluated == 1319 - 659 and second_half.usage.cache_hits == 660
    by_index = {r.question_index: r for r in whole.results}  # slice indices count from the slice's start
    assert all(by_index[659 + r.question_index].question == r.question for r in second_half.results)
    assert all(by_index[659 + r.question_index].correct == r.correct for r in second_half.results)
    first = ev.evaluate(EvaluationRequest(instruction, split="test[:50%]", fidelity=10, shuffle_seed=1))
    assert first.num_evaluated == 10 and first.usage.llm_calls == 0


def test_replay_identity_names_table_seed_and_questions(datasets_dir, recorded):
    store = DatasetStore(datasets_dir)
    test, train = store.load("gsm8k", "test"), store.load("gsm8k", "train")
    base = ReplayBackend(recorded, test, 0).identity()
    assert base == ReplayBackend(recorded, test, 0).identity()
    assert base != ReplayBackend(recorded, test, 1).identity()  # the seed picks which questions are right
    assert base != ReplayBackend(recorded, train, 0).identity()  # the questions the rows map onto
    fewer = dict(list(recorded.items())[:50])
    assert base != ReplayBackend(fewer, test, 0).identity()


@pytest.fixture
def grid(datasets_dir, tmp_path):
    """The dev grid (12 instructions x 12 exemplar sets) as a replay table, with its source rows."""
    path = tmp_path / "grid.jsonl"
    assert convert_grid(datasets_dir / "hbbops_dev", path) == 144
    source = datasets_dir / "hbbops_dev"
    instructions = json.loads((source / "instructions.json").read_text())
    sets = json.loads((source / "exemplar_sets.json").read_text())
    rows = [json.loads(line) for line in (source / "grid.jsonl").read_text().splitlines()]
    return load_table(path), instructions, sets, rows


def shots(exemplar_set):
    return tuple(Exemplar(e["question"], e["answer"]) for e in exemplar_set)


def test_grid_pairs_replay_their_recorded_rates(datasets_dir, grid, tmp_path):
    table, instructions, sets, rows = grid
    ev = evaluator(datasets_dir, table, tmp_path / "a.sqlite")
    for row in rows[:2] + rows[-1:]:
        result = ev.evaluate(
            EvaluationRequest(instructions[row["instruction_id"]], exemplars=shots(sets[row["exemplar_set_id"]]))
        )
        assert result.num_correct == round((1 - row["error_rate"]) * 1319)
    # the same instruction with another exemplar set is another prompt with another score
    a, b = rows[0], rows[1]
    assert a["instruction_id"] == b["instruction_id"] and a["exemplar_set_id"] != b["exemplar_set_id"]
    # zero-shot, or the set in another order, was never recorded
    with pytest.raises(ValueError, match="not in the replay table"):
        ev.evaluate(EvaluationRequest(instructions[0], fidelity=3))
    with pytest.raises(ValueError, match="not in the replay table"):
        ev.evaluate(EvaluationRequest(instructions[0], fidelity=3, exemplars=shots(sets[0])[::-1]))


def test_fidelity_extends_per_instruction_and_exemplar_set(datasets_dir, grid, tmp_path):
    table, instructions, sets, _ = grid
    ev = evaluator(datasets_dir, table, tmp_path / "a.sqlite")
    pair = dict(instruction=instructions[3], shuffle_seed=5)
    ev.evaluate(EvaluationRequest(**pair, fidelity=20, exemplars=shots(sets[1])))
    extended = ev.evaluate(EvaluationRequest(**pair, fidelity=50, exemplars=shots(sets[1])))
    assert (extended.usage.llm_calls, extended.usage.cache_hits) == (30, 20)
    other = ev.evaluate(EvaluationRequest(**pair, fidelity=50, exemplars=shots(sets[2])))
    assert (other.usage.llm_calls, other.usage.cache_hits) == (50, 0)  # another set, other answers
    assert extended.prompt_hash != other.prompt_hash


def test_grid_with_a_missing_pair_is_refused(datasets_dir, tmp_path):
    source = datasets_dir / "hbbops_dev"
    for name in ("instructions.json", "exemplar_sets.json"):
        (tmp_path / name).write_text((source / name).read_text())
    lines = (source / "grid.jsonl").read_text().splitlines()
    (tmp_path / "grid.jsonl").write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    missing = json.loads(lines[5])
    with pytest.raises(
        ValueError, match=rf"no row for .*\({missing['instruction_id']}, {missing['exemplar_set_id']}\)"
    ):
        convert_grid(tmp_path, tmp_path / "out.jsonl")
    assert main(["grid", str(tmp_path), str(tmp_path / "out.jsonl")]) == 2
