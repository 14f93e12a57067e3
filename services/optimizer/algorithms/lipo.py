"""LIPO (seed 000): APE pool -> embeddings -> VAE latent -> Hyperband with BO proposals ->
deep-kernel GP + LogEI in the latent -> decode -> InvBO inversion loop -> evaluate -> GP update.

The optimizer only orchestrates: embeddings come from the encoder, the VAE, GP, acquisition and
latent inversion from the surrogate, text from the decoder, scores from llm_eval (whose cache
turns Hyperband's growing fidelities into fidelity extensions). Steps: 0 the APE pool (and
loaded evaluations), 1 the VAE, 2 Hyperband (standard and hyperband-only), then one step per
InvBO iteration. Models live in the surrogate by id; after a restart they are retrained from
the checkpointed data (no LLM call is repeated: llm_eval answers from its cache).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import random
from typing import ClassVar, Protocol

import numpy as np

from services.common.settings import Settings, named_section, nested, setting
from services.common.splits import SplitSpec
from services.optimizer.algorithms.ape import generate_pool
from services.optimizer.algorithms.base import DEBUG, DEBUG_FIDELITY, ModelServices
from services.optimizer.algorithms.groups import (
    Acquisition,
    ApePool,
    InstructionVae,
    InvertedDecoding,
    LatentGp,
    LipoHyperband,
)
from services.optimizer.algorithms.hyperband import (
    Evaluation,
    GpProposer,
    HyperbandSchedule,
    high_fidelity,
    incumbent,
    run_bracket,
)
from services.optimizer.algorithms.registry import register
from services.optimizer.algorithms.surrogate_backed import SurrogateBackedOptimizer
from services.surrogate.types import AcquisitionConfig, GpTraining, InversionConfig, LatentPoint, VaeConfig, VaeResult

log = logging.getLogger(__name__)

MODES = ("standard", "skip-hbbops", "load-grid", "hyperband-only")
# Observations scored by this run on its validation questions (loaded ones come from elsewhere).
VALIDATION_SOURCES = ("hyperband", "incumbent", "invbo")


@dataclasses.dataclass(frozen=True)
class LipoConfig(Settings):
    """Seed 000's `Config` (defaults from its tables)."""

    section: ClassVar[str] = "lipo"
    retired: ClassVar[tuple[str, ...]] = ("ape_cache_path", "hyperband_evals_path", "grid_path")  # paths, now uploads

    mode: str = setting(
        "standard", "standard, or skip-hbbops/load-grid (loaded evaluations), hyperband-only", choices=MODES
    )
    debug: bool = DEBUG.field(
        help=f"small run: 10 APE instructions, 1 iteration, short trainings, {DEBUG_FIDELITY} questions (unset fields)"
    )
    iterations: int = setting(10, "InvBO iterations after Hyperband", low=0, debug=1, high=10000)
    ape: ApePool = nested(ApePool)
    vae: InstructionVae = nested(InstructionVae, debug={"epochs": 300, "annealing_epochs": 50, "patience": 50})
    hyperband: LipoHyperband = nested(LipoHyperband)
    gp: LatentGp = nested(LatentGp, debug={"epochs": 300})
    acqf: Acquisition = nested(Acquisition)  # acquisition optimisation (`acquisition` is LIPO-E's function)
    decoding: InvertedDecoding = nested(InvertedDecoding)
    use_inversion: bool = setting(True, "InvBO: invert each decoded text back to the latent and re-propose")
    max_inversion_iters: int = setting(3, "inversion rounds per InvBO iteration", low=0, high=100)
    gap_threshold: float = setting(0.1, "cosine gap above which InvBO inverts the decoded text", low=0.0, high=2.0)
    hyperband_evals_artifact: str = setting(
        "", "skip-hbbops: uploaded recorded evaluations (results JSON or JSONL)", artifact="evaluations"
    )
    grid_artifact: str = setting("", "load-grid: the uploaded HbBoPs grid (JSONL)", artifact="evaluations")
    evaluations_split: str = setting("test", "the split the loaded evaluations were recorded on")
    top_k: int = setting(25, "load-grid: the best K grid prompts the GP starts from", low=1, high=10000)
    evaluate_inference: bool = setting(True, "score each InvBO prompt on the validation split")

    def validate(self):
        SplitSpec.parse(self.evaluations_split, "lipo.evaluations_split")
        for mode, name in (("skip-hbbops", "hyperband_evals_artifact"), ("load-grid", "grid_artifact")):
            if self.mode == mode and not getattr(self, name):
                raise ValueError(f"lipo.{name} must be set in mode {mode}")
            if self.mode != mode and getattr(self, name):
                raise ValueError(f"lipo.{name} is only read in mode {mode}")
        with named_section(self.section):  # the surrogate's checks across its fields
            self.vae.config()
            self.gp.training()
            self.acqf.config()
            self.decoding.inversion()

    def search_steps(self) -> int:
        return 2 + int(self.runs_hyperband()) + (0 if self.mode == "hyperband-only" else self.iterations)

    def runs_hyperband(self) -> bool:
        """Whether the run selects with Hyperband (the other modes load evaluations)."""
        return self.mode in ("standard", "hyperband-only")

    def seen_splits(self) -> list[tuple[str, str]]:
        """(field, split) of data the search uses besides the validation split: the loaded
        evaluations in skip-hbbops and load-grid (recorded on `evaluations_split`)."""
        return [("lipo.evaluations_split", self.evaluations_split)] if self.mode in ("skip-hbbops", "load-grid") else []


