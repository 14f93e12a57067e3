"""InstructionDeepKernelGP and its wrapper (seed 000 `GPWithEI`): a GP on the adapter output of
VAE latents, with unit-cube inputs, z-scored targets, LogEI and BoTorch `optimize_acqf`.

Inputs at the API are embeddings [n, d]; they are encoded to VAE means [n, 64], scaled to the
unit cube with the training min/max, and the GP's adapter maps them to 10-D.
"""

from __future__ import annotations

import copy
import math

import gpytorch
import numpy as np
import torch
from botorch.models.gpytorch import GPyTorchModel
from botorch.optim import optimize_acqf
from gpytorch.constraints import Interval
from gpytorch.distributions import MultivariateNormal
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.means import ZeroMean
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior

from services.common.cancellation import check_caller
from services.surrogate.acquisition import CompositeLogEI, latent_bounds, log_ei
from services.surrogate.core import Surrogate, tensor_bytes
from services.surrogate.types import AcquisitionConfig, GpTraining, InversionConfig
from services.surrogate.vae import InstructionVAE, VAEWithAdapter, invert_latent

CHOLESKY_JITTER = 1e-4
GP_LATENT_DIM = 10  # seed 000 `gp_latent_dim`: the adapter's output


class InstructionDeepKernelGP(gpytorch.models.ExactGP, GPyTorchModel):
    """Zero mean, Scale(Matern 5/2 ARD over the adapter output) with the seed's Gamma priors."""

    _num_outputs = 1

    def __init__(self, train_x, train_y, likelihood, adapter: torch.nn.Module, gp_latent_dim: int = 10):
        super().__init__(train_x, train_y, likelihood)
        self.adapter = adapter
        self.mean_module = ZeroMean()
        self.covar_module = ScaleKernel(
            MaternKernel(nu=2.5, ard_num_dims=gp_latent_dim, lengthscale_prior=GammaPrior(3.0, 6.0)),
            outputscale_prior=GammaPrior(2.0, 0.15),
        )

    def forward(self, x: torch.Tensor) -> MultivariateNormal:
        latent = self.adapter(x)
        return MultivariateNormal(self.mean_module(latent), self.covar_module(latent))


