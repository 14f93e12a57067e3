"""LIPO-E (seed 001): joint instruction x exemplar-set optimisation.

Prompts are pairs (instruction, exemplar set), an exemplar set being 0..num_slots Q/A pairs
from a pool (GSM8K train, never the validation split). Steps: 0 the instructions (APE or a
file) and the exemplar pool, 1 the StructureAwareVAE (surrogate), 2 Hyperband over pairs with
two-stage BO proposals from the JointPromptGP (trained on every fidelity, Beta-smoothed), then
one InvBO step per iteration (z_joint by LogEI, z_inst decoded to text by the decoder service,
z_ex to exemplars by the VAE's slot decoder). The grid mode selects among given instructions x
given exemplar sets, with no generation: its InvBO iterations realise each optimised z_joint as
the nearest grid pair not yet measured at full fidelity.

BOLT (seed 004) is LIPO-E with its tuned fields: latent widths and an MSE term in the VAE, a
Set Transformer exemplar scorer (ListMLE, `selection_weight`) whose MMR selection
(`mmr_lambda`) picks the proposals' exemplars when `use_scorer` is on, a deep-kernel option for
the GP, UCB (`ucb_beta`) with a distance penalty (`distance_weight`) for InvBO, and rejection of
realised prompts whose embedding strays from the optimised latent's decoding (cosine below
`cosine_sim_threshold`), resampled at `latent_noise_scale` around it.

The optimizer only orchestrates; llm_eval renders and caches few-shot prompts (fidelity
extension per pair), the surrogate holds the VAE and GPs by id. After a restart the models are
retrained from the checkpointed data and no LLM call is repaid (llm_eval's cache answers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import random
from collections.abc import Sequence
from typing import ClassVar, Protocol

import numpy as np

from services.common.errors import NotFoundError
from services.common.relevance import relevance_from_evaluations
from services.common.settings import Settings, named_section, nested, setting
from services.common.splits import SplitSpec
from services.llm_eval.types import MAX_EXEMPLARS, Exemplar
from services.optimizer.algorithms.ape import generate_pool
from services.optimizer.algorithms.base import DEBUG, DEBUG_FIDELITY
from services.optimizer.algorithms.groups import ApePool, Decoding, Hyperband, JointAcquisition, JointGpKernel, JointVae
from services.optimizer.algorithms.hyperband import (
    MIN_GP_POINTS,
    Evaluation,
    HyperbandSchedule,
    Proposer,
    high_fidelity,
    incumbent,
    run_bracket,
)
from services.optimizer.algorithms.inputs import check_slots
from services.optimizer.algorithms.registry import register
from services.optimizer.algorithms.surrogate_backed import SurrogateBackedOptimizer
from services.surrogate.types import (
    AcquisitionConfig,
    FitResult,
    JointGpConfig,
    JointVaeConfig,
    JointVaeResult,
    ScorerConfig,
    ScorerTraining,
)

log = logging.getLogger(__name__)

MODES = ("standard", "grid")
MAX_RESAMPLES = 3  # realisations tried per InvBO iteration after the first is rejected


@dataclasses.dataclass(frozen=True)
class LipoEConfig(Settings):
    """Seed 001's Parameters and Dimensions; BOLT's fields (seed 004) keep seed 001's LIPO-E by default."""

    section: ClassVar[str] = "lipo_e"
    retired: ClassVar[tuple[str, ...]] = (
        "ape_cache_path",
        "instructions_path",
        "exemplar_sets_path",
    )  # paths, now uploads

    mode: str = setting(
        "standard", "standard (APE pool x exemplar pool) or grid (recorded instruction x exemplar sets)", choices=MODES
    )
    debug: bool = DEBUG.field(
        help="small run: 10 instructions, 50-example pool, 3 slots, 1 iteration, short trainings, "
        f"{DEBUG_FIDELITY} questions (unset fields)"
    )
    iterations: int = setting(
        50, "InvBO iterations after Hyperband (grid mode: 0 unless set)", low=0, debug=1, high=10000
    )
    qa_pool_size: int = setting(
        6154, "exemplar pool: the first N questions of qa_pool_split", low=1, debug=50, high=1000000
    )
    qa_pool_split: str = setting("train", "split the exemplar pool is drawn from (never the validation questions)")
    use_ape: bool = setting(True, "generate the instructions with APE (off: the uploaded instructions)")
    ape: ApePool = nested(ApePool, num_instructions=2000)
    instructions_artifact: str = setting(
        "", "uploaded instructions (a JSON list): grid mode, or use_ape off", artifact="instructions"
    )
    exemplar_sets_artifact: str = setting(
        "", "grid mode: uploaded exemplar sets (a JSON list of lists of {question, answer})", artifact="exemplar_sets"
    )
    vae: JointVae = nested(JointVae, beta=0.005, epochs=50000, lr=1e-3, debug={"epochs": 30, "samples": 200})
    num_slots: int = setting(8, "exemplar slots per prompt", low=1, high=MAX_EXEMPLARS, debug=3)
    min_exemplars: int = setting(0, "fewest exemplars a prompt may have", low=0, high=MAX_EXEMPLARS)
    hyperband: Hyperband = nested(Hyperband)
    gp: JointGpKernel = nested(JointGpKernel, epochs=1000, patience=50, debug={"epochs": 200})
    acqf: JointAcquisition = nested(JointAcquisition)  # acquisition optimisation (`acquisition` is LIPO-E's function)
    decoding: Decoding = nested(Decoding)
    use_scorer: bool = setting(False, "BOLT: Hyperband's proposals pick exemplars with the Set Transformer scorer")
    selection_weight: float = setting(0.1, "BOLT scorer: weight of the ListMLE term", above=0.0, high=100.0)
    mmr_lambda: float = setting(0.6, "BOLT scorer: MMR relevance-diversity balance", low=0.0, high=1.0)
    set_transformer_heads: int = setting(4, "BOLT scorer: attention heads", low=1, high=64)
    set_transformer_hidden: int = setting(128, "BOLT scorer: hidden width", low=1, high=4096)
    num_inducing_points: int = setting(4, "BOLT scorer: inducing points of the Set Transformer", low=1, high=256)
    scorer_epochs: int = setting(300, "BOLT scorer: training epochs", low=1, high=100000)
    cosine_sim_threshold: float = setting(
        0.0, "BOLT: reject a realisation whose cosine to its target is below this", low=0.0, high=1.0
    )
    latent_noise_scale: float = setting(0.05, "BOLT: noise of a rejected realisation's resample", low=0.0, high=10.0)

    @classmethod
    def debug_preset(cls, fields) -> dict:
        """Grid runs keep the given exemplar sets: the pool and slot debug values do not apply."""
        preset = super().debug_preset(fields)
        if fields.get("mode") == "grid":
            preset.pop("num_slots"), preset.pop("qa_pool_size")
        return preset

    @classmethod
    def from_fields(cls, fields) -> LipoEConfig:
        """A grid run selects: InvBO on the grid only when iterations are given."""
        if fields.get("mode") == "grid" and "iterations" not in fields:
            fields = {**fields, "iterations": 0}
        return super().from_fields(fields)

    def validate(self):
        if not self.min_exemplars <= self.num_slots:
            raise ValueError(f"lipo_e.min_exemplars must be in [0, {self.num_slots}], got {self.min_exemplars}")
        needs = ["instructions_artifact"] if self.mode == "grid" or not self.use_ape else []
        needs += ["exemplar_sets_artifact"] if self.mode == "grid" else []
        if self.instructions_artifact and not needs:
            raise ValueError("lipo_e.instructions_artifact is set but use_ape is on: turn use_ape off to use it")
        if self.exemplar_sets_artifact and self.mode != "grid":
            raise ValueError("lipo_e.exemplar_sets_artifact is only read in grid mode")
        for name in needs:
            if not getattr(self, name):
                raise ValueError(f"lipo_e.{name} must be set ({'grid mode' if self.mode == 'grid' else 'use_ape off'})")
        if self.use_scorer and self.mode == "grid":
            raise ValueError("lipo_e.use_scorer picks exemplars from the pool: it needs mode standard, not grid")
        with named_section(self.section):  # the surrogate's checks across its fields
            self.vae_config()
            self.gp_config()
            self.acqf.config()
            self.scorer_config()

    def check_inputs(self, inputs: dict) -> None:
        if "exemplar_sets_artifact" in inputs:
            check_slots(inputs["exemplar_sets_artifact"], self.num_slots, "lipo_e.exemplar_sets_artifact")

    def search_steps(self) -> int:
        return 3 + self.iterations

    def seen_splits(self) -> list[tuple[str, str]]:
        """The exemplar pool's questions appear in prompts: the held-out split must not share them."""
        return [] if self.mode == "grid" else [("lipo_e.qa_pool_split", self.pool_split())]

    def check_splits(self, evaluation, sizes: dict[str, int]) -> None:
        """Full fidelity is at least bmin; the exemplar pool exists, holds qa_pool_size examples and
        shares no question with the validation split (exemplars are never evaluation questions)."""
        spec = SplitSpec.parse(evaluation.split, "evaluation.split")
        nvalid = evaluation.fidelity or (DEBUG_FIDELITY if self.debug else len(spec.bounds(sizes.get(spec.base, 0))))
        if nvalid < self.hyperband.bmin:
            raise ValueError(f"lipo_e.bmin {self.hyperband.bmin} exceeds the full fidelity of {nvalid} questions")
        if self.mode == "grid":
            return
        pool = SplitSpec.parse(self.pool_split(), "lipo_e.qa_pool_split")
        if pool.base not in sizes:
            raise ValueError(f"lipo_e.qa_pool_split {self.qa_pool_split!r}: no such split (has {sorted(sizes)})")
        if self.qa_pool_size > sizes[pool.base]:
            raise ValueError(
                f"lipo_e.qa_pool_size {self.qa_pool_size} exceeds the {sizes[pool.base]} questions of {pool.base!r}"
            )
        validation = SplitSpec.parse(evaluation.split, "evaluation.split")
        if self.min_exemplars > self.qa_pool_size:
            raise ValueError(f"lipo_e.min_exemplars {self.min_exemplars} exceeds qa_pool_size {self.qa_pool_size}")
        if pool.overlaps(validation, sizes[pool.base]):
            raise ValueError(
                f"lipo_e.qa_pool_split {self.pool_split()!r} shares questions with evaluation.split "
                f"{evaluation.split!r}: validate on other questions, e.g. "
                f"'{pool.base}[{self.qa_pool_size}:]' (the seed's 1319 after its 6154-pair pool)"
            )

    def pool_split(self) -> str:
        """The pool as a split slice, e.g. `train[:6154]`."""
        return f"{self.qa_pool_split}[:{self.qa_pool_size}]"

    def vae_config(self, seed: int = 0) -> JointVaeConfig:
        return JointVaeConfig(
            beta=self.vae.beta,
            epochs=self.vae.epochs,
            patience=self.vae.patience,
            lr=self.vae.lr,
            batch_size=self.vae.batch_size,
            num_slots=self.num_slots,
            min_exemplars=self.min_exemplars,
            samples=self.vae.samples,
            inst_dim=self.vae.instruction_latent_dim,
            ex_dim=self.vae.exemplar_latent_dim,
            mse_weight=self.vae.mse_weight,
            seed=seed,
        )

    def gp_config(self, seed: int = 0) -> JointGpConfig:
        return JointGpConfig(
            self.gp.epochs,
            self.gp.lr,
            self.gp.patience,
            self.gp.product_kernel,
            self.gp.beta_smoothing,
            seed,
            self.vae.instruction_latent_dim,
            self.gp.use_deep_kernel,
        )

    def scorer_config(self, seed: int = 0) -> ScorerConfig:
        return ScorerConfig(
            hidden=self.set_transformer_hidden,
            heads=self.set_transformer_heads,
            num_inducing=self.num_inducing_points,
            selection_weight=self.selection_weight,
            mmr_lambda=self.mmr_lambda,
            epochs=self.scorer_epochs,
            seed=seed,
        )


