"""Numerically stable log expected improvement (the seed's three branches) and latent bounds.

For minimisation with incumbent `best_f`: z = (best_f - mean) / sigma and
LogEI = log h(z) + log sigma, with h(z) = phi(z) + z * Phi(z).
"""

from __future__ import annotations

import math

import torch
from botorch.acquisition import AnalyticAcquisitionFunction
from botorch.utils.transforms import t_batch_mode_transform

_LOG_2PI_HALF = 0.5 * math.log(2 * math.pi)
_LOG_PI_HALF_HALF = 0.5 * math.log(math.pi / 2)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and far from it."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_h(z: torch.Tensor) -> torch.Tensor:
    """log(phi(z) + z Phi(z)) in three branches.

    1. z > -1: direct evaluation.
    2. -1/sqrt(eps) < z <= -1: via erfcx, log phi(z) + log(1 - |z| erfcx(|z|/sqrt 2) sqrt(pi/2)).
    3. z <= -1/sqrt(eps): asymptotic, log phi(z) - 2 log|z|.
    """
    eps = torch.finfo(z.dtype).eps
    upper = -1.0
    lower = -1.0 / math.sqrt(eps)
    normal = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
    z_direct = z.clamp(min=upper)
    direct = torch.log(torch.exp(normal.log_prob(z_direct)) + z_direct * normal.cdf(z_direct))
    z_mid = z.clamp(min=lower, max=upper)
    mid = (
        -0.5 * z_mid**2
        - _LOG_2PI_HALF
        + _log1mexp(torch.log(torch.special.erfcx(-z_mid / math.sqrt(2)) * z_mid.abs()) + _LOG_PI_HALF_HALF)
    )
    z_tail = z.clamp(max=lower)
    tail = -0.5 * z_tail**2 - _LOG_2PI_HALF - 2 * torch.log(z_tail.abs())
    return torch.where(z > upper, direct, torch.where(z > lower, mid, tail))


def log_ei(mean: torch.Tensor, sigma: torch.Tensor, best_f: float, minimize: bool = True) -> torch.Tensor:
    """LogEI of a Gaussian N(mean, sigma^2) over the incumbent best_f."""
    sigma = sigma.clamp_min(1e-12)
    z = (best_f - mean) / sigma if minimize else (mean - best_f) / sigma
    return log_h(z) + torch.log(sigma)


class CompositeLogEI(AnalyticAcquisitionFunction):
    """BoTorch acquisition over the model's posterior using `log_ei` (q = 1)."""

    def __init__(self, model, best_f: float, minimize: bool = True):
        super().__init__(model=model)
        self.best_f = best_f
        self.minimize = minimize

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """X: [b, 1, d] -> [b]."""
        posterior = self.model.posterior(X)
        mean = posterior.mean.squeeze(-1).squeeze(-1)
        sigma = posterior.variance.clamp_min(1e-18).sqrt().squeeze(-1).squeeze(-1)
        return log_ei(mean, sigma, self.best_f, self.minimize)


def latent_bounds(latents_norm: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """[2, d] box around unit-cube latents [n, d], widened by `margin` of each range."""
    z_min = latents_norm.min(dim=0).values
    z_max = latents_norm.max(dim=0).values
    z_range = (z_max - z_min).clamp_min(1e-6)
    return torch.stack([z_min - margin * z_range, z_max + margin * z_range])
