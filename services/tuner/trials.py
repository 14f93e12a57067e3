"""One BOLT trial per phase, run through the model services' clients (the encoder, the surrogate
and, for the inference phase, a whole LIPO-E run on the optimizer over llm_eval's cache).

- vae: a StructureAwareVAE on 90% of the grid's instructions plus an instruction corpus (the APE
  pool) with the grid's exemplar pool; on the other 10%: reconstruction cosine / MSE /
  percentile-10 cosine, retrieval accuracy@8 among all corpus instructions, and a Lipschitz
  estimate of the decoder; KL on held-out pairs.
- scorer: the Set Transformer scorer trained on the grid's relevance labels of some
  instructions and measured on the others (k folds): NDCG@8 of its MMR selection (so
  mmr_lambda counts), MRR of its scores, ListMLE of the top 8 (per position), the selections'
  diversity and variance.
- gp: the JointPromptGP on the VAE's z_joint of half the grid's pairs (recorded errors on all
  1319 GSM8K test questions), predicting the other half: Spearman, RMSE, calibration, NLL and
  the instruction/exemplar lengthscale ratio.
- inference: LIPO-E in grid mode with every BOLT field but the scorer (grid mode has no pool to
  score; Hyperband, then InvBO realised on the grid): optimisation and end-to-end metrics.
  final_accuracy is the winner's full-fidelity validation accuracy; its held-out score is
  reported beside it and never tuned on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time

import numpy as np
from promptopt.operations.v1 import operations_pb2
from promptopt.optimizer.v1 import optimizer_pb2

from services.common.artifact_client import ArtifactClient
from services.common.relevance import relevance_from_evaluations
from services.surrogate.types import JointGpConfig, JointVaeConfig, ScorerConfig
from services.tuner import metrics
from services.tuner.inputs import TuningInputs
from services.tuner.settings import TuningSettings

FOLDS = 3
SELECTED = 8  # exemplars MMR selects per held-out instruction (NDCG@8 is of that order)
GP_TRAIN_FRACTION = 0.5
LIPSCHITZ_STEP = 0.05  # of each latent dimension's spread
VAE_HELD_OUT = 0.1  # share of the corpus the VAE metrics are measured on (not trained on)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A recorded grid: instructions x exemplar sets with their error rates on n questions."""

    instructions: list[str]
    sets: list[list[int]]  # ids into `pool`
    pool: list[str]  # distinct exemplars as "Q: ...\nA: ..."
    errors: np.ndarray  # [instructions, sets]
    questions: np.ndarray  # [instructions, sets]

    @classmethod
    def of(cls, inputs: TuningInputs) -> Grid:
        """The grid of a tuning's inputs (checked to cover every instruction x exemplar set)."""
        index: dict[tuple[str, str], int] = {}
        sets = [[index.setdefault((e["question"], e["answer"]), len(index)) for e in s] for s in inputs.exemplar_sets]
        errors = np.full((len(inputs.instructions), len(sets)), np.nan)
        questions = np.zeros_like(errors)
        for row in inputs.grid:
            errors[row["instruction_id"], row["exemplar_set_id"]] = row["error_rate"]
            questions[row["instruction_id"], row["exemplar_set_id"]] = row["n"]
        pool = [f"Q: {q}\nA: {a}" for q, a in index]
        return cls(list(inputs.instructions), sets, pool, errors, questions)