class JointSurrogate(Protocol):
    """What LIPO-E needs from the surrogate (`SurrogateEngine` in process, `SurrogateClient` over gRPC)."""

    def train_joint_vae(self, instructions, pool, config: JointVaeConfig, owner: str = "") -> JointVaeResult: ...
    def encode_joint(self, vae_id: str, instructions, exemplar_sets) -> np.ndarray: ...
    def decode_joint(self, vae_id: str, z) -> tuple[np.ndarray, list[list[int]]]: ...
    def fit_joint(self, z, errors, fidelities, config: JointGpConfig, owner: str = "") -> FitResult: ...
    def log_ei(self, model_id: str, x, best_f: float | None = None) -> np.ndarray: ...
    def predict(self, model_id: str, x) -> tuple[np.ndarray, np.ndarray]: ...
    def propose_exemplars(self, vae_id, model_id, instructions, steps=20, restarts=5, seed=0): ...
    def optimize_joint(self, model_id: str, config: AcquisitionConfig | None = None, seed: int = 0): ...
    def train_scorer(self, instructions, pool, relevance, config: ScorerConfig, owner: str = "") -> ScorerTraining: ...
    def score_exemplars(self, scorer_id: str, instructions, k: int = 0, mmr_lambda: float | None = None): ...
    def delete(self, model_id: str) -> None: ...
    def delete_owned(self, owner: str) -> int: ...


