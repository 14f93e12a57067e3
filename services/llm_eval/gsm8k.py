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


# Few-shot format: one block per exemplar, in order, then the Q_end block above. The same text
# goes to every backend (each applies its own chat template to it as one user message).
EXEMPLAR_TEMPLATE = "Q: {question}\nA: {answer}\n\n"


def format_exemplars(exemplars) -> str:
    """The exemplar blocks of a few-shot prompt (empty for zero-shot); `exemplars` are (question, answer) pairs."""
    return "".join(EXEMPLAR_TEMPLATE.format(question=q, answer=a) for q, a in exemplars)


def format_prompt(question: str, instruction: str, exemplars=()) -> str:
    """The exemplar blocks, then the question and instruction in PROMPT_TEMPLATE."""
    return format_exemplars(exemplars) + PROMPT_TEMPLATE.format(question=question, instruction=instruction)


def exemplar_answer(answer_field: str) -> str:
    """A GSM8K solution as an exemplar answer: calculator annotations (<<...>>) removed and the
    `#### n` line written as 'The answer is n.'."""
    body, sep, tail = answer_field.rpartition("####")
    if not sep:
        raise ValueError("GSM8K answer has no '####' marker")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    final = f"The answer is {tail.strip()}."
    return f"{body}\n{final}" if body else final


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
