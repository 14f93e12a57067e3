"""The surrogate's contract types: VAE, GP, acquisition and inversion settings and results.

Torch-free: the optimizer builds and reads them; the surrogate core and client use them too.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class VaeConfig:
    """InstructionVAE training; defaults are seed 000's `vae_*` table. `val_fraction` of the rows
    is held out for early stopping on reconstruction loss."""

    latent_dim: int = 64
    hidden_dim: int = 256
    beta: float = 0.003
    epochs: int = 10000
    annealing_epochs: int = 500
    patience: int = 500
    lr: float = 3e-4
    eta_min: float = 1e-4
    batch_size: int = 64
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("latent_dim", "hidden_dim", "epochs", "patience", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"vae.{name} must be positive, got {getattr(self, name)}")
        if self.beta < 0 or self.annealing_epochs < 0:
            raise ValueError("vae.beta and vae.annealing_epochs must be >= 0")
        if self.lr <= 0 or self.eta_min < 0 or self.grad_clip <= 0:
            raise ValueError("vae.lr and vae.grad_clip must be positive, vae.eta_min >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"vae.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclasses.dataclass(frozen=True)
class GpTraining:
    """Deep-kernel GP fit (AdamW on -MLL, early stopping); defaults are seed 000's `gp_*`."""

    epochs: int = 10000
    lr: float = 0.01
    patience: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.epochs <= 0 or self.lr <= 0 or self.patience <= 0:
            raise ValueError("gp epochs, lr and patience must be positive")

    @classmethod
    def for_hyperband(cls, seed: int = 0) -> GpTraining:
        """The seed's fast refit during Hyperband: 3000 epochs, lr 0.01, patience 50."""
        return cls(epochs=3000, lr=0.01, patience=50, seed=seed)

    @classmethod
    def for_retrain(cls, seed: int = 0) -> GpTraining:
        """The seed's incremental retrain during inference: 500 epochs, lr 0.001, patience 10."""
        return cls(epochs=500, lr=0.001, patience=10, seed=seed)


ACQUISITIONS = ("logei", "ucb")


@dataclasses.dataclass(frozen=True)
class AcquisitionConfig:
    """`optimize_acqf` settings; defaults are seed 000's inference table."""

    num_restarts: int = 64
    raw_samples: int = 1024
    maxiter: int = 200
    batch_limit: int = 5
    latent_margin: float = 0.2
    acquisition: str = "logei"  # LIPO-E's InvBO: "logei" (seed 001) or "ucb" (BOLT, seed 004)
    ucb_beta: float = 8.0
    distance_weight: float = 0.0

    def __post_init__(self):
        if min(self.num_restarts, self.raw_samples, self.maxiter, self.batch_limit) <= 0:
            raise ValueError("num_restarts, raw_samples, maxiter and batch_limit must be positive")
        if self.raw_samples < self.num_restarts:  # BoTorch starts its restarts from the best raw samples
            raise ValueError(f"raw_samples ({self.raw_samples}) must be >= num_restarts ({self.num_restarts})")
        if self.latent_margin < 0:
            raise ValueError("latent_margin must be >= 0")
        if self.acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {self.acquisition!r}")
        if self.ucb_beta <= 0 or self.distance_weight < 0:
            raise ValueError("ucb_beta must be positive and distance_weight >= 0")


@dataclasses.dataclass(frozen=True)
class InversionConfig:
    """Latent inversion by Adam on the decoder cosine loss; seed 000's `inversion_*`."""

    n_steps: int = 100
    lr: float = 0.1
    convergence_threshold: float = 0.01

    def __post_init__(self):
        if self.n_steps <= 0 or self.lr <= 0 or self.convergence_threshold < 0:
            raise ValueError("inversion n_steps and lr must be positive, convergence_threshold >= 0")


@dataclasses.dataclass
class VaeResult:
    """A trained VAE's id, the seed's `vae_training` block and its `vae_quality_metrics`."""

    vae_id: str
    epochs_trained: int
    final_recon_loss: float
    final_kl_loss: float
    early_stopped: bool
    best_val_recon_loss: float
    quality: dict


