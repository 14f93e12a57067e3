"""SampleFlow's request, checked and read into domain values."""

from __future__ import annotations

import math

from services.common.errors import require
from services.flow.types import MAX_FLOW_SAMPLES, MAX_FLOW_STEPS, GuidanceSettings


def parse_sample(request) -> dict:
    """SampleFlow's fields, checked (INVALID_ARGUMENT naming the field); an unset field takes the
    seed's value (GuidanceSettings)."""
    require(bool(request.checkpoint), "checkpoint must name a flow training run (its id)")
    require(1 <= request.n_samples <= MAX_FLOW_SAMPLES, f"n_samples must be in [1, {MAX_FLOW_SAMPLES}]")
    seed = GuidanceSettings()
    fields = {  # unset: the seed's
        name: getattr(request, name) if request.HasField(name) else getattr(seed, name)
        for name in ("guidance_strength", "alpha", "num_steps", "zero_init_fraction")
    }
    for name in ("guidance_strength", "alpha", "zero_init_fraction"):
        require(math.isfinite(fields[name]), f"{name} must be a finite number")
    require(1 <= fields["num_steps"] <= MAX_FLOW_STEPS, f"num_steps must be in [1, {MAX_FLOW_STEPS}] (the seed's 50)")
    require(fields["guidance_strength"] == 0 or bool(request.model_id), "guidance_strength > 0 needs model_id (a GP)")
    settings = GuidanceSettings(
        method=request.method or seed.method, zero_init=request.zero_init or seed.zero_init, **fields
    )
    return {
        "checkpoint": request.checkpoint,
        "n": request.n_samples,
        "model_id": request.model_id,
        "settings": settings,
        "seed": request.seed,
        "manifold_distance": request.manifold_distance,
    }
