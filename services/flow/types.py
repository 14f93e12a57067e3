"""EcoFlow's flow service contract: guided-sampling settings and samples (torch-free)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class FlowSamples:
    """EcoFlow's samples: embeddings [n, d]; the GP's LCB of the error at each (None unguided);
    the steps that applied guidance; with the manifold distance, each sample's L2 to its nearest
    training embedding and the held-out embeddings' mean of the same."""

    embeddings: np.ndarray
    lcb: np.ndarray | None
    guided_steps: int
    nearest_train_l2: np.ndarray | None = None
    heldout_nearest_l2: float | None = None


ODE_METHODS = ("heun", "euler")
ZERO_INIT_MODES = ("guidance", "velocity")  # the seed's zero guidance; CFG-Zero*'s zeroed velocity


MAX_FLOW_SAMPLES = 4096  # samples per SampleFlow request
MAX_FLOW_STEPS = 1000  # ODE steps per sample


@dataclasses.dataclass(frozen=True)
class GuidanceSettings:
    """EcoFlow's guided sampling (seed 003's defaults): see SampleFlowRequest in flow.proto."""

    guidance_strength: float = 1.0
    alpha: float = 1.0
    num_steps: int = 50
    method: str = "heun"
    zero_init_fraction: float = 0.04
    zero_init: str = "guidance"

    def __post_init__(self):
        for name in ("guidance_strength", "alpha"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 1 <= self.num_steps <= MAX_FLOW_STEPS:
            raise ValueError(f"num_steps must be in [1, {MAX_FLOW_STEPS}] (the seed's 50), got {self.num_steps}")
        if self.method not in ODE_METHODS:
            raise ValueError(f"method must be one of {list(ODE_METHODS)}, got {self.method!r}")
        if not 0 <= self.zero_init_fraction <= 1:
            raise ValueError(f"zero_init_fraction must lie in [0, 1], got {self.zero_init_fraction}")
        if self.zero_init not in ZERO_INIT_MODES:
            raise ValueError(f"zero_init must be one of {list(ZERO_INIT_MODES)}, got {self.zero_init!r}")


def decode_round_trip(sampled: np.ndarray, reencoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (cosine, L2) between a sampled embedding and its decoded text's re-encoding."""
    norms = np.maximum(np.linalg.norm(sampled, axis=1) * np.linalg.norm(reencoded, axis=1), 1e-12)
    return np.sum(sampled * reencoded, axis=1) / norms, np.linalg.norm(sampled - reencoded, axis=1)
