"""The `Surrogate` base, the exact BoTorch GP, and the in-memory registry of trained models by id."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import uuid
from abc import ABC, abstractmethod

import numpy as np
import torch

from services.common.errors import NotFoundError

log = logging.getLogger(__name__)


def tensor_bytes(*items) -> int:
    """Bytes of the tensors, arrays and modules' state (shared storage counted once)."""
    seen, total = set(), 0
    for item in items:
        tensors = item.state_dict().values() if isinstance(item, torch.nn.Module) else [item]
        for t in tensors:
            if isinstance(t, np.ndarray):
                total += t.nbytes
            elif isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total


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

    @abstractmethod
    def nbytes(self) -> int:
        """Memory held: parameters and training data (a shared VAE is counted with the VAE)."""


class ExactGP(Surrogate):
    """BoTorch SingleTaskGP (its default: RBF ARD with a dimension-scaled log-normal lengthscale
    prior), unit-cube inputs, standardised outputs, MLL fit."""

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

    def nbytes(self) -> int:
        return tensor_bytes(self.model, *self.model.train_inputs, self.model.train_targets)


class SonarGPSurrogate(ExactGP):
    """EcoFlow's GP in embedding space (seed 003): the exact GP on full embeddings (1024-D SONAR
    in production, the encoder's dimension on CPU) of error rates, standardised targets, with the
    lower confidence bound of the error differentiable in the inputs for guided sampling."""

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray):
        super().__init__(train_x, train_y, minimize=True)
        self.y_std = float(self.model.outcome_transform.stdvs.squeeze())

    def lcb(self, x: torch.Tensor, alpha: float = 1.0, standardized: bool = False) -> torch.Tensor:
        """mean - alpha * std of the error at embeddings x [m, d] (gradients flow to x), shape [m];
        `standardized`: in units of the targets' standard deviation (what guidance follows, so its
        strength does not depend on how much the error rates spread)."""
        posterior = self.model.posterior(x.double())
        std = posterior.variance.clamp_min(1e-12).sqrt()
        value = (posterior.mean - alpha * std).squeeze(-1)
        return (value / self.y_std if standardized else value).to(x.dtype)


def model_bytes(model) -> int:
    """Memory a stored model holds (a Surrogate reports its own; a module its state)."""
    return model.nbytes() if isinstance(model, Surrogate) else tensor_bytes(model)


@dataclasses.dataclass
class _Entry:
    model: object
    owner: str
    nbytes: int


class ModelRegistry:
    """Trained models (surrogates, VAEs) addressed by id, in memory and thread-safe.

    Each model carries its owner (the run that made it), so a finished run frees its models
    (`delete_owned`). With `max_bytes` > 0 the registry is bounded: adding a model past the bound
    evicts the least recently used ones (the newest always stays); a later call with an evicted
    id answers NotFoundError, and LIPO then retrains from its checkpoint.
    """

    def __init__(self, max_bytes: int = 0):
        self.max_bytes = max_bytes
        self.evictions = 0
        self._models: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, model, owner: str = "") -> str:
        model_id = uuid.uuid4().hex
        with self._lock:
            self._models[model_id] = _Entry(model, owner, model_bytes(model))
            self._evict()
        return model_id

    def get(self, model_id: str, kind: type = object, field: str = "model_id"):
        """The model stored under `model_id` (now the most recently used); NotFoundError if absent
        or not a `kind`."""
        with self._lock:
            entry = self._models.get(model_id)
            if entry is not None:
                self._models.move_to_end(model_id)
        if entry is None or not isinstance(entry.model, kind):
            raise NotFoundError(f"{field} {model_id!r} not found")
        return entry.model

    def resized(self, model_id: str) -> None:
        """Re-measure a model that grew (new observations), evicting others if now over the bound."""
        with self._lock:
            entry = self._models.get(model_id)
            if entry is not None:
                entry.nbytes = model_bytes(entry.model)
                self._models.move_to_end(model_id)
                self._evict()

    def delete(self, model_id: str) -> None:
        with self._lock:
            if self._models.pop(model_id, None) is None:
                raise NotFoundError(f"model_id {model_id!r} not found")

    def delete_owned(self, owner: str) -> int:
        """Delete every model of `owner`; returns how many there were."""
        with self._lock:
            ids = [i for i, e in self._models.items() if e.owner == owner]
            for model_id in ids:
                del self._models[model_id]
        return len(ids)

    def stats(self) -> dict[str, tuple[int, int]]:
        """Model kind (class name) -> (models held, bytes)."""
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            for entry in self._models.values():
                count, total = out.get(type(entry.model).__name__, (0, 0))
                out[type(entry.model).__name__] = (count + 1, total + entry.nbytes)
        return out

    def _evict(self) -> None:
        """Drop least recently used models while over `max_bytes` (never the newest one). Lock held."""
        total = sum(e.nbytes for e in self._models.values())
        while self.max_bytes and total > self.max_bytes and len(self._models) > 1:
            model_id, entry = self._models.popitem(last=False)
            total -= entry.nbytes
            self.evictions += 1
            log.info(
                "evicted model %s (%s, %d bytes, owner %r)",
                model_id,
                type(entry.model).__name__,
                entry.nbytes,
                entry.owner,
            )
