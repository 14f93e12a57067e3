"""Groups of settings several optimisers share, each declared once (help, bounds, debug value).

LIPO, LIPO-E and EcoFlow nest them with `nested(Group, ...)`, giving their own defaults only where
the seeds differ (`nested(ApePool, num_instructions=2000)` in LIPO-E). Defaults come from the
surrogate's own settings types where one exists (VAE, GP, acquisition, inversion, guidance), so a
seed default lives in one place. Where one algorithm has settings the others lack, the group is a
base shared by all and a subclass adds them (`InstructionVae` for LIPO, `JointVae` for LIPO-E), so
each proto message keeps only its own fields. Flat names (`vae_epochs`) are what runs store and the proto,
CLI and tuner use. The tuner's baseline reads LIPO-E's declarations.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.common.settings import Setting, SettingsGroup, setting
from services.flow.types import MAX_FLOW_STEPS, ODE_METHODS, ZERO_INIT_MODES, GuidanceSettings
from services.surrogate.types import ACQUISITIONS, AcquisitionConfig, GpTraining, InversionConfig, VaeConfig

# Shared alone: EcoFlow does not nest `Decoding`, its beam is `decoder_beam` with another default.
DECODER_STEPS = Setting(0, "decoder correction steps (0: the decoder's default)", low=0, high=100)


@dataclasses.dataclass(frozen=True)
class ApePool(SettingsGroup):
    """APE (seed 000): the instruction pool the generator LLM writes."""

    title: ClassVar[str] = "APE instruction pool"
    prefix: ClassVar[str] = "ape_"

    num_instructions: int = setting(
        1000, "instructions the generator LLM writes for the pool", low=1, debug=10, high=10000
    )
    batch_size: int = setting(10, "instructions asked for per generator call", low=1, high=100)
    max_tokens: int = setting(100, "max tokens of one generated instruction", low=1, high=1024)
    max_length: int = setting(500, "max characters of an instruction kept in the pool", low=1, high=4000)


@dataclasses.dataclass(frozen=True)
class Vae(SettingsGroup):
    """The VAE's training, as LIPO and LIPO-E share it."""

    title: ClassVar[str] = "VAE"
    prefix: ClassVar[str] = "vae_"

    beta: float = setting(VaeConfig.beta, "KL weight of the VAE loss", low=0.0, high=10.0)
    epochs: int = setting(VaeConfig.epochs, "max VAE training epochs", low=1, high=100000)
    patience: int = setting(VaeConfig.patience, "epochs without improvement before early stopping", low=1, high=100000)
    lr: float = setting(VaeConfig.lr, "VAE learning rate", above=0.0, high=1.0)
    batch_size: int = setting(VaeConfig.batch_size, "VAE minibatch size", low=1, high=4096)


@dataclasses.dataclass(frozen=True)
class InstructionVae(Vae):
    """LIPO's VAE of instruction embeddings (seed 000)."""

    annealing_epochs: int = setting(VaeConfig.annealing_epochs, "epochs of the KL weight's warm-up", low=0, high=100000)
    hidden_dim: int = setting(VaeConfig.hidden_dim, "width of the VAE's hidden layers", low=1, high=4096)
    grad_clip: float = setting(VaeConfig.grad_clip, "gradient-norm clip of VAE training", above=0.0, high=1000.0)
    eta_min: float = setting(VaeConfig.eta_min, "floor of the VAE's cosine learning-rate schedule", low=0.0, high=1.0)
    latent_dim: int = setting(
        VaeConfig.latent_dim, "VAE latent dimension (the GP's input)", low=1, flat="latent_dim", high=1024
    )

    def config(self, seed: int = 0) -> VaeConfig:
        return VaeConfig(
            latent_dim=self.latent_dim,
            hidden_dim=self.hidden_dim,
            beta=self.beta,
            epochs=self.epochs,
            annealing_epochs=self.annealing_epochs,
            patience=self.patience,
            lr=self.lr,
            eta_min=self.eta_min,
            batch_size=self.batch_size,
            grad_clip=self.grad_clip,
            seed=seed,
        )


