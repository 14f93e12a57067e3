"""EcoFlow (seed 003): Bayesian optimisation of prompts in a text-embedding space, with a flow
matching model as the prior over prompts and an exact GP's LCB as guidance.

The run's BOOptimizationLoop: step 0 scores `n_initial` instructions (given, or drawn from the
APE pool) on the validation questions; each later step is one BO iteration: fit the exact GP
of error rates over embeddings (SonarGPSurrogate, standardised targets) in the surrogate, draw
`batch_size` samples from the flow checkpoint guided by -lambda grad LCB (alpha, CFG-Zero*
schedule; the surrogate's FlowService), decode each to text (decoder service: SONAR on GPU,
vec2text for GTR, LLM-guided inversion on CPU), re-encode it and record the decode round trip
(cosine, L2), score the text with the task LLM, and add it to the GP's data under its
re-encoded embedding (the default; `score_reencoded` false keeps the sampled one). The run
checkpoints after every iteration and resumes from there; the winner is the best validation
score, then reported on the held-out split.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
from pathlib import Path
from typing import ClassVar

import numpy as np

from services.common.config import default_pool_path
from services.common.settings import Settings, nested, setting
from services.flow.types import MAX_FLOW_SAMPLES, GuidanceSettings, decode_round_trip
from services.optimizer.algorithms.base import DEBUG, INITIAL_PROMPTS, check_prompts
from services.optimizer.algorithms.groups import DECODER_STEPS, Decoding, Guidance
from services.optimizer.algorithms.inputs import parse_instructions
from services.optimizer.algorithms.registry import register
from services.optimizer.algorithms.surrogate_backed import SurrogateBackedOptimizer


@dataclasses.dataclass(frozen=True)
class EcoFlowConfig(Settings):
    """Seed 003's EcoFlow parameters (its table's defaults)."""

    section: ClassVar[str] = "ecoflow"
    retired: ClassVar[tuple[str, ...]] = ("initial_pool_path",)  # paths, now uploads

    flow_checkpoint: str = setting("", "the flow training run (`promptopt flow train` prints its id); required")
    debug: bool = DEBUG.field(
        help="small run: 2 iterations of 2 samples, 4 initial prompts, 10 ODE steps (unset fields)"
    )
    iterations: int = setting(
        100, "BO iterations: guided samples decoded, scored, added to the GP", low=0, debug=2, high=10000
    )
    batch_size: int = setting(8, "guided samples per iteration", low=1, high=MAX_FLOW_SAMPLES, debug=2)
    guidance: Guidance = nested(Guidance)
    n_initial: int = setting(
        10, "initial design: pool instructions scored before the BO loop", low=0, debug=4, high=10000
    )
    initial_prompts: tuple[str, ...] = INITIAL_PROMPTS.field(
        default=(), help="instructions added to the initial design"
    )
    initial_pool_artifact: str = setting(
        "", "uploaded instruction pool (a JSON list; '': the shipped APE pool)", artifact="instructions"
    )
    score_reencoded: bool = setting(True, "the GP learns the re-encoded embedding of each decoded prompt")
    decoder_steps: int = DECODER_STEPS.field(group=Decoding.title)
    decoder_beam: int = setting(
        0, "decoder beam width (0: the decoder's default)", low=0, group=Decoding.title, high=64
    )

    def validate(self):
        if not self.flow_checkpoint:
            raise ValueError(
                "ecoflow.flow_checkpoint must name a flow training run (`promptopt flow train` prints its id)"
            )
        check_prompts(self.section, self.initial_prompts, allow_empty=True)
        if self.n_initial < 2 and len(self.initial_prompts) < 2:
            raise ValueError("ecoflow.n_initial must be >= 2 (the GP needs two scored prompts)")

    def search_steps(self) -> int:
        return 1 + self.iterations

    def pool(self, artifacts) -> list[str]:
        """The instruction pool: the uploaded one (from `artifacts`), else the shipped APE pool."""
        if self.initial_pool_artifact:
            return self.load_inputs(artifacts)["initial_pool_artifact"]
        return parse_instructions(Path(default_pool_path()).read_bytes())


@register(
    "ecoflow",
    EcoFlowConfig,
    requires=("encoder", "decoder", "surrogate", "flow"),
    summary="LCB-guided flow matching in embedding space, decoded to text (seed 003)",
)
class EcoFlowOptimizer(SurrogateBackedOptimizer):
    def phase(self, step: int) -> str:
        return "initial" if step == 0 else "bo"

    def forget_models(self) -> None:
        return None  # the GP is refitted every iteration; nothing outlives a step

    def initial_state(self) -> dict:
        pool = self.config.pool(self.artifacts)
        return {
            "step": 0,
            "history": [],
            "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y%m%d_%H%M%S"),
            "pool": pool,
            "observations": [],
            "iterations": [],
            "calls": {},
        }

    def winner(self, state: dict) -> dict | None:
        """The lowest validation error among the scored prompts (all at the same nvalid questions)."""
        if not state["observations"]:
            return None
        top = min(state["observations"], key=lambda o: o["error"])
        return {"prompt": top["instruction"], "score": 1.0 - top["error"], "n": top["n"]}

    def _score(self, state: dict, instruction: str) -> tuple[float, int]:
        result = self.llm.evaluate(self.evaluation.request(instruction, self.nvalid()))
        self.record(state, instruction, result.accuracy, result.num_evaluated)
        return 1.0 - result.accuracy, result.num_evaluated

    def run_phase(self, phase: str, state: dict) -> None:
        if phase == "initial":
            self._initial(state)
        else:
            self._iteration(state)

    def _initial(self, state: dict) -> None:
        self._check_flow()
        prompts = list(dict.fromkeys(self.config.initial_prompts))
        if len(prompts) < self.config.n_initial:
            rest = [p for p in state["pool"] if p not in prompts]
            prompts += random.Random(self.evaluation.seed).sample(
                rest, min(len(rest), self.config.n_initial - len(prompts))
            )
        self._progress(f"initial design: scoring {len(prompts)} instructions on {self.nvalid()} questions")
        embeddings = np.asarray(self._encode(prompts))
        for prompt, embedding in zip(prompts, embeddings, strict=True):
            error, n = self._score(state, prompt)
            state["observations"].append(
                {"instruction": prompt, "embedding": embedding.tolist(), "error": error, "n": n, "source": "initial"}
            )

    def _check_flow(self) -> None:
        """Before paying for the initial design: the checkpoint loads on the surrogate and samples
        embeddings of the encoder's dimension."""
        probe = self.models.flow.sample(
            self.config.flow_checkpoint, 1, settings=GuidanceSettings(guidance_strength=0.0)
        )
        samples, dimension = probe.embeddings.shape[1], np.asarray(self._encode(["Solve the problem."])).shape[1]
        if samples != dimension:
            raise ValueError(f"ecoflow.flow_checkpoint samples {samples}-D embeddings; the encoder's are {dimension}-D")

    def _iteration(self, state: dict) -> None:
        iteration = len(state["iterations"]) + 1
        observations = state["observations"]
        models = self.models
        fit = models.surrogate.fit(
            np.asarray([o["embedding"] for o in observations], dtype=np.float64),
            [o["error"] for o in observations],
            minimize=True,
            owner=self.owner,
        )
        try:
            sample = models.flow.sample(
                self.config.flow_checkpoint,
                self.config.batch_size,
                fit.model_id,
                self.config.guidance.settings(),
                seed=self.evaluation.seed * 100_003 + iteration,
            )
        finally:
            models.surrogate.delete(fit.model_id)
        seeds = list(dict.fromkeys(state["pool"] + [o["instruction"] for o in observations]))
        decoded, usage = models.decoder.invert(
            sample.embeddings, seeds, self.config.decoder_steps, self.config.decoder_beam
        )
        self.llm.usage.add(usage)
        texts = [text for text, _ in decoded]
        again = np.zeros_like(sample.embeddings)  # an empty decode re-encodes to nothing: cosine 0
        present = [i for i, text in enumerate(texts) if text.strip()]
        if present:
            again[present] = np.asarray(self._encode([texts[i] for i in present]))
        cosines, distances = decode_round_trip(sample.embeddings, again)
        best_before = min(o["error"] for o in observations)
        scored = {o["instruction"]: o["error"] for o in observations}
        samples, added = [], 0
        for i, text in enumerate(texts):
            cosine, l2, lcb = float(cosines[i]), float(distances[i]), float(sample.lcb[i])
            entry = {"instruction": text, "lcb": lcb, "decode_cosine": cosine, "decode_l2": l2}
            if not text.strip():  # the decoder gave no text: nothing to score, no GP row
                samples.append({**entry, "error": None, "repeat": False, "empty": True})
                continue
            if text in scored:  # decoded to a prompt already scored: its score stands, no second GP row
                samples.append({**entry, "error": scored[text], "repeat": True})
                continue
            error, n = self._score(state, text)
            scored[text] = error
            kept = again[i] if self.config.score_reencoded else sample.embeddings[i]
            observations.append(
                {"instruction": text, "embedding": kept.tolist(), "error": error, "n": n, "source": "ecoflow"}
            )
            samples.append({**entry, "error": error, "repeat": False})
            added += 1
        best = min(o["error"] for o in observations)
        state["iterations"].append(
            {
                "iteration": iteration,
                "gp_observations": len(observations) - added,
                "guided_steps": sample.guided_steps,
                "samples": samples,
                "best_error_before": best_before,
                "best_error": best,
            }
        )
        mean_cosine = float(np.mean([s["decode_cosine"] for s in samples]))
        self._progress(
            f"iteration {iteration}/{self.config.iterations}: {len(samples)} samples, mean LCB "
            f"{np.mean([s['lcb'] for s in samples]):.3f}, decode round-trip cosine {mean_cosine:.3f}, "
            f"best error {best:.3f}"
        )

    def report(self, state: dict) -> dict:
        """Results JSON: the config, the initial design, every iteration's samples with their LCB,
        decode round trip and measured error, and the winner."""
        top = self.winner(state)
        trips = [s for it in state["iterations"] for s in it["samples"]]
        return {
            "timestamp": state["timestamp"],
            "config": self.config.as_fields(),
            "initial": [
                {"instruction": o["instruction"], "error": o["error"]}
                for o in state["observations"]
                if o["source"] == "initial"
            ],
            "iterations": state["iterations"],
            "decode_round_trip": {
                "mean_cosine": float(np.mean([s["decode_cosine"] for s in trips])) if trips else None,
                "mean_l2": float(np.mean([s["decode_l2"] for s in trips])) if trips else None,
            },
            "winner": top,
            "total_llm_calls": sum(state["calls"].values()) + (state.get("held_out") or {}).get("llm_calls", 0),
            "gpu_memory_peak_bytes": self.gpu_memory_peak(),
        }
