"""The `Optimizer` base class, the services it talks to, and shared prompt-handling helpers.

Contract: an optimiser is a resumable state machine. `initial_state()` returns a
JSON-serialisable dict with at least `step`, `history` (scored prompts) and the fields its
`search_step()` needs; `search_step(state)` performs one search step in place. Everything
random derives from (seed, step), so a step re-run after a crash asks the same questions and
the evaluation cache answers them for free.

Honest scores: an optimiser selects on the validation split (`EvaluationSettings.split`) and
its `winner()` compares only candidates scored on the same validation questions
("comparable" ones). After the search, one last step scores the winner on the held-out
split (`test_split`, default GSM8K test), which no search step ever saw.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from services.common.operations import Job
from services.common.settings import Setting
from services.common.splits import SplitSpec
from services.llm_eval.client import MeteredLlm, split_size
from services.llm_eval.types import (
    DecodingParams,
    EvaluationRequest,
)

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_INITIAL_PROMPT = "Let's solve the problem."
MAX_PROMPT_CHARS = 1000
MAX_META_TOKENS = 4096  # tokens one meta-LLM answer may ask for (a client sets it)
# 3.5% of the GSM8K training set, the OPRO paper's evaluation subset: the default number of
# validation questions every comparable candidate is scored on (OPRO, ProTeGi).
DEFAULT_FIDELITY = 261
# Validation questions of a debug run when the evaluation sets no fidelity.
DEBUG_FIDELITY = 20

# Settings several optimisers declare (each with its own help where it differs).
DEBUG = Setting(False, "small run: the debug sizes for unset fields")
INITIAL_PROMPTS = Setting((DEFAULT_INITIAL_PROMPT,), "starting instruction (repeatable)")


def check_prompts(section: str, prompts: Sequence[str], field: str = "initial_prompts", allow_empty=False) -> None:
    """ValueError naming `section.field` unless `prompts` are non-empty strings (and some are given)."""
    if (not prompts and not allow_empty) or any(not p.strip() for p in prompts):
        raise ValueError(f"{section}.{field} must be non-empty strings")


def load_template(name: str) -> str:
    """A prompt template from `services/optimizer/prompts/<name>.txt`."""
    return (PROMPTS_DIR / f"{name}.txt").read_text()


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """Where candidates are scored: selection on `split` (validation), the winner reported on
    `test_split` (held out). fidelity 0 means the algorithm's default, test_fidelity 0 the whole
    test split. Splits may be slices (`test[:50%]`); the two must not share a question."""

    dataset: str = "gsm8k"
    split: str = "train"
    fidelity: int = 0
    seed: int = 0
    max_tokens: int = 0
    test_split: str = "test"
    test_fidelity: int = 0

    def __post_init__(self):
        if self.fidelity < 0:
            raise ValueError(f"evaluation.fidelity must be >= 0, got {self.fidelity}")
        if self.test_fidelity < 0:
            raise ValueError(f"evaluation.test_fidelity must be >= 0, got {self.test_fidelity}")
        if self.max_tokens < 0:
            raise ValueError(f"evaluation.max_tokens must be >= 0, got {self.max_tokens}")
        if not self.dataset:
            raise ValueError("evaluation.dataset must be set")
        validation = SplitSpec.parse(self.split, "evaluation.split")
        test = SplitSpec.parse(self.test_split, "evaluation.test_split")
        if validation.base == test.base and not (validation.start or validation.stop or test.start or test.stop):
            raise ValueError(f"evaluation.test_split {self.test_split!r} is the validation split: it must be held out")

    def check_sizes(self, sizes: dict[str, int], seen: Sequence[tuple[str, str]] = ()) -> None:
        """Given the dataset's split sizes: both splits exist and are not empty, fidelities fit,
        and no question is both a test question and a validation question or in another split
        the search `seen` ((field, split) pairs, e.g. where loaded evaluations were recorded)."""
        validation = split_size(sizes, self.dataset, self.split, "evaluation.split")
        test = split_size(sizes, self.dataset, self.test_split, "evaluation.test_split")
        for field, split, size in (
            ("evaluation.split", self.split, validation),
            ("evaluation.test_split", self.test_split, test),
        ):
            if size == 0:
                raise ValueError(f"{field} {split!r} has no questions")
        if self.fidelity > validation:
            raise ValueError(
                f"evaluation.fidelity {self.fidelity} exceeds the {validation} questions of {self.split!r}"
            )
        if self.test_fidelity > test:
            raise ValueError(
                f"evaluation.test_fidelity {self.test_fidelity} exceeds the {test} questions of {self.test_split!r}"
            )
        test_spec = SplitSpec.parse(self.test_split)
        for field, split in (("evaluation.split", self.split), *seen):
            spec = SplitSpec.parse(split, field)
            if spec.base == test_spec.base and spec.overlaps(test_spec, sizes[spec.base]):
                raise ValueError(
                    f"evaluation.test_split {self.test_split!r} shares questions with {field} {split!r}: "
                    "hold out questions the search never sees"
                )

    def params(self) -> DecodingParams:
        """Greedy decoding for the task model."""
        return DecodingParams(temperature=0.0, max_tokens=self.max_tokens)

    def request(self, instruction: str, fidelity: int = 0, held_out: bool = False, **kwargs) -> EvaluationRequest:
        """Score `instruction` on the first `fidelity` questions of the run's shuffled order of the
        validation split (or of the test split when `held_out`)."""
        return EvaluationRequest(
            instruction=instruction,
            dataset=self.dataset,
            split=self.test_split if held_out else self.split,
            fidelity=fidelity,
            shuffle_seed=self.seed,
            params=self.params(),
            **kwargs,
        )


Emit = Callable[[str, dict], None]


@dataclasses.dataclass(frozen=True)
class ModelServices:
    """The model services an optimiser may require (gRPC clients or in-process equivalents); the
    server hands each optimiser only those its registration names, the others are None."""

    encoder: object = None  # .encode(texts) -> [n, d]
    decoder: object = None  # .invert(embeddings, seed_texts, num_steps, beam_width) -> ([(text, cosine)], Usage)
    surrogate: object = None  # the surrogate's SurrogateApi (VAE, GP, acquisition, inversion)
    flow: object = None  # EcoFlow's .sample(checkpoint, n, model_id, settings, seed) (the surrogate's FlowService)
    neuro: object = None  # Neuro-Latent's .optimize(raw, max_length, n, checkpoint, temperature, seed) (NeuroService)

    def only(self, names: Sequence[str]) -> ModelServices:
        """These services with only `names` kept (the rest None)."""
        return ModelServices(**{name: getattr(self, name) if name in names else None for name in MODEL_FIELDS})


MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelServices))


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What the server gives a run's optimiser besides llm_eval: the model services it requires,
    the optimizer's state directory, the run id (owner of the models it makes) and the
    ArtifactStore of the inputs users uploaded."""

    models: ModelServices = ModelServices()
    state_dir: Path = Path("state/optimizer")
    owner: str = ""
    artifacts: object = None  # ArtifactStore