@dataclasses.dataclass(frozen=True)
class JointVae(Vae):
    """LIPO-E's joint VAE of (instruction, exemplar set) pairs (seed 001; BOLT's MSE term, seed 004)."""

    samples: int = setting(2000, "random (instruction, exemplar set) pairs the joint VAE trains on", low=1, high=100000)
    mse_weight: float = setting(0.0, "BOLT: weight of the VAE's embedding MSE term", low=0.0, high=100.0)
    instruction_latent_dim: int = setting(16, "z_inst width", low=1, flat="instruction_latent_dim", high=256)
    exemplar_latent_dim: int = setting(16, "z_ex width", low=1, flat="exemplar_latent_dim", high=256)


@dataclasses.dataclass(frozen=True)
class Hyperband(SettingsGroup):
    """HbBoPs' multi-fidelity selection."""

    title: ClassVar[str] = "Hyperband"

    bmin: int = setting(10, "Hyperband's smallest fidelity (validation questions)", low=1, high=100000)
    eta: float = setting(
        2.0, "Hyperband's halving rate (1.1 or more: closer to 1 means ever more brackets)", low=1.1, high=100.0
    )
    random_interleaving_prob: float = setting(
        0.1, "chance a Hyperband proposal is random instead of the GP's", low=0.0, high=1.0
    )


@dataclasses.dataclass(frozen=True)
class LipoHyperband(Hyperband):
    """LIPO's Hyperband, which also picks the GP's high-fidelity observations."""

    min_fidelity_pct: float = setting(
        0.75, "share of the full fidelity a prompt needs to count as a high-fidelity observation", above=0.0, high=1.0
    )


@dataclasses.dataclass(frozen=True)
class Gp(SettingsGroup):
    """The surrogate GP's fit."""

    title: ClassVar[str] = "GP"
    prefix: ClassVar[str] = "gp_"

    epochs: int = setting(GpTraining.epochs, "max GP training epochs", low=1, high=100000)
    lr: float = setting(GpTraining.lr, "GP learning rate", above=0.0, high=1.0)
    patience: int = setting(
        GpTraining.patience, "GP epochs without improvement before early stopping", low=1, high=100000
    )

    def training(self, seed: int = 0) -> GpTraining:
        return GpTraining(self.epochs, self.lr, self.patience, seed)


@dataclasses.dataclass(frozen=True)
class LatentGp(Gp):
    """LIPO's deep-kernel GP and its incremental retrain during InvBO."""

    retrain_epochs: int = setting(
        GpTraining.for_retrain().epochs, "epochs of the GP's incremental retrain during InvBO", low=1, high=100000
    )
    retrain_lr: float = setting(GpTraining.for_retrain().lr, "learning rate of the GP's retrain", above=0.0, high=1.0)
    retrain_patience: int = setting(
        GpTraining.for_retrain().patience, "patience of the GP's retrain", low=1, high=100000
    )

    def hyperband_training(self, seed: int = 0) -> GpTraining:
        """The seed's `for_hyperband_gp()`, capped by gp_epochs (debug runs)."""
        fast = GpTraining.for_hyperband(seed)
        return dataclasses.replace(fast, epochs=min(fast.epochs, self.epochs))

    def retrain(self, seed: int = 0) -> GpTraining:
        return GpTraining(self.retrain_epochs, self.retrain_lr, self.retrain_patience, seed)


@dataclasses.dataclass(frozen=True)
class JointGpKernel(Gp):
    """LIPO-E's GP over the joint latent (seed 001; BOLT's deep kernel, seed 004)."""

    product_kernel: bool = setting(
        True, "GP kernel: instruction x exemplar product (off: one kernel on the joint latent)", flat="product_kernel"
    )
    beta_smoothing: bool = setting(True, "heteroscedastic noise from Beta-smoothed error rates", flat="beta_smoothing")
    use_deep_kernel: bool = setting(False, "BOLT: a deep kernel on the instruction latent", flat="use_deep_kernel")


