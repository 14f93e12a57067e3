import pytest

from services.llm_eval import gsm8k


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", "42"),
        ("First 3 apples, then 5, so 8", "8"),
        ("Total: $1,234.50 dollars", "1234.50"),
        ("It drops to -7 degrees", "-7"),
        ("#### 18\nso \\boxed{20}", "20"),
        ("no digits here", None),
        ("value .5", ".5"),
    ],
)
def test_extract_last_number(text, expected):
    assert gsm8k.extract_last_number(text) == expected


def test_is_correct_uses_tolerance():
    assert gsm8k.is_correct("18.0000001", "18")
    assert not gsm8k.is_correct("18.01", "18")
    assert not gsm8k.is_correct(None, "18")


def test_gold_answer_and_format():
    assert gsm8k.gold_answer("Janet sells 9 eggs.\n#### 1,018") == "1018"
    with pytest.raises(ValueError):
        gsm8k.gold_answer("no marker")
    assert gsm8k.format_prompt("What is 2+2?", "Think.") == "Q: What is 2+2?\nThink.\nA:"


def test_few_shot_format_puts_exemplars_before_the_q_end_block():
    prompt = gsm8k.format_prompt("What is 2+2?", "Think.", [("1+1?", "2"), ("3+3?", "6")])
    assert prompt == "Q: 1+1?\nA: 2\n\nQ: 3+3?\nA: 6\n\nQ: What is 2+2?\nThink.\nA:"
    assert gsm8k.format_prompt("What is 2+2?", "Think.", []) == "Q: What is 2+2?\nThink.\nA:"


def test_exemplar_answer_drops_calculator_notes_and_states_the_number():
    field = "She has 3+4 = <<3+4=7>>7 apples.\nSo 7*2 = <<7*2=14>>14.\n#### 14"
    assert gsm8k.exemplar_answer(field) == "She has 3+4 = 7 apples.\nSo 7*2 = 14.\nThe answer is 14."
    with pytest.raises(ValueError):
        gsm8k.exemplar_answer("no marker")
