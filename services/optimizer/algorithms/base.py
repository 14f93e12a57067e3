"""The `Optimizer` base class, the services it talks to, and shared prompt-handling helpers.

Contract: an optimiser is a resumable state machine. `initial_state()` returns a
JSON-serialisable dict with at least `step`, `history` (scored prompts) and the fields its
`step()` needs; `step(state)` performs one step and returns the new state with `step`
incremented. Everything random derives from (seed, step), so a step re-run after a crash
asks the same questions and the evaluation cache answers them for free.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from services.common.operations import Cancelled, Job
from services.common.types import DecodingParams, EvaluationRequest, EvaluationResult, GenerateResult, ModelRole, Usage

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_INITIAL_PROMPT = "Let's solve the problem."
MAX_PROMPT_CHARS = 1000


def load_template(name: str) -> str:
    """A prompt template from `services/optimizer/prompts/<name>.txt`."""
    return (PROMPTS_DIR / f"{name}.txt").read_text()


class LlmService(Protocol):
    """What optimisers need from llm_eval (the in-process evaluator and the gRPC client both fit)."""

    def generate(self, prompts: Sequence[str], params: DecodingParams, role: ModelRole = ...) -> GenerateResult: ...

    def evaluate(self, request: EvaluationRequest) -> EvaluationResult: ...

    def dataset_info(self, dataset: str) -> dict[str, int]: ...


class MeteredLlm:
    """Wraps an `LlmService`: adds every call's usage to `usage` and stops calls once cancelled."""

    def __init__(self, service: LlmService, usage: Usage, cancelled: Callable[[], bool] = lambda: False):
        self.service = service
        self.usage = usage
        self._cancelled = cancelled

    def _check(self):
        if self._cancelled():
            raise Cancelled()

    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[str]:
        self._check()
        result = self.service.generate(list(prompts), params, ModelRole.META)
        self.usage.add(result.usage)
        return [c.text for c in result.completions]

    def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        self._check()
        result = self.service.evaluate(request)
        self.usage.add(result.usage)
        return result

    def split_size(self, dataset: str, split: str) -> int:
        sizes = self.service.dataset_info(dataset)
        if split not in sizes:
            raise ValueError(f"evaluation.split {split!r} not in dataset {dataset!r} (has {sorted(sizes)})")
        return sizes[split]


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """Where candidates are scored. fidelity 0 means the algorithm's default."""

    dataset: str = "gsm8k"
    split: str = "train"
    fidelity: int = 0
    seed: int = 0
    max_tokens: int = 0

    def __post_init__(self):
        if self.fidelity < 0:
            raise ValueError(f"evaluation.fidelity must be >= 0, got {self.fidelity}")
        if self.max_tokens < 0:
            raise ValueError(f"evaluation.max_tokens must be >= 0, got {self.max_tokens}")

    def params(self) -> DecodingParams:
        """Greedy decoding for the task model."""
        return DecodingParams(temperature=0.0, max_tokens=self.max_tokens)


Emit = Callable[[str, dict], None]


class Optimizer(Job):
    """A resumable prompt optimiser (see the module docstring for the state contract).

    Args:
        config: the algorithm's frozen config dataclass.
        evaluation: where candidates are scored.
        llm: metered access to llm_eval.
        emit: `emit(kind, payload)` records a `progress` or `candidate` event.
    """

    name: str

    def __init__(self, config, evaluation: EvaluationSettings, llm: MeteredLlm, emit: Emit):
        self.config = config
        self.evaluation = evaluation
        self.llm = llm
        self.emit = emit

    @staticmethod
    def best(state: dict) -> tuple[str, float]:
        """The best (prompt, score) in the history."""
        if not state["history"]:
            return "", 0.0
        top = max(state["history"], key=lambda h: h["score"])
        return top["prompt"], top["score"]

    def record(self, state: dict, prompt: str, score: float, num_evaluated: int) -> None:
        """Add a scored prompt to the history and emit a candidate event."""
        state["history"].append({"step": state["step"], "prompt": prompt, "score": score, "n": num_evaluated})
        self.emit(
            "candidate", {"step": state["step"], "prompt": prompt, "score": score, "num_evaluated": num_evaluated}
        )


_TAGGED = {
    "ins": re.compile(r"<INS>(.*?)</INS>", re.S | re.I),
    "start": re.compile(r"<START>(.*?)<END>", re.S | re.I),
}


def extract_tagged(text: str, tag: str) -> list[str]:
    """Texts wrapped in <INS>..</INS> (tag 'ins') or <START>..<END> (tag 'start').

    Falls back to square brackets, then to the first non-empty line, so small models that
    ignore the tags still yield a candidate. Results are stripped and at most MAX_PROMPT_CHARS.
    """
    found = [m.strip() for m in _TAGGED[tag].findall(text)]
    if not found:
        opened = re.split(r"<INS>|<START>", text, flags=re.I)
        if len(opened) > 1:  # an opening tag without its closing one
            found = [opened[1].split("\n\n")[0].strip()]
    if not found:
        found = [m.strip() for m in re.findall(r"\[([^\[\]]{10,})\]", text)]
    if not found:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        found = lines[:1]
    cleaned = [f.strip().strip('"').strip() for f in found]
    return [c for c in cleaned if c and len(c) <= MAX_PROMPT_CHARS]


def unique_new(candidates: Sequence[str], seen: set[str]) -> list[str]:
    """Candidates not in `seen` and not repeated, in order; updates `seen`."""
    out = []
    for candidate in candidates:
        if candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
    return out