class DeepKernelSurrogate(Surrogate):
    """The deep-kernel GP over a frozen VAE, fitted on (embeddings, targets).

    Args:
        vae: trained, frozen InstructionVAE.
        train_x: embeddings [n, d], n >= 2.
        train_y: targets [n] (error rates when `minimize`).
        training: epochs / lr / patience of the MLL fit (AdamW, early stopping).
        minimize: lower targets are better (LogEI improves below the incumbent).
    """

    def __init__(self, vae: InstructionVAE, train_x, train_y, training: GpTraining, minimize: bool = True):
        x = np.asarray(train_x, dtype=np.float32)
        y = np.asarray(train_y, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != vae.input_dim:
            raise ValueError(f"train_x must have shape [n, {vae.input_dim}], got {list(x.shape)}")
        if x.shape[0] < 2 or y.shape != (x.shape[0],):
            raise ValueError(f"need >= 2 rows and one target per row, got {x.shape[0]} rows, {y.shape} targets")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("train_x and train_y must be finite")
        self.vae, self.minimize, self.training = vae, minimize, training
        self.embeddings, self.targets = x, y
        torch.manual_seed(training.seed)
        self.encoder = VAEWithAdapter(vae, GP_LATENT_DIM)
        self.encoder.adapter.double()  # the GP runs in float64; the shared VAE stays float32
        self._build()
        self.epochs_trained, self.final_loss = self._train(training)

    # -- normalisation -------------------------------------------------------------------------
    def latents(self, embeddings) -> torch.Tensor:
        """VAE means [n, 64] (float64) of embeddings [n, d]."""
        return self.encoder.encode_vae(torch.as_tensor(np.asarray(embeddings, dtype=np.float32))).double()

    def to_unit(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.x_min) / self.x_range

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.x_range + self.x_min

    def _points(self, x) -> torch.Tensor:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.vae.input_dim:
            raise ValueError(f"x must have shape [m, {self.vae.input_dim}], got {list(x.shape)}")
        return self.to_unit(self.latents(x))

    # -- fitting -------------------------------------------------------------------------------
    def _build(self) -> None:
        """Unit-cube scaling, z-scored targets and a fresh GP around the (kept) adapter."""
        z = self.latents(self.embeddings)
        self.x_min = z.min(dim=0).values
        self.x_range = (z.max(dim=0).values - self.x_min).clamp_min(1e-6)
        self.train_unit = self.to_unit(z)
        y = torch.as_tensor(self.targets)
        self.y_mean = float(y.mean())
        self.y_std = float(y.std()) if len(y) > 1 and float(y.std()) > 1e-9 else 1.0
        y_norm = (y - self.y_mean) / self.y_std
        likelihood = GaussianLikelihood(noise_constraint=Interval(0.001, 0.1)).double()
        self.model = InstructionDeepKernelGP(
            self.train_unit, y_norm, likelihood, self.encoder.adapter, GP_LATENT_DIM
        ).double()

    def _train(self, training: GpTraining) -> tuple[int, float]:
        """AdamW on -MLL with early stopping (patience); keeps the best parameters."""
        model = self.model
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=training.lr)
        best, best_state, since, epochs_run = math.inf, copy.deepcopy(model.state_dict()), 0, 0
        model.train()
        with gpytorch.settings.cholesky_jitter(CHOLESKY_JITTER):
            for epoch in range(1, training.epochs + 1):
                check_caller()
                epochs_run = epoch
                optimizer.zero_grad()
                loss = -mll(model(self.train_unit), model.train_targets)
                loss.backward()
                optimizer.step()
                value = loss.item()
                if value < best - 1e-4:
                    best, best_state, since = value, copy.deepcopy(model.state_dict()), 0
                else:
                    since += 1
                    if since >= training.patience:
                        break
        model.load_state_dict(best_state)
        model.eval()
        return epochs_run, best

    def add_observations(self, x, y, training: GpTraining) -> None:
        """Append rows and retrain from the current parameters (the seed's incremental retrain); if
        training does not finish, the model is left exactly as it was."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.vae.input_dim)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.shape[0] != y.shape[0] or not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("x and y must be finite with one target per row")
        state = copy.deepcopy(self.model.state_dict())
        embeddings, targets = self.embeddings, self.targets
        self._rebuild(np.concatenate([embeddings, x]), np.concatenate([targets, y]), state)
        try:
            self.epochs_trained, self.final_loss = self._train(training)
        except BaseException:  # e.g. the caller left mid-training: the model is as it was before
            self._rebuild(embeddings, targets, state)
            self.model.eval()
            raise

    def _rebuild(self, embeddings: np.ndarray, targets: np.ndarray, state: dict) -> None:
        """A GP over these rows with the parameters `state`."""
        self.embeddings, self.targets = embeddings, targets
        self._build()
        self.model.load_state_dict(state)

    # -- posterior -----------------------------------------------------------------------------
    def _posterior_unit(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std in target units at unit-cube latents [m, 64]."""
        with gpytorch.settings.cholesky_jitter(CHOLESKY_JITTER):
            posterior = self.model.posterior(u)
        mean = posterior.mean.squeeze(-1) * self.y_std + self.y_mean
        std = posterior.variance.clamp_min(1e-18).sqrt().squeeze(-1) * self.y_std
        return mean, std

    def incumbent(self) -> float:
        return float(self.targets.min() if self.minimize else self.targets.max())

    def predict(self, x):
        with torch.no_grad():
            mean, std = self._posterior_unit(self._points(x))
        return mean.numpy(), (std**2).numpy()

    def log_ei(self, x, best_f=None):
        with torch.no_grad():
            mean, std = self._posterior_unit(self._points(x))
            best = self.incumbent() if best_f is None else best_f
            return log_ei(mean, std, best, self.minimize).numpy()

    def ucb(self, x, beta):
        mean, var = self.predict(x)
        sign = -1.0 if self.minimize else 1.0
        return sign * mean + np.sqrt(beta * var)

    def nbytes(self) -> int:
        return tensor_bytes(self.model, self.embeddings, self.targets, self.train_unit)

    # -- latent-space optimisation -------------------------------------------------------------
    def optimize(self, config: AcquisitionConfig, best_f: float | None = None) -> tuple[np.ndarray, float]:
        """Maximise LogEI over the widened unit-cube box of the training latents.

        Returns (unit-cube latent [64], its LogEI); LogEI is computed in standardised units.
        """
        best = self.incumbent() if best_f is None else best_f
        acq = CompositeLogEI(self.model, best_f=(best - self.y_mean) / self.y_std, minimize=self.minimize)
        bounds = latent_bounds(self.train_unit, config.latent_margin)
        torch.manual_seed(self.training.seed)
        with gpytorch.settings.cholesky_jitter(CHOLESKY_JITTER):
            candidate, value = optimize_acqf(
                acq_function=acq,
                bounds=bounds,
                q=1,
                num_restarts=config.num_restarts,
                raw_samples=config.raw_samples,
                options={"maxiter": config.maxiter, "batch_limit": config.batch_limit},
            )
        return candidate.detach().reshape(-1).numpy(), float(value)

    def decode_unit(self, u) -> np.ndarray:
        """Unit-cube latents [m, 64] -> decoded embeddings [m, d]."""
        with torch.no_grad():
            z = self.from_unit(torch.as_tensor(np.asarray(u, dtype=np.float64)).reshape(-1, self.vae.latent_dim))
            return self.encoder.decode(z).numpy()

    def invert(self, target, u_init, config: InversionConfig) -> tuple[np.ndarray, float, int]:
        """z_inv (unit cube) with decode(z_inv) ~ target: Adam on the cosine loss."""
        x_min, x_range = self.x_min.float(), self.x_range.float()
        u, loss, steps = invert_latent(
            lambda u: self.vae.decode(u * x_range + x_min),
            torch.as_tensor(np.asarray(target, dtype=np.float32)),
            torch.as_tensor(np.asarray(u_init, dtype=np.float32)),
            config,
        )
        return u.numpy(), loss, steps
