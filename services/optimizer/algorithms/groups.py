"""Settings shared by several optimisers, declared once (help, bounds, debug value, group).

LIPO, LIPO-E and EcoFlow declare these fields with `SHARED.field(...)`, overriding only what the
seeds set differently (`APE_NUM_INSTRUCTIONS.field(default=2000)` in LIPO-E). Defaults come from
the surrogate's own settings types where one exists (VAE, GP, acquisition, inversion, guidance),
so a seed default lives in one place. The tuner's baseline reads LIPO-E's declarations too.
"""

from __future__ import annotations

from services.common.settings import Setting
from services.flow.types import MAX_FLOW_STEPS, ODE_METHODS, ZERO_INIT_MODES, GuidanceSettings
from services.surrogate.types import ACQUISITIONS, AcquisitionConfig, GpTraining, InversionConfig, VaeConfig

# -- APE (seed 000): the instruction pool ---------------------------------------------------------
APE = "APE instruction pool"
APE_NUM_INSTRUCTIONS = Setting(1000, "instructions the generator LLM writes for the pool", low=1, debug=10, group=APE)
APE_CACHE_PATH = Setting("", "the pool's cache (JSON list) on the optimizer ('': its state directory)", group=APE)
APE_BATCH_SIZE = Setting(10, "instructions asked for per generator call", low=1, group=APE)
APE_MAX_TOKENS = Setting(100, "max tokens of one generated instruction", low=1, group=APE)
APE_MAX_LENGTH = Setting(500, "max characters of an instruction kept in the pool", low=1, group=APE)

# -- VAE: the instruction latent ------------------------------------------------------------------
VAE = "VAE"
VAE_BETA = Setting(VaeConfig.beta, "KL weight of the VAE loss", low=0.0, group=VAE)
VAE_EPOCHS = Setting(VaeConfig.epochs, "max VAE training epochs", low=1, group=VAE)
VAE_ANNEALING_EPOCHS = Setting(VaeConfig.annealing_epochs, "epochs of the KL weight's warm-up", low=0, group=VAE)
VAE_PATIENCE = Setting(VaeConfig.patience, "epochs without improvement before early stopping", low=1, group=VAE)
VAE_LR = Setting(VaeConfig.lr, "VAE learning rate", above=0.0, group=VAE)
VAE_BATCH_SIZE = Setting(VaeConfig.batch_size, "VAE minibatch size", low=1, group=VAE)
VAE_HIDDEN_DIM = Setting(VaeConfig.hidden_dim, "width of the VAE's hidden layers", low=1, group=VAE)
VAE_GRAD_CLIP = Setting(VaeConfig.grad_clip, "gradient-norm clip of VAE training", above=0.0, group=VAE)
VAE_ETA_MIN = Setting(VaeConfig.eta_min, "floor of the VAE's cosine learning-rate schedule", low=0.0, group=VAE)
LATENT_DIM = Setting(VaeConfig.latent_dim, "VAE latent dimension (the GP's input)", low=1, group=VAE)

# -- Hyperband (HbBoPs): multi-fidelity selection ---------------------------------------------------
HYPERBAND = "Hyperband"
BMIN = Setting(10, "Hyperband's smallest fidelity (validation questions)", low=1, group=HYPERBAND)
ETA = Setting(2.0, "Hyperband's halving rate", above=1.0, group=HYPERBAND)
RANDOM_INTERLEAVING_PROB = Setting(
    0.1, "chance a Hyperband proposal is random instead of the GP's", low=0.0, high=1.0, group=HYPERBAND
)

# -- GP: the surrogate's fit ------------------------------------------------------------------------
GP = "GP"
GP_EPOCHS = Setting(GpTraining.epochs, "max GP training epochs", low=1, group=GP)
GP_LR = Setting(GpTraining.lr, "GP learning rate", above=0.0, group=GP)
GP_PATIENCE = Setting(GpTraining.patience, "GP epochs without improvement before early stopping", low=1, group=GP)

# -- acquisition optimisation ------------------------------------------------------------------------
ACQUISITION = "acquisition"
NUM_RESTARTS = Setting(AcquisitionConfig.num_restarts, "optimize_acqf restarts", low=1, debug=4, group=ACQUISITION)
RAW_SAMPLES = Setting(
    AcquisitionConfig.raw_samples, "optimize_acqf raw samples (>= num_restarts)", low=1, debug=64, group=ACQUISITION
)
LATENT_MARGIN = Setting(
    AcquisitionConfig.latent_margin,
    "margin around the latent bounds the acquisition searches",
    low=0.0,
    group=ACQUISITION,
)
ACQUISITION_FUNCTION = Setting(
    AcquisitionConfig.acquisition, "acquisition function of InvBO", choices=ACQUISITIONS, group=ACQUISITION
)
UCB_BETA = Setting(AcquisitionConfig.ucb_beta, "UCB's exploration weight", above=0.0, group=ACQUISITION)
DISTANCE_WEIGHT = Setting(
    AcquisitionConfig.distance_weight, "UCB's penalty on distance from observed latents", low=0.0, group=ACQUISITION
)

# -- latent inversion and decoding --------------------------------------------------------------------
DECODING = "decoding"
INVERSION_N_STEPS = Setting(InversionConfig.n_steps, "Adam steps of one latent inversion", low=1, group=DECODING)
INVERSION_LR = Setting(InversionConfig.lr, "learning rate of the latent inversion", above=0.0, group=DECODING)
INVERSION_CONVERGENCE_THRESHOLD = Setting(
    InversionConfig.convergence_threshold, "inversion stops below this cosine loss", low=0.0, group=DECODING
)
VEC2TEXT_BEAM = Setting(
    8, "beam width the decoder uses (vec2text's sequence beam; 0: the decoder's default)", low=0, group=DECODING
)
DECODER_STEPS = Setting(0, "decoder correction steps (0: the decoder's default)", low=0, group=DECODING)

# -- EcoFlow's guided sampling (seed 003) ------------------------------------------------------------
GUIDANCE = "guidance"
GUIDANCE_STRENGTH = Setting(
    GuidanceSettings.guidance_strength, "lambda: weight of the LCB gradient in the velocity", low=0.0, group=GUIDANCE
)
ALPHA = Setting(
    GuidanceSettings.alpha, "LCB exploration weight (mu - alpha sigma of the error)", low=0.0, group=GUIDANCE
)
NUM_STEPS = Setting(
    GuidanceSettings.num_steps, "ODE steps of one guided sample", low=1, high=MAX_FLOW_STEPS, debug=10, group=GUIDANCE
)
METHOD = Setting(GuidanceSettings.method, "ODE solver", choices=tuple(ODE_METHODS), group=GUIDANCE)
ZERO_INIT_FRACTION = Setting(
    GuidanceSettings.zero_init_fraction,
    "CFG-Zero*: fraction of the first steps without guidance",
    low=0.0,
    high=1.0,
    group=GUIDANCE,
)
ZERO_INIT = Setting(
    GuidanceSettings.zero_init,
    "what the first steps zero: the guidance or the velocity",
    choices=tuple(ZERO_INIT_MODES),
    group=GUIDANCE,
)