class PairSpace:
    """The (instruction index, exemplar ids) pairs a run has considered and their z_joint, encoded
    by the VAE once per pair. `instruction_embeddings(indices)` gives the encoder's rows."""

    def __init__(self, surrogate: JointSurrogate, vae_id: str, instruction_embeddings):
        self.surrogate, self.vae_id, self.embed = surrogate, vae_id, instruction_embeddings
        self.pairs: list[tuple[int, tuple[int, ...]]] = []
        self.z = np.zeros((0, 0))
        self._index: dict[tuple[int, tuple[int, ...]], int] = {}

    def add(self, pairs: Sequence[tuple[int, Sequence[int]]]) -> list[int]:
        """Indices of `pairs`, encoding the new ones in one call."""
        keys = [(int(i), tuple(int(e) for e in ids)) for i, ids in pairs]
        new = [k for k in dict.fromkeys(keys) if k not in self._index]
        if new:
            z = self.surrogate.encode_joint(self.vae_id, self.embed([i for i, _ in new]), [list(s) for _, s in new])
            for key in new:
                self._index[key] = len(self.pairs)
                self.pairs.append(key)
            z = np.asarray(z, dtype=float)
            self.z = np.concatenate([self.z.reshape(-1, z.shape[1]), z])
        return [self._index[k] for k in keys]