class SurrogateApi(Protocol):
    """What LIPO needs from the surrogate (`SurrogateEngine` in process, `SurrogateClient` over gRPC)."""

    def train_vae(self, embeddings, config: VaeConfig, owner: str = "") -> VaeResult: ...
    def fit(self, train_x, train_y, vae_id: str = "", minimize: bool = False, training=None, owner: str = ""): ...
    def delete(self, model_id: str) -> None: ...
    def delete_owned(self, owner: str) -> int: ...
    def update(self, model_id: str, x, y, training: GpTraining | None = None) -> tuple[int, int]: ...
    def predict(self, model_id: str, x) -> tuple[np.ndarray, np.ndarray]: ...
    def log_ei(self, model_id: str, x, best_f: float | None = None) -> np.ndarray: ...
    def optimize(self, model_id: str, config: AcquisitionConfig | None = None, best_f=None) -> LatentPoint: ...
    def invert(self, model_id: str, target, latent_init, config: InversionConfig | None = None) -> LatentPoint: ...


def _cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


@register(
    "lipo",
    LipoConfig,
    requires=("encoder", "decoder", "surrogate"),
    summary="APE pool, VAE latent, Hyperband with BO proposals, InvBO (seed 000)",
)
class LipoOptimizer(SurrogateBackedOptimizer):
    def __init__(self, config: LipoConfig, evaluation, llm, emit, models: ModelServices | None = None, **kwargs):
        super().__init__(config, evaluation, llm, emit, models, **kwargs)
        self._vae_id: str | None = None
        self._model_id: str | None = None

    # -- plumbing ------------------------------------------------------------------------------
    def initial_state(self) -> dict:
        return {
            "step": 0,
            "history": [],
            "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y%m%d_%H%M%S"),
            "pool": [],
            "observations": [],
            "vae": None,
            "hyperband": None,
            "inference": [],
            "calls": {},
        }

    def _score(self, state: dict, instruction: str, fidelity: int) -> float:
        """Error rate on the first `fidelity` validation questions of the run's shuffled order,
        recorded as a candidate (comparable at full fidelity nvalid)."""
        result = self.llm.evaluate(self.evaluation.request(instruction, fidelity))
        self.record(state, instruction, result.accuracy, result.num_evaluated, comparable=fidelity == self.nvalid())
        return 1.0 - result.accuracy

    def winner(self, state: dict) -> dict | None:
        """The lowest validation error at full fidelity nvalid (Hyperband's top stage, the loaded
        incumbent re-scored, InvBO); loaded evaluations from elsewhere only train the GP."""
        comparable = [
            o for o in state.get("observations", []) if o["source"] in VALIDATION_SOURCES and o["n"] == self.nvalid()
        ]
        if not comparable:
            return None
        top = min(comparable, key=lambda o: o["error"])
        return {"prompt": top["instruction"], "score": 1.0 - top["error"], "n": top["n"]}

    # -- models (retrained after a restart: ids do not survive the surrogate or this process) ----
    def _vae(self, state: dict) -> str:
        if self._vae_id is None:
            result = self.models.surrogate.train_vae(
                self._encode(state["pool"]), self.config.vae.config(self.evaluation.seed), self.owner
            )
            self._vae_id = result.vae_id
            training = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("vae_id", "quality")}
            state["vae"] = {"vae_quality_metrics": result.quality, "vae_training": training}
        return self._vae_id

    def _gp(self, state: dict) -> str:
        if self._model_id is None:
            obs = state["observations"]
            if len(obs) < 2:
                raise ValueError(f"InvBO needs at least 2 evaluated instructions for the GP, got {len(obs)}")
            fit = self.models.surrogate.fit(
                self._encode([o["instruction"] for o in obs]),
                [o["error"] for o in obs],
                self._vae(state),
                True,
                self.config.gp.training(self.evaluation.seed),
                self.owner,
            )
            self._model_id = fit.model_id
            self._progress(f"GP fitted on {len(obs)} observations ({fit.epochs_trained} epochs)")
        return self._model_id

    def forget_models(self) -> None:
        self._vae_id = self._model_id = None

    # -- steps ---------------------------------------------------------------------------------
    def phase(self, step: int) -> str:
        return "ape" if step == 0 else "vae" if step == 1 else "hyperband" if self._is_hyperband(step) else "inference"

    def _is_hyperband(self, step: int) -> bool:
        return step == 2 and self.config.runs_hyperband()

    def run_phase(self, phase: str, state: dict) -> None:
        if phase == "ape":
            self._load(state)
        elif phase == "vae":
            self._vae(state)
            self._progress(f"VAE trained: {json.dumps(state['vae'])}")
        elif phase == "hyperband":
            self._hyperband(state)
        else:
            self._vae(state)
            self._invbo_iteration(state)

    def _load(self, state: dict) -> None:
        config = self.config
        cache = self.state_dir / "ape_instructions.json"
        state["pool"] = generate_pool(
            self.llm,
            config.ape.num_instructions,
            cache,
            config.ape.batch_size,
            config.ape.max_tokens,
            config.ape.max_length,
            self.evaluation.seed,
            self._progress,
        )
        if len(state["pool"]) < 2:
            raise ValueError(f"the APE pool has {len(state['pool'])} instructions; at least 2 are needed")
        self._progress(f"APE pool: {len(state['pool'])} instructions ({cache})")
        if config.mode == "skip-hbbops":
            rows = config.load_inputs(self.artifacts)["hyperband_evals_artifact"]
        elif config.mode == "load-grid":
            rows = config.load_inputs(self.artifacts)["grid_artifact"]
            rows = sorted(rows, key=lambda r: r["error"])[: config.top_k]
        else:
            return
        self._progress(
            f"loaded {len(rows)} evaluated instructions ({config.mode}, recorded on {config.evaluations_split})"
        )
        # Loaded scores come from another split or question count: the loaded best is re-scored on
        # the run's validation questions (replacing its loaded row) so that InvBO's candidates are
        # compared with it at equal question counts. This costs one evaluation at nvalid.
        best = min(rows, key=lambda r: r["error"])["instruction"]
        state["observations"] = [{**r, "source": config.mode} for r in rows if r["instruction"] != best]
        error = self._score(state, best, self.nvalid())
        state["observations"].append({"instruction": best, "error": error, "n": self.nvalid(), "source": "incumbent"})

    def _hyperband(self, state: dict) -> None:
        config = self.config
        schedule = HyperbandSchedule(self.nvalid(), config.hyperband.bmin, config.hyperband.eta)
        pool = state["pool"]
        proposer = GpProposer(
            self.models.surrogate,
            self._encode(pool),
            self._vae(state),
            config.hyperband.min_fidelity_pct * schedule.nvalid,
            config.hyperband.random_interleaving_prob,
            config.gp.hyperband_training(self.evaluation.seed),
            self.owner,
        )
        history: list[Evaluation] = []
        self._progress(f"Hyperband: nvalid {schedule.nvalid}, smax {schedule.smax}, B {schedule.budget}")
        for s in schedule.brackets():
            rng = random.Random(self.evaluation.seed * 1_000_003 + s)
            run_bracket(
                schedule,
                s,
                len(pool),
                lambda i, b: self._score(state, pool[i], b),
                proposer,
                history,
                rng,
                lambda stage, n, b, s=s: self._progress(
                    f"bracket s={s} stage {stage}: {n} instructions x {b} questions"
                ),
            )
        best = incumbent(history, schedule.nvalid)
        top = high_fidelity(history, config.hyperband.min_fidelity_pct * schedule.nvalid)
        state["observations"] = [
            {"instruction": pool[i], "error": e.error, "n": e.fidelity, "source": "hyperband"} for i, e in top.items()
        ]
        state["hyperband"] = {
            "best_instruction": pool[best.index],
            "best_error": best.error,
            "nvalid": schedule.nvalid,
            "smax": schedule.smax,
            "budget": schedule.budget,
            "evaluations": len(history),
            "gp_fits": proposer.fits,
            "evaluations_by_fidelity": {
                str(b): sum(e.fidelity == b for e in history) for b in sorted({e.fidelity for e in history})
            },
        }

    def _decode(self, embedding, state: dict) -> tuple[str, float]:
        seeds = list(dict.fromkeys(state["pool"] + [o["instruction"] for o in state["observations"]]))
        pairs, usage = self.models.decoder.invert(
            np.asarray([embedding], dtype=np.float32),
            seeds,
            self.config.decoding.decoder_steps,
            self.config.decoding.vec2text_beam,
        )
        self.llm.usage.add(usage)
        return pairs[0]

    def _invbo_iteration(self, state: dict) -> None:
        config, surrogate = self.config, self.models.surrogate
        iteration = len(state["inference"]) + 1
        model_id = self._gp(state)
        incumbent = self.winner(state)
        incumbent_error = None if incumbent is None else 1.0 - incumbent["score"]
        point = surrogate.optimize(model_id, config.acqf.config(), incumbent_error)  # improve on the winner
        z, embedding = point.latent, point.embedding
        text, cosine = self._decode(embedding, state)
        inversions = [{"text": text, "decoder_cosine": cosine}]
        gap = None
        if config.use_inversion:
            for _ in range(config.max_inversion_iters):
                inverted = surrogate.invert(model_id, self._encode([text])[0], z, config.decoding.inversion())
                gap = 1.0 - _cosine(embedding, inverted.embedding)
                inversions[-1].update({"inversion_loss": inverted.value, "gap": gap})
                if gap <= config.gap_threshold:
                    break
                z, embedding = inverted.latent, inverted.embedding
                text, cosine = self._decode(embedding, state)
                inversions.append({"text": text, "decoder_cosine": cosine})
        reencoded = self._encode([text])
        mean, variance = surrogate.predict(model_id, reencoded)
        predicted, std = float(mean[0]), float(np.sqrt(max(variance[0], 0.0)))
        if config.evaluate_inference:
            error, n = self._score(state, text, self.nvalid()), self.nvalid()
        else:
            error, n = predicted, 0
        surrogate.update(model_id, reencoded, [error], config.gp.retrain(self.evaluation.seed))
        state["observations"].append({"instruction": text, "error": error, "n": n, "source": "invbo"})
        entry = {
            "iteration": iteration,
            "instruction": text,
            "log_ei": point.value,
            "decoder_cosine": cosine,
            "gap": gap,
            "inversions": inversions,
            "predicted_error": predicted,
            "predicted_std": std,
            "actual_error": error if config.evaluate_inference else None,
            "incumbent_error_before": incumbent_error,
        }
        state["inference"].append(entry)
        self._progress(
            f"InvBO iteration {iteration}: cosine {cosine:.3f}, gap {gap if gap is None else round(gap, 4)}, "
            f"predicted error {predicted:.3f} +- {std:.3f}, actual {error:.3f}, instruction:\n{text}"
        )

    # -- results -------------------------------------------------------------------------------
    def report(self, state: dict) -> dict:
        """The seed's results JSON blocks."""
        vae = state.get("vae") or {}
        hyperband = state.get("hyperband")
        if hyperband is not None:
            hyperband = {**hyperband, "llm_calls": state["calls"].get("hyperband", 0)}
        inference = None
        if state["inference"]:
            evaluated = [e for e in state["inference"] if e["actual_error"] is not None] or state["inference"]
            best = min(
                evaluated, key=lambda e: e["actual_error"] if e["actual_error"] is not None else e["predicted_error"]
            )
            best_error = best["actual_error"] if best["actual_error"] is not None else best["predicted_error"]
            start = state["inference"][0]["incumbent_error_before"]
            inference = {
                "best_instruction": best["instruction"],
                "best_error": best_error,
                "improvement": None if start is None or best["actual_error"] is None else start - best_error,
                "iterations": len(state["inference"]),
                "llm_calls": state["calls"].get("inference", 0),
                "history": state["inference"],
            }
        return {
            "timestamp": state["timestamp"],
            "vae_quality_metrics": vae.get("vae_quality_metrics"),
            "config": self.config.as_fields(),
            "vae_training": vae.get("vae_training"),
            "hyperband": hyperband,
            "inference": inference,
            "total_llm_calls": sum(state["calls"].values()) + (state.get("held_out") or {}).get("llm_calls", 0),
            "gpu_memory_peak_bytes": self.gpu_memory_peak(),
        }
