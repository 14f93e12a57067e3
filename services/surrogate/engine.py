"""The surrogate service's domain API over the model registry: VAE training, GP fits, acquisition
optimisation, latent decoding and inversion, and the GPs of errors that guide EcoFlow's flows.
The gRPC servicer and in-process callers (bench, unit tests) use this class; `SurrogateClient`
mirrors its methods over gRPC."""

from __future__ import annotations

import logging

import numpy as np
import torch

from services.surrogate.acquisition import latent_bounds
from services.surrogate.core import ExactGP, ModelRegistry, SonarGPSurrogate, Surrogate
from services.surrogate.deep_kernel import DeepKernelSurrogate
from services.surrogate.joint import (
    JointPromptGP,
    StructureAwareVAE,
    optimize_joint,
    propose_exemplars,
    train_joint_vae,
)
from services.surrogate.scorer import ExemplarScorer, select, train_scorer
from services.surrogate.types import (
    AcquisitionConfig,
    FitResult,
    GpTraining,
    InversionConfig,
    JointGpConfig,
    JointVaeConfig,
    JointVaeResult,
    LatentPoint,
    ScorerConfig,
    ScorerTraining,
    VaeConfig,
    VaeResult,
)
from services.surrogate.vae import InstructionVAE, train_vae, vae_quality

log = logging.getLogger(__name__)