class JointGp:
    """The JointPromptGP on every evaluated pair at its highest fidelity (Beta smoothing makes low
    fidelities count less), refitted only when that data changed; superseded fits are deleted."""

    def __init__(self, surrogate: JointSurrogate, space: PairSpace, config: JointGpConfig, owner: str = ""):
        self.surrogate, self.space, self.config, self.owner = surrogate, space, config, owner
        self.fits = 0
        self._fitted: tuple[frozenset, str] | None = None

    @staticmethod
    def data(history: Sequence[Evaluation]) -> dict[int, Evaluation]:
        """Each evaluated pair at its highest fidelity (every fidelity counts)."""
        return high_fidelity(history, 0)

    def model_for(self, history: Sequence[Evaluation], min_points: int = MIN_GP_POINTS) -> str | None:
        """The GP's id, or None below `min_points` evaluated pairs (Hyperband's proposals: MIN_GP_POINTS)."""
        data = self.data(history)
        if len(data) < min_points:
            return None
        key = frozenset((i, e.fidelity, e.error) for i, e in data.items())
        if self._fitted is None or self._fitted[0] != key:
            indices = sorted(data)
            fit = self.surrogate.fit_joint(
                self.space.z[indices],
                [data[i].error for i in indices],
                [data[i].fidelity for i in indices],
                self.config,
                self.owner,
            )
            if self._fitted is not None:
                with contextlib.suppress(NotFoundError):
                    self.surrogate.delete(self._fitted[1])
            self._fitted = (key, fit.model_id)
            self.fits += 1
        return self._fitted[1]


class Scorer:
    """BOLT's exemplar scorer over the run's evaluations, retrained (surrogate's TrainScorer) only
    when they changed; relevance of a pool exemplar for an instruction is the mean accuracy of its
    evaluated pairs that show it (`relevance_from_evaluations`). Superseded scorers are deleted."""

    def __init__(self, gp: JointGp, pool_embeddings, config: ScorerConfig, num_instructions: int, owner: str = ""):
        self.gp, self.pool, self.config = gp, pool_embeddings, config
        self.num_instructions, self.owner = num_instructions, owner
        self.trainings: list[dict] = []
        self._trained: tuple[frozenset, str] | None = None

    def scorer_for(self, history: Sequence[Evaluation]) -> str | None:
        """The scorer of the evaluations so far; None while no exemplar has a label."""
        data = JointGp.data(history)
        key = frozenset((i, e.fidelity, e.error) for i, e in data.items())
        if self._trained is None or self._trained[0] != key:
            space = self.gp.space
            pairs = [space.pairs[i] for i in data]
            relevance = relevance_from_evaluations(
                self.num_instructions, len(self.pool), pairs, [1.0 - e.error for e in data.values()]
            )
            rows = [i for i in sorted({i for i, _ in pairs}) if not np.isnan(relevance[i]).all()]
            if not rows:
                return None
            result = self.gp.surrogate.train_scorer(
                space.embed(rows), self.pool, relevance[rows], self.config, self.owner
            )
            if self._trained is not None:
                with contextlib.suppress(NotFoundError):
                    self.gp.surrogate.delete(self._trained[1])
            self._trained = (key, result.scorer_id)
            self.trainings.append({"instructions": len(rows), "pairs": len(pairs), "final_loss": result.final_loss})
        return self._trained[1]


