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


@dataclasses.dataclass(frozen=True)
class AcquisitionConfig:
    """`optimize_acqf` settings; defaults are seed 000's inference table."""

    num_restarts: int = 64
    raw_samples: int = 1024
    maxiter: int = 200
    batch_limit: int = 5
    latent_margin: float = 0.2

    def __post_init__(self):
        if min(self.num_restarts, self.raw_samples, self.maxiter, self.batch_limit) <= 0:
            raise ValueError("num_restarts, raw_samples, maxiter and batch_limit must be positive")
        if self.latent_margin < 0:
            raise ValueError("latent_margin must be >= 0")


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
    `samples` (instruction, random exemplar set) training pairs, drawn afresh every epoch."""

    beta: float = 0.005
    epochs: int = 50000
    patience: int = 500
    lr: float = 1e-3
    batch_size: int = 64
    num_slots: int = 8
    min_exemplars: int = 0
    samples: int = 2000
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.min_exemplars <= self.num_slots:
            raise ValueError(f"min_exemplars must be in [0, num_slots={self.num_slots}], got {self.min_exemplars}")
        for name in ("epochs", "batch_size", "num_slots", "samples", "patience"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.beta < 0 or self.lr <= 0:
            raise ValueError("beta must be >= 0 and lr > 0")


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


@dataclasses.dataclass(frozen=True)
class JointGpConfig:
    """Seed 001: gp_epochs 1000, gp_lr 0.01, gp_patience 50; `product` False (one Matern over all
    32 dims) and `beta_smoothing` False (raw rates as targets, binomial noise p(1 - p)/n at the
    pooled rate p, no Beta prior) are ablations."""

    epochs: int = 1000
    lr: float = 0.01
    patience: int = 50
    product: bool = True
    beta_smoothing: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.epochs <= 0 or self.patience <= 0 or self.lr <= 0:
            raise ValueError("gp epochs, patience and lr must be positive")
