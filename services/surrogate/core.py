"""The `Surrogate` base, the exact BoTorch GP, and the in-memory registry of trained models by id."""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod

import numpy as np
import torch

from services.common.errors import NotFoundError


class Surrogate(ABC):
    """A fitted regression model with a posterior: predict mean/variance at points [m, d]."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance, each shape [m]."""

    @abstractmethod
    def log_ei(self, x: np.ndarray, best_f: float | None) -> np.ndarray:
        """Log expected improvement over best_f (default: best observed), shape [m]."""

    @abstractmethod
    def ucb(self, x: np.ndarray, beta: float) -> np.ndarray:
        """mean + sqrt(beta) * std (with -mean when minimising), shape [m]."""


class ExactGP(Surrogate):
    """BoTorch SingleTaskGP (Matern 5/2 ARD), unit-cube inputs, standardised outputs, MLL fit."""

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, minimize: bool = False):
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Normalize, Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        if train_x.ndim != 2:
            raise ValueError(f"train_x must be 2-D [n, d], got shape {list(train_x.shape)}")
        if train_x.shape[0] < 2:
            raise ValueError(f"train_x needs at least 2 points, got {train_x.shape[0]}")
        if train_y.shape != (train_x.shape[0],):
            raise ValueError(f"train_y has {train_y.shape[0]} values but train_x has {train_x.shape[0]} rows")
        if not (np.isfinite(train_x).all() and np.isfinite(train_y).all()):
            raise ValueError("train_x and train_y must be finite")
        x = torch.as_tensor(train_x, dtype=torch.float64)
        y = torch.as_tensor(train_y, dtype=torch.float64).unsqueeze(-1)
        self.dim = x.shape[1]
        self.minimize = minimize
        self.best_y = float(y.min() if minimize else y.max())
        self.model = SingleTaskGP(x, y, input_transform=Normalize(self.dim), outcome_transform=Standardize(1))
        mll = ExactMarginalLogLikelihood(self.model.likelihood, self.model)
        fit_gpytorch_mll(mll)
        self.model.eval()
        with torch.no_grad():
            self.mll = float(mll(self.model(*self.model.train_inputs), self.model.train_targets))

    def _points(self, x: np.ndarray) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [m, {self.dim}], got {list(x.shape)}")
        return torch.as_tensor(x, dtype=torch.float64)

    def predict(self, x):
        with torch.no_grad():
            posterior = self.model.posterior(self._points(x))
        return posterior.mean.squeeze(-1).numpy(), posterior.variance.squeeze(-1).numpy()

    def log_ei(self, x, best_f=None):
        from botorch.acquisition import LogExpectedImprovement

        best = self.best_y if best_f is None else best_f
        acq = LogExpectedImprovement(self.model, best_f=best, maximize=not self.minimize)
        with torch.no_grad():
            return acq(self._points(x).unsqueeze(1)).numpy()

    def ucb(self, x, beta):
        mean, var = self.predict(x)
        return (-mean if self.minimize else mean) + np.sqrt(beta * var)


class ModelRegistry:
    """Trained models (surrogates, VAEs) addressed by id (in memory, thread-safe)."""

    def __init__(self):
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    def add(self, model) -> str:
        model_id = uuid.uuid4().hex
        with self._lock:
            self._models[model_id] = model
        return model_id

    def get(self, model_id: str, kind: type = object, field: str = "model_id"):
        """The model stored under `model_id`; NotFoundError if absent or not a `kind`."""
        with self._lock:
            model = self._models.get(model_id)
        if not isinstance(model, kind):
            raise NotFoundError(f"{field} {model_id!r} not found")
        return model

    def delete(self, model_id: str) -> None:
        with self._lock:
            if self._models.pop(model_id, None) is None:
                raise NotFoundError(f"model_id {model_id!r} not found")
