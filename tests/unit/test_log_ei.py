"""LogEI against a 60-digit mpmath reference in all three branches, and its gradients."""

import math

import mpmath
import pytest
import torch

from services.surrogate.acquisition import latent_bounds, log_ei, log_h

mpmath.mp.dps = 60


def reference_log_h(z: float) -> float:
    z = mpmath.mpf(z)
    return float(mpmath.log(mpmath.npdf(z) + z * mpmath.ncdf(z)))


LOWER = -1 / math.sqrt(torch.finfo(torch.float64).eps)  # about -6.7e7


@pytest.mark.parametrize(
    ("z", "branch"),
    [
        (5.0, "direct"),
        (0.0, "direct"),
        (-0.999, "direct"),
        (-1.0, "erfcx"),
        (-3.0, "erfcx"),
        (-40.0, "erfcx"),
        (-1e5, "erfcx"),
        (-6e7, "erfcx"),
        (-7e7, "asymptotic"),
        (-1e9, "asymptotic"),
        (-1e12, "asymptotic"),
    ],
)
def test_log_h_matches_high_precision(z, branch):
    assert (z > -1) == (branch == "direct")
    assert (z <= LOWER) == (branch == "asymptotic")
    value = float(log_h(torch.tensor([z], dtype=torch.float64)))
    expected = reference_log_h(z)
    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_log_h_gradient_is_finite_everywhere():
    z = torch.tensor([3.0, -0.5, -1.0, -20.0, -1e8], dtype=torch.float64, requires_grad=True)
    log_h(z).sum().backward()
    assert torch.isfinite(z.grad).all() and (z.grad > 0).all()  # log h is increasing


def test_log_ei_direction_and_scale():
    mean, sigma = torch.tensor([0.2, 0.4], dtype=torch.float64), torch.tensor([0.1, 0.1], dtype=torch.float64)
    minimising = log_ei(mean, sigma, best_f=0.3, minimize=True)
    assert minimising[0] > minimising[1]  # lower mean improves on a minimisation incumbent
    maximising = log_ei(mean, sigma, best_f=0.3, minimize=False)
    assert maximising[1] > maximising[0]
    # LogEI = log h(z) + log sigma, with z = (best - mean) / sigma
    expected = reference_log_h((0.3 - 0.2) / 0.1) + math.log(0.1)
    assert float(minimising[0]) == pytest.approx(expected, rel=1e-12)


def test_latent_bounds_widen_by_margin():
    x = torch.tensor([[0.0, 1.0], [1.0, 3.0]])
    assert torch.allclose(latent_bounds(x, 0.2), torch.tensor([[-0.2, 0.6], [1.2, 3.4]]))


def test_acquisition_settings_refuse_fewer_raw_samples_than_restarts():
    """Found by the RPC fuzzing: BoTorch starts its restarts from the best raw samples, so
    raw_samples 1 with 64 restarts was an INTERNAL error instead of INVALID_ARGUMENT."""
    from services.surrogate.types import AcquisitionConfig

    with pytest.raises(ValueError, match=r"raw_samples \(1\) must be >= num_restarts \(64\)"):
        AcquisitionConfig(raw_samples=1)
    assert AcquisitionConfig(num_restarts=4, raw_samples=4).raw_samples == 4