@dataclasses.dataclass
class FitResult:
    model_id: str
    mll: float
    epochs_trained: int
    lengthscale_ratio: float = 0.0  # JointPromptGP: mean z_inst over mean z_ex lengthscale


@dataclasses.dataclass
class LatentPoint:
    """A unit-cube latent [k], its decoded embedding [d], and a score (LogEI or inversion loss)."""

    latent: list
    embedding: list
    value: float
    steps: int = 0


@dataclasses.dataclass(frozen=True)
class JointVaeConfig:
    """Seed 001: vae_beta 0.005, vae_epochs 50000, num_slots 8, min_exemplars 0. Not in the seed
    (LIPO's values): early stopping after `patience` epochs without a better training loss, and
    `samples` (instruction, random exemplar set) training pairs, drawn afresh every epoch. BOLT
    (seed 004) tunes the latent widths `inst_dim` and `ex_dim` and adds `mse_weight` x MSE to the
    instruction reconstruction loss (0 keeps seed 001's cosine loss alone)."""

    beta: float = 0.005
    epochs: int = 50000
    patience: int = 500
    lr: float = 1e-3
    batch_size: int = 64
    num_slots: int = 8
    min_exemplars: int = 0
    samples: int = 2000
    inst_dim: int = 16
    ex_dim: int = 16
    mse_weight: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.min_exemplars <= self.num_slots:
            raise ValueError(f"min_exemplars must be in [0, num_slots={self.num_slots}], got {self.min_exemplars}")
        for name in ("epochs", "batch_size", "num_slots", "samples", "patience", "inst_dim", "ex_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.beta < 0 or self.lr <= 0 or self.mse_weight < 0:
            raise ValueError("beta and mse_weight must be >= 0 and lr > 0")


@dataclasses.dataclass
class JointVaeResult:
    """A trained StructureAwareVAE: epochs run, its best epoch loss, and on held-out random pairs
    (instructions of the training pool with exemplar sets never drawn in training) the
    instruction reconstruction cosine and the F1 of the decoded exemplar sets."""

    epochs_trained: int
    final_loss: float
    inst_cosine: float
    exemplar_f1: float
    vae_id: str = ""
    kl_divergence: float = 0.0  # mean KL of the posterior to N(0, I) on the held-out pairs


@dataclasses.dataclass(frozen=True)
class JointGpConfig:
    """Seed 001: gp_epochs 1000, gp_lr 0.01, gp_patience 50; `product` False (one Matern over all
    32 dims) and `beta_smoothing` False (raw rates as targets, binomial noise p(1 - p)/n at the
    pooled rate p, no Beta prior) are ablations. `inst_dim` is where z_inst ends in z_joint (the
    VAE's); `deep_kernel` is BOLT's use_deep_kernel (an MLP before each kernel factor)."""

    epochs: int = 1000
    lr: float = 0.01
    patience: int = 50
    product: bool = True
    beta_smoothing: bool = True
    seed: int = 0
    inst_dim: int = 16
    deep_kernel: bool = False

    def __post_init__(self):
        if self.epochs <= 0 or self.patience <= 0 or self.lr <= 0 or self.inst_dim <= 0:
            raise ValueError("gp epochs, patience, lr and inst_dim must be positive")


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    """Seed 004's scorer parameters (tier 1: selection_weight, the weight of ListMLE beside a
    pointwise fit of the relevance, and mmr_lambda; tier 2: the Set Transformer's heads, hidden
    width and inducing points) and its training."""

    hidden: int = 128
    heads: int = 4
    num_inducing: int = 4
    selection_weight: float = 0.1
    mmr_lambda: float = 0.6
    epochs: int = 300
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.hidden <= 0 or self.heads <= 0 or self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a positive multiple of heads ({self.heads})")
        if self.num_inducing <= 0 or self.epochs <= 0 or self.lr <= 0:
            raise ValueError("num_inducing, epochs and lr must be positive")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if self.selection_weight <= 0:
            raise ValueError(f"selection_weight must be positive, got {self.selection_weight}")


@dataclasses.dataclass
class ScorerTraining:
    epochs_trained: int
    first_loss: float
    final_loss: float  # the ListMLE selection loss (unweighted) at the end of training
    scorer_id: str = ""