class Optimizer(Job):
    """A resumable prompt optimiser (see the module docstring for the state contract).

    Subclasses implement `search_steps`, `initial_state`, `search_step` and `winner`; the base
    adds the final held-out step and derives `best` from `winner`.

    Args:
        config: the algorithm's frozen config dataclass.
        evaluation: where candidates are scored.
        llm: metered access to llm_eval.
        emit: `emit(kind, payload)` records a `progress` or `candidate` event.
    """

    name: str  # set by `registry.register`

    def __init__(self, config, evaluation: EvaluationSettings, llm: MeteredLlm, emit: Emit):
        self.config = config
        self.evaluation = evaluation
        self.llm = llm
        self.emit = emit
        self._split_size: int | None = None

    @classmethod
    def create(cls, config, evaluation: EvaluationSettings, llm: MeteredLlm, emit: Emit, context: RunContext):
        """The optimiser of a run (subclasses that need model services take them from `context`)."""
        return cls(config, evaluation, llm, emit)

    def search_steps(self) -> int:
        """Steps of the search, before the held-out step (the settings say how many)."""
        return self.config.search_steps()

    def validation_questions(self, cap: int | None = None) -> int:
        """Questions every comparable candidate is scored on: `evaluation.fidelity`, else 20 in a
        debug run, else the whole validation split (at most `cap`, when given)."""
        if self.evaluation.fidelity:
            return self.evaluation.fidelity
        if self.config.debug:
            return DEBUG_FIDELITY
        if self._split_size is None:
            self._split_size = self.llm.split_size(self.evaluation.dataset, self.evaluation.split)
        return self._split_size if cap is None else min(cap, self._split_size)

    @abc.abstractmethod
    def search_step(self, state: dict) -> None:
        """One search step, updating `state` in place (the base advances `step`)."""

    @abc.abstractmethod
    def winner(self, state: dict) -> dict | None:
        """The selected candidate, `{prompt, score, n}` (few-shot winners add `exemplars`, a list of
        Exemplar, and `exemplar_ids`): the best validation score among comparable candidates (all
        scored on the same n validation questions); None before any."""

    def total_steps(self) -> int:
        return self.search_steps() + 1

    def step(self, state: dict) -> dict:
        if state["step"] < self.search_steps():
            self.search_step(state)
        else:
            self.held_out(state)
        state["step"] += 1
        return state

    def best(self, state: dict) -> tuple[str, float]:
        """The winner and its validation score (never a held-out score: that is only reported)."""
        top = self.winner(state)
        return (top["prompt"] + exemplar_note(top), top["score"]) if top else ("", 0.0)

    def held_out(self, state: dict) -> None:
        """Score the winner on the held-out test split; stores `state["held_out"]`."""
        top = self.winner(state)
        if top is None:
            raise ValueError("the search produced no comparable candidate to report on the test split")
        ev = self.evaluation
        self.emit(
            "progress",
            {"message": f"held-out: scoring the winner on {ev.test_fidelity or 'all'} {ev.test_split} questions"},
        )
        calls = self.llm.usage.llm_calls
        exemplars = tuple(top.get("exemplars", ()))
        result = self.llm.evaluate(ev.request(top["prompt"], ev.test_fidelity, held_out=True, exemplars=exemplars))
        state["held_out"] = {
            "prompt": top["prompt"],
            "exemplar_ids": list(top.get("exemplar_ids", ())),
            "validation_split": ev.split,
            "validation_questions": top["n"],
            "validation_score": top["score"],
            "test_split": ev.test_split,
            "test_questions": result.num_evaluated,
            "test_score": result.accuracy,
            "llm_calls": self.llm.usage.llm_calls - calls,
        }
        self.emit(
            "progress",
            {
                "message": f"winner: validation {top['score']:.3f} on {top['n']} {ev.split} questions, "
                f"held-out test {result.accuracy:.3f} on {result.num_evaluated} {ev.test_split} questions:\n"
                f"{top['prompt']}{exemplar_note(top)}"
            },
        )

    def result(self, state: dict) -> dict:
        held_out = state.get("held_out")
        return {"held_out": {k: v for k, v in held_out.items() if k != "llm_calls"}} if held_out else {}

    def record(
        self, state: dict, prompt: str, score: float, num_evaluated: int, comparable: bool = True, exemplar_ids=()
    ) -> None:
        """Add a scored prompt to the history and emit a candidate event. `comparable`: scored on
        the run's reference validation questions, so it competes for the winner; `exemplar_ids`:
        a few-shot prompt's exemplars (ids into the run's pool)."""
        entry = {"step": state["step"], "prompt": prompt, "score": score, "n": num_evaluated, "comparable": comparable}
        if exemplar_ids:
            entry["exemplar_ids"] = list(exemplar_ids)
        state["history"].append(entry)
        self.emit(
            "candidate",
            {
                "step": state["step"],
                "prompt": prompt,
                "score": score,
                "num_evaluated": num_evaluated,
                "comparable": comparable,
                "exemplar_ids": list(exemplar_ids),
            },
        )


def exemplar_note(entry: dict) -> str:
    """'(+ N exemplars: ids [...])' on its own line for a few-shot history entry, else ''."""
    ids = entry.get("exemplar_ids")
    return f"\n(+ {len(ids)} exemplars: ids {ids})" if ids else ""


def best_comparable(history: Sequence[dict]) -> dict | None:
    """The highest-scoring comparable history entry (the first one on ties), or None."""
    entries = [h for h in history if h.get("comparable", True)]
    return max(entries, key=lambda h: h["score"]) if entries else None


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