class JointProposer(Proposer):
    """Hyperband's BO proposals over pairs (seed 001): random until the GP has MIN_GP_POINTS pairs,
    then the pairs with the highest LogEI, each pick random with probability `random_prob`.

    Grid (`grid` True): candidates are every pair of the space. Standard: a two-stage pass samples
    max(`candidates`, n) instructions, optimises each one's exemplar set on LogEI (surrogate's
    ProposeExemplars: `steps` x `restarts`), and ranks the resulting pairs; a random pick is a
    random instruction with a random set of min_exemplars..num_slots pool exemplars. With a
    `scorer` (BOLT), each instruction's exemplars are instead a prefix of the scorer's MMR order,
    as long as LogEI prefers.
    """

    def __init__(
        self,
        gp: JointGp,
        random_prob: float,
        grid: bool,
        num_instructions: int = 0,
        pool_size: int = 0,
        num_slots: int = 8,
        min_exemplars: int = 0,
        candidates: int = 50,
        steps: int = 20,
        restarts: int = 5,
        seed: int = 0,
        scorer: Scorer | None = None,
    ):
        self.gp, self.random_prob, self.grid, self.scorer = gp, random_prob, grid, scorer
        self.num_instructions, self.pool_size = num_instructions, pool_size
        self.num_slots, self.min_exemplars = num_slots, min_exemplars
        self.candidates, self.steps, self.restarts, self.seed = candidates, steps, restarts, seed
        self.calls = 0

    def _random_pair(self, rng: random.Random) -> tuple[int, list[int]]:
        size = rng.randint(self.min_exemplars, min(self.num_slots, self.pool_size))
        return rng.randrange(self.num_instructions), rng.sample(range(self.pool_size), size)

    def propose(self, candidates, count, history, rng):
        self.calls += 1
        space = self.gp.space
        model_id = self.gp.model_for(history)
        if self.grid:
            pool = list(range(len(space.pairs)))
            if model_id is None:
                return rng.sample(pool, min(count, len(pool)))
            scores = self.gp.surrogate.log_ei(model_id, space.z[pool])
            ranked = [pool[i] for i in np.argsort(-np.asarray(scores), kind="stable")]
            return self._interleave(ranked, count, lambda remaining: rng.choice(sorted(remaining)), rng)
        if model_id is None:
            return space.add([self._random_pair(rng) for _ in range(count)])
        sampled = rng.sample(range(self.num_instructions), min(self.num_instructions, max(self.candidates, count)))
        scorer_id = None if self.scorer is None else self.scorer.scorer_for(history)
        if scorer_id is None:
            proposals = self.gp.surrogate.propose_exemplars(
                space.vae_id,
                model_id,
                space.embed(sampled),
                self.steps,
                self.restarts,
                self.seed * 1_000_003 + self.calls,
            )
        else:
            proposals = self._scored(sampled, model_id, scorer_id)
        values = [v for _, v in proposals]
        order = np.argsort(-np.asarray(values), kind="stable")
        ranked = space.add([(sampled[i], proposals[i][0]) for i in order])
        ranked = list(dict.fromkeys(ranked))
        return self._interleave(ranked, count, lambda remaining: space.add([self._random_pair(rng)])[0], rng)

    def _scored(self, sampled: list[int], model_id: str, scorer_id: str) -> list[tuple[list[int], float]]:
        """Per instruction, the scorer's MMR order over the pool; of its prefixes of min_exemplars..
        num_slots exemplars, the one with the highest LogEI (the GP decides how many)."""
        space, surrogate = self.gp.space, self.gp.surrogate
        most = min(self.num_slots, self.pool_size)
        _, orders = surrogate.score_exemplars(scorer_id, space.embed(sampled), most)
        sizes = range(self.min_exemplars, most + 1)
        prefixes = [(i, order[:k]) for i, order in zip(sampled, orders, strict=True) for k in sizes]
        z = surrogate.encode_joint(space.vae_id, space.embed([i for i, _ in prefixes]), [s for _, s in prefixes])
        values = np.asarray(surrogate.log_ei(model_id, np.asarray(z))).reshape(len(sampled), len(sizes))
        best = values.argmax(1)
        return [(list(orders[j][: sizes[b]]), float(values[j, b])) for j, b in enumerate(best)]

    def _interleave(self, ranked: list[int], count: int, random_pick, rng: random.Random) -> list[int]:
        picks: list[int] = []
        remaining = set(ranked)
        for _ in range(min(count, len(ranked)) if self.grid else count):
            if rng.random() < self.random_prob or not remaining:
                choice = random_pick(remaining)
            else:
                choice = next(c for c in ranked if c in remaining)
            picks.append(choice)
            remaining.discard(choice)
        return picks


