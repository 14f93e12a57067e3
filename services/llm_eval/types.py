"""llm_eval's contract types: decoding settings, generations, evaluations and usage reports.

Torch- and gRPC-free: the llm_eval core, its client and the optimisers all use them.
"""

from __future__ import annotations

import dataclasses
import enum

from services.common.types import Usage


class ModelRole(enum.IntEnum):
    """Which configured model answers: the task model or the meta (optimiser) model."""

    TASK = 1
    META = 2


@dataclasses.dataclass(frozen=True)
class DecodingParams:
    """Sampling settings; max_tokens 0 means the service default."""

    temperature: float = 0.0
    max_tokens: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"params.temperature must be in [0, 2], got {self.temperature}")
        if self.max_tokens < 0:
            raise ValueError(f"params.max_tokens must be >= 0, got {self.max_tokens}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"params.top_p must be in (0, 1], got {self.top_p}")


@dataclasses.dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclasses.dataclass
class GenerateResult:
    completions: list[Completion]
    usage: Usage
    model: str


MAX_EXEMPLARS = 32


@dataclasses.dataclass(frozen=True)
class Exemplar:
    """One few-shot Q/A pair shown before the question."""

    question: str
    answer: str

    def __post_init__(self):
        if not self.question.strip() or not self.answer.strip():
            raise ValueError("exemplars need a non-empty question and answer")


@dataclasses.dataclass(frozen=True)
class EvaluationRequest:
    """Score `instruction` on `dataset/split`: the first `fidelity` questions of the
    order shuffled with `shuffle_seed` (0 = all), or exactly `question_indices`.

    Few-shot: `exemplars` inline, or `exemplar_ids` (ordered indices into `exemplar_pool`, a split
    or slice of the same dataset that must not overlap `split`); at most MAX_EXEMPLARS.
    """

    instruction: str
    dataset: str = "gsm8k"
    split: str = "test"
    fidelity: int = 0
    shuffle_seed: int = 0
    question_indices: tuple[int, ...] = ()
    params: DecodingParams = DecodingParams()
    include_details: bool = False
    exemplars: tuple[Exemplar, ...] = ()
    exemplar_ids: tuple[int, ...] = ()
    exemplar_pool: str = ""

    def __post_init__(self):
        if self.exemplars and self.exemplar_ids:
            raise ValueError("give exemplars inline or exemplar_ids, not both")
        if self.exemplar_ids and not self.exemplar_pool:
            raise ValueError("exemplar_pool must name the split that exemplar_ids index")
        if any(i < 0 for i in self.exemplar_ids):
            raise ValueError("exemplar_ids must be >= 0")
        if len(self.exemplars) + len(self.exemplar_ids) > MAX_EXEMPLARS:
            raise ValueError(f"at most {MAX_EXEMPLARS} exemplars per prompt")
        if not self.instruction.strip():
            raise ValueError("instruction must not be empty")
        if not self.dataset:
            raise ValueError("dataset must be set")
        if not self.split:
            raise ValueError("split must be set")
        if self.fidelity < 0:
            raise ValueError(f"fidelity must be >= 0, got {self.fidelity}")
        if any(i < 0 for i in self.question_indices):
            raise ValueError("question_indices must be >= 0")


@dataclasses.dataclass
class QuestionResult:
    question_index: int
    question: str
    response: str
    predicted: str
    gold: str
    correct: bool
    cached: bool


@dataclasses.dataclass
class EvaluationResult:
    accuracy: float
    num_correct: int
    num_evaluated: int
    usage: Usage
    prompt_hash: str
    model: str
    results: list[QuestionResult] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class UsageReport:
    usage: Usage
    task_model: str
    meta_model: str
    cached_answers: int
    models: list[str] = dataclasses.field(default_factory=list)