class TrialRunner:
    """Runs one trial of a phase on a pipeline config (LIPO-E fields) and returns its metrics."""

    def __init__(self, settings: TuningSettings, inputs: TuningInputs, encoder, surrogate, optimizer, owner: str):
        self.settings, self.encoder, self.surrogate, self.optimizer = settings, encoder, surrogate, optimizer
        self.owner, self.inputs = owner, inputs
        self.grid = Grid.of(inputs)
        self._embeddings: dict[tuple[str, ...], np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        key = tuple(texts)
        if key not in self._embeddings:
            self._embeddings[key] = np.asarray(self.encoder.encode(list(texts)), dtype=np.float32)
        return self._embeddings[key]

    def run(self, phase: str, config: dict, seed: int) -> dict:
        started = time.monotonic()
        try:
            values = getattr(self, f"_{phase}")(config, seed)
        finally:
            self.surrogate.delete_owned(self.owner)
        if phase == "inference":
            values["wall_clock_time"] = time.monotonic() - started
        return values

    # -- VAE -------------------------------------------------------------------------------------
    def vae_config(self, config: dict, seed: int) -> JointVaeConfig:
        budget = self.settings.budget
        epochs = config["vae_epochs"] if not budget.vae_epochs_cap else min(config["vae_epochs"], budget.vae_epochs_cap)
        return JointVaeConfig(
            beta=config["vae_beta"],
            epochs=epochs,
            patience=budget.vae_patience,
            lr=config["vae_lr"],
            num_slots=max(len(s) for s in self.grid.sets),
            samples=budget.vae_samples,
            inst_dim=config["instruction_latent_dim"],
            ex_dim=config["exemplar_latent_dim"],
            mse_weight=config["vae_mse_weight"],
            seed=seed,
        )

    def _corpus(self) -> list[str]:
        known = set(self.grid.instructions)
        extra = [t for t in self.inputs.corpus if t not in known][: self.settings.budget.corpus_size]
        return self.grid.instructions + extra

    def _vae(self, config: dict, seed: int) -> dict:
        """Trained on 90% of the corpus; measured on the other 10% (retrieval among all of it)."""
        texts = self._corpus()
        x, pool = self.embed(texts), self.embed(self.grid.pool)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(texts))
        held = order[: max(2, round(VAE_HELD_OUT * len(texts)))]
        train = np.setdiff1d(order, held)
        vae = self.surrogate.train_joint_vae(x[train], pool, self.vae_config(config, seed), self.owner)
        sets = [self.grid.sets[i % len(self.grid.sets)] for i in held]
        z = np.asarray(self.surrogate.encode_joint(vae.vae_id, x[held], sets))
        decoded, _ = self.surrogate.decode_joint(vae.vae_id, z)
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        cosines = metrics.cosine_rows(decoded, unit[held])
        step = LIPSCHITZ_STEP * np.maximum(z.std(axis=0), 1e-6) * rng.standard_normal(z.shape)
        step[:, config["instruction_latent_dim"] :] = 0  # the instruction decoder reads z_inst only
        decoded_near, _ = self.surrogate.decode_joint(vae.vae_id, z + step)
        return {
            "reconstruction_cosine": float(cosines.mean()),
            "reconstruction_mse": float(np.mean(np.sum((decoded - unit[held]) ** 2, axis=1))),
            "kl_divergence": vae.kl_divergence,
            "retrieval_accuracy_at_8": metrics.retrieval_at_k(decoded, unit, 8, own=held),
            "lipschitz_constant": metrics.lipschitz_estimate(z, z + step, decoded, decoded_near),
            "percentile10_cosine": float(np.percentile(cosines, 10)),
            "vae_epochs_trained": vae.epochs_trained,
            "corpus_instructions": len(texts),
            "held_out_instructions": len(held),
        }

    # -- scorer ----------------------------------------------------------------------------------
    def _scorer(self, config: dict, seed: int) -> dict:
        grid = self.grid
        pairs = [(i, s) for i in range(len(grid.instructions)) for s in grid.sets]
        accuracies = [1.0 - e for e in grid.errors.reshape(-1)]
        relevance = relevance_from_evaluations(len(grid.instructions), len(grid.pool), pairs, accuracies)
        x, pool = self.embed(grid.instructions), self.embed(grid.pool)
        scorer = ScorerConfig(
            hidden=config["set_transformer_hidden"],
            heads=config["set_transformer_heads"],
            num_inducing=config["num_inducing_points"],
            selection_weight=config["selection_weight"],
            mmr_lambda=config["mmr_lambda"],
            epochs=self.settings.budget.scorer_epochs,
            seed=seed,
        )
        order = np.random.default_rng(seed).permutation(len(grid.instructions))
        scores, held_out, selections = [], [], []
        for fold in np.array_split(order, FOLDS):
            train = np.setdiff1d(order, fold)
            trained = self.surrogate.train_scorer(x[train], pool, relevance[train], scorer, self.owner)
            fold_scores, selected = self.surrogate.score_exemplars(trained.scorer_id, x[fold], SELECTED)
            scores.append(np.asarray(fold_scores))
            held_out.append(relevance[fold])
            selections += selected
        scores, held_out = np.concatenate(scores), np.concatenate(held_out)
        return {
            "ndcg_at_8": metrics.ndcg_of_order(selections, held_out, SELECTED),
            "mrr": metrics.mean_reciprocal_rank(scores, held_out),
            "selection_loss": metrics.list_mle(scores, held_out, k=8),
            "exemplar_diversity": float(np.mean([metrics.exemplar_diversity(pool, s) for s in selections])),
            "exemplar_variance": metrics.selection_variance(selections, len(grid.pool)),
        }

    # -- GP --------------------------------------------------------------------------------------
    def _gp(self, config: dict, seed: int) -> dict:
        grid = self.grid
        x, pool = self.embed(self._corpus()), self.embed(grid.pool)
        vae = self.surrogate.train_joint_vae(x, pool, self.vae_config(config, seed), self.owner)
        pairs = [(i, e) for i in range(len(grid.instructions)) for e in range(len(grid.sets))]
        z = np.asarray(
            self.surrogate.encode_joint(vae.vae_id, x[[i for i, _ in pairs]], [grid.sets[e] for _, e in pairs])
        )
        errors = np.asarray([grid.errors[p] for p in pairs])
        questions = np.asarray([grid.questions[p] for p in pairs])
        order = np.random.default_rng(seed).permutation(len(pairs))
        cut = int(round(GP_TRAIN_FRACTION * len(pairs)))
        train, test = order[:cut], order[cut:]
        gp_config = JointGpConfig(
            epochs=self.settings.budget.gp_epochs,
            lr=config["gp_lr"],
            seed=seed,
            inst_dim=config["instruction_latent_dim"],
            deep_kernel=config["use_deep_kernel"],
        )
        fit = self.surrogate.fit_joint(z[train], errors[train], questions[train], gp_config, self.owner)
        mean, variance = self.surrogate.predict(fit.model_id, z[test])
        mean = np.asarray(mean)
        # a new observation's spread: the latent error's variance plus its binomial noise on n questions
        p = np.clip(mean, 0.5 / questions[test], 1 - 0.5 / questions[test])
        variance = np.asarray(variance) + p * (1 - p) / questions[test]
        return {
            "spearman_correlation": metrics.spearman(mean, errors[test]),
            "rmse": float(np.sqrt(np.mean((mean - errors[test]) ** 2))),
            "calibration_error": metrics.calibration_error(errors[test], mean, np.sqrt(variance)),
            "lengthscale_ratio": fit.lengthscale_ratio,
            "nll_heldout": metrics.gaussian_nll(errors[test], mean, variance),
        }

    # -- inference -------------------------------------------------------------------------------
    def grid_artifacts(self) -> dict:
        """The recorded grid's instructions and exemplar sets uploaded to the optimizer (the same
        content gives the same ids, so each trial may upload them again)."""
        grid = {"instructions": self.inputs.instructions, "exemplar_sets": self.inputs.exemplar_sets}
        with ArtifactClient(self.optimizer.config) as uploads:
            return {
                f"{kind}_artifact": uploads.put(kind, json.dumps(rows).encode(), f"tuning grid {kind}").artifact_id
                for kind, rows in grid.items()
            }

    def lipo_e_fields(self, config: dict, seed: int) -> dict:
        """The LIPO-E run the inference trial starts (grid mode, every BOLT field) but its uploaded
        grid (`grid_artifacts`)."""
        vae = self.vae_config(config, seed)
        tuned = {k: v for k, v in config.items() if k not in ("use_scorer",)}
        return {
            **tuned,
            "use_scorer": False,  # grid mode selects among the recorded sets: no pool to score
            "mode": "grid",
            "num_slots": vae.num_slots,
            "iterations": self.settings.budget.inference_iterations,
            "vae_epochs": vae.epochs,
            "vae_samples": vae.samples,
            "vae_patience": vae.patience,
            "gp_epochs": self.settings.budget.gp_epochs,
        }

    def _inference(self, config: dict, seed: int) -> dict:
        budget = self.settings.budget
        request = optimizer_pb2.StartRunRequest(
            lipo_e=optimizer_pb2.LipoEConfig(**self.lipo_e_fields(config, seed), **self.grid_artifacts()),
            evaluation=optimizer_pb2.EvaluationSettings(
                dataset="gsm8k",
                split=self.settings.split,
                fidelity=budget.fidelity,
                seed=seed,
                test_split=self.settings.test_split,
                test_fidelity=budget.test_fidelity,
            ),
            display_name=f"tuner {self.owner}",
        )
        run = self.optimizer.start(request)
        try:
            events = list(self.optimizer.watch(run.run_id))
        except BaseException:  # a failed or preempted trial leaves no run behind on the optimizer
            with contextlib.suppress(Exception):
                self.optimizer.cancel(run.run_id)
            raise
        run = self.optimizer.get(run.run_id)
        if run.state != operations_pb2.RUN_STATE_SUCCEEDED:
            raise RuntimeError(f"LIPO-E run {run.run_id} ended {operations_pb2.RunState.Name(run.state)}: {run.error}")
        return inference_metrics(events, run)