@register(
    "lipo_e",
    LipoEConfig,
    requires=("encoder", "decoder", "surrogate"),
    summary="LIPO over instruction x exemplar set: joint VAE, product-kernel GP, two-stage proposals (seed 001)",
)
class LipoEOptimizer(SurrogateBackedOptimizer):
    def __init__(self, config: LipoEConfig, evaluation, llm, emit, models=None, **kwargs):
        super().__init__(config, evaluation, llm, emit, models, **kwargs)
        self._vae_id: str | None = None
        self._space: PairSpace | None = None
        self._gp: JointGp | None = None
        self._pool_cache: list[dict] | None = None
        self._pool_embeddings: np.ndarray | None = None

    # -- plumbing ------------------------------------------------------------------------------
    def initial_state(self) -> dict:
        return {
            "step": 0,
            "history": [],
            "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y%m%d_%H%M%S"),
            "instructions": [],
            "pool": [],
            "exemplar_sets": [],
            "pairs": [],
            "evaluations": [],
            "vae": None,
            "hyperband": None,
            "inference": [],
            "scorer": [],
            "calls": {},
        }

    def winner(self, state: dict) -> dict | None:
        """The lowest validation error among pairs evaluated at full fidelity nvalid."""
        top = incumbent([Evaluation(*row) for row in state.get("evaluations", [])], self.nvalid())
        if top is None:
            return None
        instruction, ids = state["pairs"][top.index]
        return {
            "prompt": state["instructions"][instruction],
            "exemplars": [Exemplar(**self._pool(state)[i]) for i in ids],
            "exemplar_ids": list(ids),
            "score": 1.0 - top.error,
            "n": top.fidelity,
        }

    # -- models (rebuilt after a restart from the checkpointed data) ---------------------------
    def _instruction_embeddings(self, state: dict):
        return lambda indices: self._encode([state["instructions"][i] for i in indices])

    def _pool(self, state: dict) -> list[dict]:
        """The exemplar pool as {question, answer}: a grid's own exemplars are in the state; a
        standard run's pool split is fetched from llm_eval once per process (checkpoints stay small)."""
        if state["pool"] or self.config.mode == "grid":
            return state["pool"]
        if self._pool_cache is None:
            fetched = self.llm.pool_exemplars(self.evaluation.dataset, self.config.pool_split())
            self._pool_cache = [dataclasses.asdict(e) for e in fetched]
        return self._pool_cache

    def _pool_texts(self, state: dict) -> list[str]:
        return [f"Q: {e['question']}\nA: {e['answer']}" for e in self._pool(state)]

    def _pool_vectors(self, state: dict) -> np.ndarray:
        if self._pool_embeddings is None:
            self._pool_embeddings = np.asarray(self._encode(self._pool_texts(state)))
        return self._pool_embeddings

    def _models(self, state: dict) -> tuple[PairSpace, JointGp]:
        if self._space is None:
            surrogate = self.models.surrogate
            if self._vae_id is None:
                result = surrogate.train_joint_vae(
                    self._encode(state["instructions"]),
                    self._pool_vectors(state),
                    self.config.vae_config(self.evaluation.seed),
                    self.owner,
                )
                self._vae_id = result.vae_id
                state["vae"] = {k: v for k, v in dataclasses.asdict(result).items() if k != "vae_id"}
            self._space = PairSpace(surrogate, self._vae_id, self._instruction_embeddings(state))
            self._space.add(state["pairs"])
            self._gp = JointGp(surrogate, self._space, self.config.gp_config(self.evaluation.seed), self.owner)
        return self._space, self._gp

    def forget_models(self) -> None:
        self._vae_id, self._space, self._gp = None, None, None

    # -- steps ---------------------------------------------------------------------------------
    def phase(self, step: int) -> str:
        return ("data", "vae", "hyperband")[step] if step < 3 else "inference"

    def run_phase(self, phase: str, state: dict) -> None:
        if phase == "data":
            self._load(state)
        elif phase == "vae":
            self._models(state)
            self._progress(f"StructureAwareVAE trained: {json.dumps(state['vae'])}")
        elif phase == "hyperband":
            self._hyperband(state)
        else:
            self._invbo_iteration(state)

    def _load(self, state: dict) -> None:
        config, ev = self.config, self.evaluation
        if config.mode == "grid":
            inputs = config.load_inputs(self.artifacts)
            state["instructions"] = inputs["instructions_artifact"]
            sets = inputs["exemplar_sets_artifact"]
            pool: dict[tuple[str, str], int] = {}
            for s in sets:
                for e in s:
                    pool.setdefault((e["question"], e["answer"]), len(pool))
            state["pool"] = [{"question": q, "answer": a} for q, a in pool]
            state["exemplar_sets"] = [[pool[(e["question"], e["answer"])] for e in s] for s in sets]
            state["pairs"] = [[i, ids] for i in range(len(state["instructions"])) for ids in state["exemplar_sets"]]
            self._progress(
                f"grid: {len(state['instructions'])} instructions x {len(sets)} exemplar sets "
                f"({len(state['pool'])} distinct exemplars) = {len(state['pairs'])} prompts"
            )
            return
        if config.use_ape:
            cache = self.state_dir / "ape_instructions_lipo_e.json"
            state["instructions"] = generate_pool(
                self.llm,
                config.ape.num_instructions,
                cache,
                config.ape.batch_size,
                config.ape.max_tokens,
                config.ape.max_length,
                ev.seed,
                self._progress,
            )
        else:
            state["instructions"] = config.load_inputs(self.artifacts)["instructions_artifact"]
        if len(state["instructions"]) < 2:
            raise ValueError(f"LIPO-E needs at least 2 instructions, got {len(state['instructions'])}")
        pool = self._pool(state)
        self._progress(
            f"{len(state['instructions'])} instructions; exemplar pool {len(pool)} Q/A pairs "
            f"({ev.dataset} {config.pool_split()})"
        )

    def _evaluate(self, state: dict, pair: int, fidelity: int) -> float:
        """Error rate of pair `pair` on the first `fidelity` validation questions (llm_eval extends
        a lower fidelity of the same pair), recorded as a candidate and an evaluation."""
        instruction, ids = self._space.pairs[pair]
        exemplars = tuple(Exemplar(**self._pool(state)[i]) for i in ids)
        request = self.evaluation.request(state["instructions"][instruction], fidelity, exemplars=exemplars)
        result = self.llm.evaluate(request)
        comparable = fidelity == self.nvalid()
        self.record(state, request.instruction, result.accuracy, result.num_evaluated, comparable, ids)
        state["evaluations"].append([pair, result.num_evaluated, 1.0 - result.accuracy])
        return 1.0 - result.accuracy

    def _hyperband(self, state: dict) -> None:
        config = self.config
        space, gp = self._models(state)
        schedule = HyperbandSchedule(self.nvalid(), config.hyperband.bmin, config.hyperband.eta)
        proposer = JointProposer(
            gp,
            config.hyperband.random_interleaving_prob,
            config.mode == "grid",
            len(state["instructions"]),
            len(self._pool(state)),
            config.num_slots,
            config.min_exemplars,
            config.acqf.candidate_instructions,
            config.acqf.exemplar_steps,
            config.acqf.exemplar_restarts,
            self.evaluation.seed,
            self._scorer(state, gp) if config.use_scorer else None,
        )
        state["evaluations"] = []
        history: list[Evaluation] = []

        self._progress(f"Hyperband: nvalid {schedule.nvalid}, smax {schedule.smax}, B {schedule.budget}")
        for s in schedule.brackets():
            run_bracket(
                schedule,
                s,
                len(space.pairs) if config.mode == "grid" else len(state["instructions"]),
                lambda pair, fidelity: self._evaluate(state, pair, fidelity),
                proposer,
                history,
                random.Random(self.evaluation.seed * 1_000_003 + s),
                lambda stage, n, b, s=s: self._progress(f"bracket s={s} stage {stage}: {n} prompts x {b} questions"),
            )
        state["pairs"] = [[i, list(ids)] for i, ids in space.pairs]  # the proposals' new pairs
        state["scorer"] = [] if proposer.scorer is None else proposer.scorer.trainings
        best = incumbent(history, schedule.nvalid)
        instruction, ids = space.pairs[best.index]
        state["hyperband"] = {
            "best_instruction": state["instructions"][instruction],
            "best_exemplar_ids": list(ids),
            "best_error": best.error,
            "nvalid": schedule.nvalid,
            "smax": schedule.smax,
            "budget": schedule.budget,
            "evaluations": len(history),
            "unique_prompts": len({e.index for e in history}),
            "gp_fits": gp.fits,
            "evaluations_by_fidelity": {
                str(b): sum(e.fidelity == b for e in history) for b in sorted({e.fidelity for e in history})
            },
        }

    def _realize(self, state: dict, z: np.ndarray) -> tuple[str, list[int], float] | None:
        """The prompt z_joint decodes to and the cosine of its instruction's embedding to z's decoded
        one. Standard: the decoder service inverts the embedding (its cosine), the slot decoder
        gives the exemplars. Grid: the nearest grid pair (in z_joint) not yet measured at full
        fidelity; None when every pair is."""
        space, surrogate = self._space, self.models.surrogate
        embeddings, sets = surrogate.decode_joint(space.vae_id, np.asarray([z]))
        if self.config.mode == "grid":
            measured = {row[0] for row in state["evaluations"] if row[1] == self.nvalid()}
            open_pairs = [i for i in range(len(space.pairs)) if i not in measured]
            if not open_pairs:
                return None
            nearest = open_pairs[int(np.argmin(np.linalg.norm(space.z[open_pairs] - z, axis=1)))]
            instruction, ids = space.pairs[nearest]
            text = state["instructions"][instruction]
            target = np.asarray(self._encode([text]))[0]
            cosine = float(embeddings[0] @ target / max(np.linalg.norm(embeddings[0]) * np.linalg.norm(target), 1e-12))
            return text, list(ids), cosine
        texts, usage = self.models.decoder.invert(
            np.asarray(embeddings, dtype=np.float32),
            state["instructions"],
            self.config.decoding.decoder_steps,
            self.config.decoding.vec2text_beam,
        )
        self.llm.usage.add(usage)
        return texts[0][0], list(sets[0]), float(texts[0][1])

    def _invbo_iteration(self, state: dict) -> None:
        """One InvBO step: optimise the acquisition over z_joint, realise it as a prompt (resampled
        at latent_noise_scale around z while the realisation's cosine is under
        cosine_sim_threshold, at most MAX_RESAMPLES times), evaluate it at full fidelity."""
        config = self.config
        space, gp = self._models(state)
        surrogate, iteration = self.models.surrogate, len(state["inference"]) + 1
        before = self.winner(state)
        model_id = gp.model_for([Evaluation(*row) for row in state["evaluations"]], min_points=2)
        if model_id is None:
            raise ValueError("InvBO needs at least 2 evaluated prompts for the GP")
        z, value = surrogate.optimize_joint(model_id, config.acqf.config(), self.evaluation.seed + iteration)
        span = np.maximum(np.ptp(space.z, axis=0), 1e-6)
        rng = np.random.default_rng(self.evaluation.seed * 1_000_003 + iteration)
        entry = {"iteration": iteration, "acquisition": value, "rejected": 0, "evaluated": False}
        entry["incumbent_error_before"] = None if before is None else 1.0 - before["score"]
        for attempt in range(MAX_RESAMPLES + 1):
            realized = self._realize(state, z)
            if realized is None:
                entry["reason"] = "every grid pair is measured at full fidelity"
                break
            text, ids, cosine = realized
            entry.update(instruction=text, exemplar_ids=ids, decoder_cosine=cosine)
            if cosine >= config.cosine_sim_threshold:
                break
            entry["rejected"] += 1
            if attempt < MAX_RESAMPLES:
                z = z + config.latent_noise_scale * span * rng.standard_normal(len(z))
        else:
            entry["reason"] = (
                f"{entry['rejected']} realisations under cosine_sim_threshold {config.cosine_sim_threshold}"
            )
        if "reason" in entry:
            state["inference"].append(entry)
            self._progress(f"InvBO iteration {iteration}: nothing evaluated ({entry['reason']})")
            return
        if text not in state["instructions"]:
            state["instructions"].append(text)
        pair = space.add([(state["instructions"].index(text), ids)])[0]
        state["pairs"] = [[i, list(ids)] for i, ids in space.pairs]
        mean, variance = surrogate.predict(model_id, space.z[[pair]])
        error = self._evaluate(state, pair, self.nvalid())
        entry.update(
            evaluated=True,
            latent_gap=float(np.linalg.norm((space.z[pair] - z) / span) / np.sqrt(len(z))),
            predicted_error=float(mean[0]),
            predicted_std=float(np.sqrt(max(variance[0], 0.0))),
            actual_error=error,
        )
        state["inference"].append(entry)
        self._progress(
            f"InvBO iteration {iteration}: {config.acqf.acquisition} {value:.3f}, realised at cosine {cosine:.3f} "
            f"({entry['rejected']} rejected), latent gap {entry['latent_gap']:.3f}, {len(ids)} exemplars, "
            f"predicted error {entry['predicted_error']:.3f}, actual {error:.3f}:\n{text}"
        )

    def _scorer(self, state: dict, gp: JointGp) -> Scorer:
        config = self.config.scorer_config(self.evaluation.seed)
        return Scorer(gp, self._pool_vectors(state), config, len(state["instructions"]), self.owner)

    # -- results -------------------------------------------------------------------------------
    def report(self, state: dict) -> dict:
        """Results JSON in LIPO's style, plus the winner's exemplar texts."""
        hyperband = state.get("hyperband")
        if hyperband is not None:
            hyperband = {**hyperband, "llm_calls": state["calls"].get("hyperband", 0)}
        inference = None
        evaluated = [e for e in state["inference"] if e.get("evaluated", True)]  # older checkpoints: all were
        if state["inference"]:
            best = min(evaluated, key=lambda e: e["actual_error"]) if evaluated else {}
            inference = {
                "best_instruction": best.get("instruction"),
                "best_exemplar_ids": best.get("exemplar_ids"),
                "best_error": best.get("actual_error"),
                "iterations": len(state["inference"]),
                "evaluated": len(evaluated),
                "rejected": sum(e.get("rejected", 0) for e in state["inference"]),
                "llm_calls": state["calls"].get("inference", 0),
                "history": state["inference"],
            }
        top = self.winner(state)
        return {
            "timestamp": state["timestamp"],
            "config": self.config.as_fields(),
            "vae_quality_metrics": state.get("vae"),
            "scorer": state.get("scorer") or None,
            "hyperband": hyperband,
            "inference": inference,
            "winner": None
            if top is None
            else {
                "instruction": top["prompt"],
                "exemplars": [dataclasses.asdict(e) for e in top["exemplars"]],
                "exemplar_ids": top["exemplar_ids"],
                "exemplar_set_index": state["exemplar_sets"].index(top["exemplar_ids"])
                if top["exemplar_ids"] in state["exemplar_sets"]
                else None,
                "validation_accuracy": top["score"],
                "questions": top["n"],
            },
            "exemplar_pool": {
                "size": len(self._pool(state)),
                "split": None if self.config.mode == "grid" else self.config.pool_split(),
            },
            "total_llm_calls": sum(state["calls"].values()) + (state.get("held_out") or {}).get("llm_calls", 0),
            "gpu_memory_peak_bytes": self.gpu_memory_peak(),
        }
