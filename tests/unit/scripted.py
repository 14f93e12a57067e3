"""A scripted llm_eval for unit tests of optimiser logic: meta-LLM answers come from a function of
the prompt, and each instruction has a known true accuracy, drawn per question deterministically."""

from __future__ import annotations

import random

from services.common.types import Usage
from services.llm_eval.types import Completion, EvaluationResult, GenerateResult, QuestionResult


class ScriptedLlmService:
    """`LlmService` whose meta answers are `reply(prompt, model)` and whose task model answers
    question q of `split` correctly with probability `accuracy[instruction]` (seeded by both)."""

    def __init__(self, reply, accuracy: dict[str, float], sizes=None, default_accuracy: float = 0.3):
        self.reply, self.accuracy, self.default_accuracy = reply, accuracy, default_accuracy
        self.sizes = sizes or {"train": 2000, "test": 1000}
        self.generated: list[tuple[str, str]] = []  # (prompt, model)
        self.params = []  # DecodingParams of each generated prompt
        self.evaluated: list[tuple[str, str, int]] = []  # (instruction, split, questions)

    def generate(self, prompts, params, role=None, model=""):
        self.generated += [(p, model) for p in prompts]
        self.params += [params] * len(prompts)
        completions = [Completion(self.reply(p, model), 10, 10) for p in prompts]
        return GenerateResult(completions, Usage(llm_calls=len(prompts)), model or "scripted-meta")

    def correct(self, instruction: str, split: str, question: int) -> bool:
        p = self.accuracy.get(instruction, self.default_accuracy)
        return random.Random(f"{instruction}|{split}|{question}").random() < p

    def evaluate(self, request) -> EvaluationResult:
        size = self.sizes[request.split.split("[")[0]]
        if request.question_indices:
            questions = list(request.question_indices)
        else:
            order = random.Random(request.shuffle_seed).sample(range(size), size)
            questions = order[: request.fidelity or size]
        self.evaluated.append((request.instruction, request.split, len(questions)))
        results = [
            QuestionResult(
                q, f"question {q}", "answer", "1", "2", self.correct(request.instruction, request.split, q), False
            )
            for q in questions
        ]
        correct = sum(r.correct for r in results)
        return EvaluationResult(
            correct / len(results),
            correct,
            len(results),
            Usage(llm_calls=len(results)),
            "hash",
            "scripted-task",
            results if request.include_details else [],
        )

    def dataset_info(self, dataset):
        return dict(self.sizes)
