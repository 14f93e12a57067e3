"""GSM8K scoring exactly as the seed specifies.

Prompts use the Q_end format (instruction after the question); the answer is the last
number in the response, compared with the gold number at 1e-6 tolerance.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
TOLERANCE = 1e-6


# Q_end format (OPRO paper): the instruction after the question. Part of every answer's cache key.
PROMPT_TEMPLATE = "Q: {question}\n{instruction}\nA:"


def format_prompt(question: str, instruction: str) -> str:
    """The question and instruction in PROMPT_TEMPLATE."""
    return PROMPT_TEMPLATE.format(question=question, instruction=instruction)


def extract_last_number(text: str) -> str | None:
    """The last number in `text` with thousands separators removed, or None."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    value = matches[-1].replace(",", "")
    return value.rstrip(".") or None


def gold_answer(answer_field: str) -> str:
    """The number after `####` in a GSM8K answer field."""
    _, sep, tail = answer_field.rpartition("####")
    if not sep:
        raise ValueError("GSM8K answer has no '####' marker")
    return tail.strip().replace(",", "")


def is_correct(predicted: str | None, gold: str) -> bool:
    """Numerical equality within TOLERANCE; unparsable predictions are wrong."""
    if predicted is None:
        return False
    try:
        return abs(float(predicted) - float(gold)) <= TOLERANCE
    except ValueError:
        return False