def inference_metrics(events, run) -> dict:
    """Optimisation and end-to-end metrics of a finished LIPO-E run (its events and record)."""
    result = next(e.result for e in reversed(events) if e.WhichOneof("event") == "result")
    report = json.loads(result.report_json)
    entries = (report.get("inference") or {}).get("history", [])
    evaluated = [e for e in entries if e["evaluated"]]
    attempts = sum(e["rejected"] for e in entries) + len(evaluated)
    improving = [
        e for e in evaluated if e["incumbent_error_before"] is None or e["actual_error"] < e["incumbent_error_before"]
    ]
    full = [1.0 - e.candidate.score for e in events if e.WhichOneof("event") == "candidate" and e.candidate.comparable]
    asked = run.usage.llm_calls + run.usage.cache_hits
    peak = report.get("gpu_memory_peak_bytes")  # summed over the services behind the run
    final = result.best_score  # the winner's full-fidelity validation accuracy: what the tuning selects on
    return {
        "system_gap": float(np.mean([e["latent_gap"] for e in evaluated])) if evaluated else None,
        "rejection_rate": sum(e["rejected"] for e in entries) / attempts if attempts else None,
        "improvement_rate": len(improving) / len(evaluated) if evaluated else None,
        "best_error_rate": 1.0 - result.best_score,
        "heldout_accuracy": result.held_out.test_score,  # reported, never tuned on
        "convergence_speed": metrics.convergence_speed(full) if full else None,
        "final_accuracy": final,
        "sample_efficiency": final / asked if asked else None,
        "gpu_memory_peak": None if peak is None else peak / 2**30,  # GiB; None: no service ran on GPU
        "llm_calls": run.usage.llm_calls,
        "cache_hits": run.usage.cache_hits,
        "lipo_e_run": run.run_id,
    }