@dataclasses.dataclass(frozen=True)
class Acquisition(SettingsGroup):
    """optimize_acqf over the latent."""

    title: ClassVar[str] = "acquisition"

    num_restarts: int = setting(AcquisitionConfig.num_restarts, "optimize_acqf restarts", low=1, debug=4, high=512)
    raw_samples: int = setting(
        AcquisitionConfig.raw_samples, "optimize_acqf raw samples (>= num_restarts)", low=1, debug=64, high=65536
    )
    latent_margin: float = setting(
        AcquisitionConfig.latent_margin, "margin around the latent bounds the acquisition searches", low=0.0, high=10.0
    )

    def config(self) -> AcquisitionConfig:
        return AcquisitionConfig(
            num_restarts=self.num_restarts, raw_samples=self.raw_samples, latent_margin=self.latent_margin
        )


@dataclasses.dataclass(frozen=True)
class JointAcquisition(Acquisition):
    """LIPO-E's two-stage proposal and its acquisition function (BOLT's UCB, seed 004)."""

    acquisition: str = setting(AcquisitionConfig.acquisition, "acquisition function of InvBO", choices=ACQUISITIONS)
    ucb_beta: float = setting(AcquisitionConfig.ucb_beta, "UCB's exploration weight", above=0.0, high=1000.0)
    distance_weight: float = setting(
        AcquisitionConfig.distance_weight, "UCB's penalty on distance from observed latents", low=0.0, high=1000.0
    )
    candidate_instructions: int = setting(
        50, "instructions the two-stage proposal considers", low=1, debug=5, high=10000
    )
    exemplar_steps: int = setting(20, "exemplar-search steps per candidate instruction", low=1, high=1000)
    exemplar_restarts: int = setting(5, "restarts of the exemplar search", low=1, debug=2, high=100)

    def config(self) -> AcquisitionConfig:
        return dataclasses.replace(
            super().config(), acquisition=self.acquisition, ucb_beta=self.ucb_beta, distance_weight=self.distance_weight
        )


@dataclasses.dataclass(frozen=True)
class Decoding(SettingsGroup):
    """Turning a latent's embedding back into text (the decoder service)."""

    title: ClassVar[str] = "decoding"

    vec2text_beam: int = setting(
        8, "beam width the decoder uses (vec2text's sequence beam; 0: the decoder's default)", low=0, high=64
    )
    decoder_steps: int = DECODER_STEPS.field()


@dataclasses.dataclass(frozen=True)
class InvertedDecoding(Decoding):
    """LIPO's decoding with InvBO's latent inversion (the surrogate's)."""

    inversion_n_steps: int = setting(InversionConfig.n_steps, "Adam steps of one latent inversion", low=1, high=10000)
    inversion_lr: float = setting(InversionConfig.lr, "learning rate of the latent inversion", above=0.0, high=10.0)
    inversion_convergence_threshold: float = setting(
        InversionConfig.convergence_threshold, "inversion stops below this cosine loss", low=0.0, high=2.0
    )

    def inversion(self) -> InversionConfig:
        return InversionConfig(self.inversion_n_steps, self.inversion_lr, self.inversion_convergence_threshold)


@dataclasses.dataclass(frozen=True)
class Guidance(SettingsGroup):
    """EcoFlow's LCB-guided sampling (seed 003)."""

    title: ClassVar[str] = "guidance"

    guidance_strength: float = setting(
        GuidanceSettings.guidance_strength, "lambda: weight of the LCB gradient in the velocity", low=0.0, high=100.0
    )
    alpha: float = setting(
        GuidanceSettings.alpha, "LCB exploration weight (mu - alpha sigma of the error)", low=0.0, high=100.0
    )
    num_steps: int = setting(
        GuidanceSettings.num_steps, "ODE steps of one guided sample", low=1, high=MAX_FLOW_STEPS, debug=10
    )
    method: str = setting(GuidanceSettings.method, "ODE solver", choices=tuple(ODE_METHODS))
    zero_init_fraction: float = setting(
        GuidanceSettings.zero_init_fraction,
        "CFG-Zero*: fraction of the first steps without guidance",
        low=0.0,
        high=1.0,
    )
    zero_init: str = setting(
        GuidanceSettings.zero_init,
        "what the first steps zero: the guidance or the velocity",
        choices=tuple(ZERO_INIT_MODES),
    )

    def settings(self) -> GuidanceSettings:
        return GuidanceSettings(
            self.guidance_strength, self.alpha, self.num_steps, self.method, self.zero_init_fraction, self.zero_init
        )