def _matrix(x, field: str, cols: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or (cols is not None and x.shape[1] != cols):
        raise ValueError(f"{field} must have shape [n, {cols or 'd'}], got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{field} must be finite")
    return x


class SurrogateEngine:
    """Trains and serves models stored by id (see the module docstring)."""

    def __init__(self, registry: ModelRegistry | None = None):
        self.registry = registry or ModelRegistry()

    def train_vae(self, embeddings, config: VaeConfig | None = None, owner: str = "") -> VaeResult:
        """Train an InstructionVAE, stored for `owner` (the run that frees it)."""
        config = config or VaeConfig()
        x = torch.as_tensor(_matrix(embeddings, "embeddings"))
        if x.shape[0] < 2:
            raise ValueError(f"embeddings needs at least 2 rows, got {x.shape[0]}")
        vae, training = train_vae(
            x, config, progress=lambda e, r, k: log.info("vae epoch %d recon %.4f kl %.3f", e, r, k)
        )
        quality = vae_quality(vae, x)
        log.info("vae trained: %s quality %s", training, quality)
        return VaeResult(
            self.registry.add(vae, owner),
            training.epochs_trained,
            training.final_recon_loss,
            training.final_kl_loss,
            training.early_stopped,
            training.best_val_recon_loss,
            quality,
        )

    def fit(
        self,
        train_x,
        train_y,
        vae_id: str = "",
        minimize: bool = False,
        training: GpTraining | None = None,
        owner: str = "",
    ):
        """Exact GP on train_x, or the deep-kernel GP on the latents of VAE `vae_id`; stored for `owner`."""
        y = np.asarray(train_y, dtype=np.float64)
        if vae_id:
            vae = self.registry.get(vae_id, InstructionVAE, "vae_id")
            model = DeepKernelSurrogate(
                vae, _matrix(train_x, "train_x", vae.input_dim), y, training or GpTraining(), minimize
            )
            return FitResult(self.registry.add(model, owner), -model.final_loss, model.epochs_trained)
        x = _matrix(train_x, "train_x").astype(np.float64)
        model = SonarGPSurrogate(x, y) if minimize else ExactGP(x, y)  # errors over embeddings: EcoFlow's GP
        return FitResult(self.registry.add(model, owner), model.mll, 0)

    def _deep(self, model_id: str) -> DeepKernelSurrogate:
        model = self.registry.get(model_id, Surrogate)
        if not isinstance(model, DeepKernelSurrogate):
            raise ValueError(
                f"model_id {model_id!r} is an exact GP; this call needs a deep-kernel GP (fit with vae_id)"
            )
        return model

    def update(self, model_id: str, x, y, training: GpTraining | None = None) -> tuple[int, int]:
        """Add observations and retrain; returns (observations, epochs run)."""
        training = training or GpTraining.for_retrain()
        model = self._deep(model_id)
        model.add_observations(_matrix(x, "x", model.vae.input_dim), y, training)
        self.registry.resized(model_id)
        return len(model.targets), model.epochs_trained

    def predict(self, model_id: str, x) -> tuple[np.ndarray, np.ndarray]:
        return self.registry.get(model_id, Surrogate).predict(_matrix(x, "x"))

    def log_ei(self, model_id: str, x, best_f: float | None = None) -> np.ndarray:
        return self.registry.get(model_id, Surrogate).log_ei(_matrix(x, "x"), best_f)

    def ucb(self, model_id: str, x, beta: float) -> np.ndarray:
        return self.registry.get(model_id, Surrogate).ucb(_matrix(x, "x"), beta)

    def optimize(self, model_id: str, config: AcquisitionConfig | None = None, best_f=None) -> LatentPoint:
        config = config or AcquisitionConfig()
        if config.acquisition != "logei" or config.distance_weight:
            raise ValueError("acquisition 'ucb' and distance_weight are LIPO-E's (OptimizeJoint); LIPO's is LogEI")
        model = self._deep(model_id)
        latent, value = model.optimize(config, best_f)
        return LatentPoint(latent.tolist(), model.decode_unit(latent[None])[0].tolist(), value)

    def decode(self, model_id: str, latents) -> np.ndarray:
        model = self._deep(model_id)
        return model.decode_unit(_matrix(latents, "latents", model.vae.latent_dim))

    def invert(self, model_id: str, target, latent_init, config: InversionConfig | None = None) -> LatentPoint:
        config = config or InversionConfig()
        model = self._deep(model_id)
        target = _matrix(np.reshape(target, (1, -1)), "target", model.vae.input_dim)[0]
        init = _matrix(np.reshape(latent_init, (1, -1)), "latent_init", model.vae.latent_dim)[0]
        latent, loss, steps = model.invert(target, init, config)
        return LatentPoint(latent.tolist(), model.decode_unit(latent[None])[0].tolist(), loss, steps)

    # LIPO-E (seed 001): the StructureAwareVAE over (instruction, exemplar set) and the JointPromptGP.

    def train_joint_vae(
        self, instructions, pool, config: JointVaeConfig | None = None, owner: str = ""
    ) -> JointVaeResult:
        """Train a StructureAwareVAE on instruction embeddings [n, d] and the exemplar pool's [P, d]."""
        config = config or JointVaeConfig()
        x = torch.as_tensor(_matrix(instructions, "instructions"))
        pool = torch.as_tensor(_matrix(pool, "pool", x.shape[1]))
        if len(x) < 1 or len(pool) < 1:
            raise ValueError("instructions and pool must not be empty")
        vae, result = train_joint_vae(
            x, pool, config, progress=lambda e, loss: log.info("joint vae epoch %d loss %.4f", e, loss)
        )
        result.vae_id = self.registry.add(vae, owner)
        log.info("joint vae trained: %s", result)
        return result

    def _joint_vae(self, vae_id: str) -> StructureAwareVAE:
        return self.registry.get(vae_id, StructureAwareVAE, "vae_id")

    def _exemplar_sets(self, vae: StructureAwareVAE, sets) -> list[list[int]]:
        sets = [list(s) for s in sets]
        for row, members in enumerate(sets):
            bad = [i for i in members if not 0 <= i < len(vae.pool)]
            if bad or len(set(members)) != len(members) or len(members) > vae.num_slots:
                raise ValueError(
                    f"exemplar_sets[{row}] must hold at most {vae.num_slots} distinct pool ids in"
                    f" [0, {len(vae.pool)}), got {members}"
                )
        return sets

    def encode_joint(self, vae_id: str, instructions, exemplar_sets) -> np.ndarray:
        """z_joint [n, inst_dim + ex_dim] of (instruction embedding, exemplar id set) pairs."""
        vae = self._joint_vae(vae_id)
        x = _matrix(instructions, "instructions", vae.input_dim)
        sets = self._exemplar_sets(vae, exemplar_sets)
        if len(sets) != len(x):
            raise ValueError(f"exemplar_sets has {len(sets)} sets but instructions has {len(x)} rows")
        with torch.no_grad():
            return vae.embed(torch.as_tensor(x), sets).numpy()

    def decode_joint(self, vae_id: str, z) -> tuple[np.ndarray, list[list[int]]]:
        """(instruction embeddings [n, d], exemplar id sets) decoded from z_joint [n, joint_dim]."""
        vae = self._joint_vae(vae_id)
        z = torch.as_tensor(_matrix(z, "z", vae.joint_dim))
        with torch.no_grad():
            return vae.decode_instruction(z).numpy(), vae.decode_exemplars(z)

    def fit_joint(self, z, errors, fidelities, config: JointGpConfig | None = None, owner: str = "") -> FitResult:
        """A JointPromptGP on observations at any fidelity (error rate, questions)."""
        model = JointPromptGP(_matrix(z, "z"), errors, fidelities, config or JointGpConfig())
        return FitResult(self.registry.add(model, owner), model.mll, model.epochs_trained, model.lengthscale_ratio())

    def _joint_gp(self, model_id: str) -> JointPromptGP:
        return self.registry.get(model_id, JointPromptGP)

    def propose_exemplars(
        self, vae_id: str, model_id: str, instructions, steps: int = 20, restarts: int = 5, seed: int = 0
    ) -> list[tuple[list[int], float]]:
        """Seed 001's stage 2: per instruction, z_ex optimised on LogEI and decoded; (exemplar ids, LogEI)."""
        if steps <= 0 or restarts <= 0:
            raise ValueError("steps and restarts must be positive")
        vae, gp = self._joint_vae(vae_id), self._joint_gp(model_id)
        x = torch.as_tensor(_matrix(instructions, "instructions", vae.input_dim))
        return propose_exemplars(vae, gp, x, steps, restarts, seed)

    def optimize_joint(self, model_id: str, config: AcquisitionConfig | None = None, seed: int = 0):
        """InvBO's z_joint: the config's acquisition (LogEI or UCB, less the distance penalty)
        maximised in the box of the GP's observed latents (widened by latent_margin); returns
        (z [width], acquisition value)."""
        config = config or AcquisitionConfig()
        gp = self._joint_gp(model_id)
        bounds = latent_bounds(gp.x, config.latent_margin)
        return optimize_joint(gp, bounds, config, seed)

    # BOLT (seed 004): the Set Transformer exemplar scorer.

    def train_scorer(
        self, instructions, pool, relevance, config: ScorerConfig | None = None, owner: str = ""
    ) -> ScorerTraining:
        """Fit an ExemplarScorer (ListMLE) on relevance [n, P] of the pool [P, d] for instructions [n, d]."""
        x = _matrix(instructions, "instructions")
        pool = _matrix(pool, "pool", x.shape[1])
        relevance = np.asarray(relevance, dtype=np.float32)
        if relevance.ndim != 2 or relevance.shape[1] != len(pool) or np.isinf(relevance).any():
            raise ValueError(f"relevance must have shape [n, {len(pool)}] with finite values or NaN (unknown)")
        if np.isnan(relevance).all(axis=1).any():
            raise ValueError("every relevance row needs at least one known value")
        if len(x) < 1 or len(pool) < 2 or len(relevance) != len(x):
            raise ValueError(f"relevance must have shape [{len(x)}, {len(pool)}] and the pool at least 2 rows")
        model, result = train_scorer(x, pool, relevance, config or ScorerConfig())
        result.scorer_id = self.registry.add(model, owner)
        return result

    def score_exemplars(self, scorer_id: str, instructions, k: int = 0, mmr_lambda: float | None = None):
        """(scores [m, P], k exemplar ids per instruction chosen by MMR) from a stored scorer."""
        model = self.registry.get(scorer_id, ExemplarScorer, "scorer_id")
        if not 0 <= k <= len(model.pool):
            raise ValueError(f"k must be in [0, {len(model.pool)}] (the pool's size), got {k}")
        x = _matrix(instructions, "instructions", model.pool.shape[1])
        if not len(x):
            raise ValueError("instructions must have at least one row")
        return select(model, x, k, mmr_lambda)

    def error_gp(self, model_id: str) -> SonarGPSurrogate:
        """The exact GP of errors `model_id` names (EcoFlow's guide: FitModel with minimize, no
        vae_id); NotFoundError or ValueError naming model_id."""
        gp = self.registry.get(model_id, Surrogate, "model_id")
        if not isinstance(gp, SonarGPSurrogate):
            raise ValueError(f"model_id {model_id!r} is not an exact GP of errors (FitModel with minimize, no vae_id)")
        return gp

    def delete(self, model_id: str) -> None:
        self.registry.delete(model_id)

    def delete_owned(self, owner: str) -> int:
        """Delete every model (VAEs and GPs) `owner` made; returns how many."""
        if not owner:
            raise ValueError("owner must be set")
        return self.registry.delete_owned(owner)
