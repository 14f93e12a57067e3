"""EcoFlow's flow model (seed 003): a DiT-style velocity network with AdaLN time conditioning,
rectified-flow training (conditional flow matching from N(0, I) at t=0 to the data at t=1),
Euler/Heun ODE sampling, the LCB-guided sampler with the CFG-Zero* schedule, and checkpoints."""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from services.common.cancellation import check_caller
from services.flow.types import ODE_METHODS, ZERO_INIT_MODES, FlowSamples, GuidanceSettings


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """The velocity network and its training (the seed's --epochs 50 --batch-size 1024)."""

    hidden_dim: int = 512
    num_blocks: int = 6
    mlp_ratio: float = 4.0
    time_embed_dim: int = 256
    dropout: float = 0.0
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    normalize: bool = False  # standardise each dimension (mean/std stored with the model)
    val_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden_dim", "num_blocks", "time_embed_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.time_embed_dim % 2:
            raise ValueError(f"time_embed_dim must be even, got {self.time_embed_dim}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        for name in ("lr", "mlp_ratio", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """DiT's sinusoidal embedding of t in [0, 1] (scaled to [0, 1000]), shape [n, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class AdaLNBlock(nn.Module):
    """A DiT block for one token: LayerNorm modulated by the time (shift, scale), an MLP, and a
    gated residual; the modulation starts at zero (adaLN-Zero), so each block starts as identity."""

    def __init__(self, hidden: int, mlp_ratio: float, dropout: float):
        super().__init__()
        inner = int(hidden * mlp_ratio)
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(inner, hidden)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 3 * hidden))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class VelocityNetwork(nn.Module):
    """v(z, t): input projection, AdaLN blocks conditioned on the time embedding, a modulated
    final LayerNorm and a zero-initialised output projection."""

    def __init__(self, dim: int, config: FlowConfig = FlowConfig()):
        super().__init__()
        hidden = config.hidden_dim
        self.dim, self.time_embed_dim = dim, config.time_embed_dim
        self.input = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(config.time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(
            AdaLNBlock(hidden, config.mlp_ratio, config.dropout) for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.output = nn.Linear(hidden, dim)
        for layer in (self.final_modulation[1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.expand(z.shape[0]) if t.dim() == 0 else t
        c = self.time(timestep_embedding(t, self.time_embed_dim))
        h = self.input(z)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return self.output(self.final_norm(h) * (1 + scale) + shift)


class FlowMatchingModel(nn.Module):
    """Rectified flow: x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I) and x1 a (normalised) embedding;
    the velocity network regresses x1 - x0 (conditional flow matching). Sampling integrates
    dz/dt = v(z, t) from noise at t=0 to t=1 and maps back to embedding space."""

    def __init__(self, velocity: VelocityNetwork, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.velocity = velocity
        dim = velocity.dim
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(dim) if std is None else std.float().clone())

    @property
    def dim(self) -> int:
        return self.velocity.dim

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def loss(self, x1: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The CFM loss on a batch of normalised embeddings: mean squared error of the velocity."""
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        t = torch.rand(x1.shape[0], generator=generator, device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return ((self.velocity(xt, t) - (x1 - x0)) ** 2).mean()

    @torch.no_grad()
    def sample(
        self, n: int, num_steps: int = 50, method: str = "heun", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n embeddings (embedding space) by the unguided ODE."""
        z0 = torch.randn(n, self.dim, generator=generator, device=self.mean.device)
        return self.denormalize(integrate(lambda z, t, step: self.velocity(z, t), z0, num_steps, method))


def integrate(drift: Callable, z: torch.Tensor, num_steps: int, method: str = "heun") -> torch.Tensor:
    """dz/dt = drift(z, t, step) from t=0 to t=1 in `num_steps` equal steps (Euler or Heun)."""
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    h = 1.0 / num_steps
    for step in range(num_steps):
        check_caller()  # served over gRPC: stop once the caller is gone
        t = torch.full((z.shape[0],), step * h, device=z.device)
        k1 = drift(z, t, step)
        if method == "euler":
            z = z + h * k1
        else:
            k2 = drift(z + h * k1, t + h, step)
            z = z + 0.5 * h * (k1 + k2)
    return z


def zero_init_steps(fraction: float, num_steps: int) -> int:
    """Steps at the start that the CFG-Zero* schedule leaves unguided: ceil(fraction x steps)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"zero_init_fraction must lie in [0, 1], got {fraction}")
    return math.ceil(fraction * num_steps - 1e-9)


class GuidedFlowSampler:
    """Samples dz/dt = v(z, t) - lambda * grad_z LCB(z): `lcb(x)` is the GP's lower confidence
    bound of the error at embeddings x (differentiable, to be minimised), so guidance moves the
    trajectory toward prompts the GP is optimistic about. lambda(t) is constant; the first
    `zero_init_fraction` of the steps carry no guidance (the seed's CFG-Zero* schedule) or, with
    zero_init="velocity", no velocity at all (CFG-Zero*'s own zero-init)."""

    def __init__(
        self,
        flow: FlowMatchingModel,
        lcb: Callable[[torch.Tensor], torch.Tensor] | None = None,
        guidance_strength: float = 1.0,
        num_steps: int = 50,
        method: str = "heun",
        zero_init_fraction: float = 0.04,
        zero_init: str = "guidance",
    ):
        if zero_init not in ZERO_INIT_MODES:
            raise ValueError(f"zero_init must be one of {ZERO_INIT_MODES}, got {zero_init!r}")
        if guidance_strength < 0 or not math.isfinite(guidance_strength):
            raise ValueError(f"guidance_strength must be finite and >= 0, got {guidance_strength}")
        if guidance_strength > 0 and lcb is None:
            raise ValueError("guidance needs a GP (its LCB); set guidance_strength 0 to sample unguided")
        if method not in ODE_METHODS:
            raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
        self.flow, self.lcb = flow, lcb
        self.guidance_strength, self.num_steps, self.method = guidance_strength, num_steps, method
        self.zero_steps = zero_init_steps(zero_init_fraction, num_steps)
        self.zero_init = zero_init
        self.guided_steps: list[int] = []  # steps of the last sample() that applied guidance

    def guidance(self, z: torch.Tensor) -> torch.Tensor:
        """-grad_z LCB(denormalize(z)), the direction that lowers the error's LCB."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.lcb(self.flow.denormalize(z)).sum(), z)
        return -gradient

    def drift(self, z: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        if step < self.zero_steps:
            return torch.zeros_like(z) if self.zero_init == "velocity" else self.flow.velocity(z, t)
        v = self.flow.velocity(z, t)
        if self.guidance_strength == 0:
            return v
        if not self.guided_steps or self.guided_steps[-1] != step:
            self.guided_steps.append(step)
        return v + self.guidance_strength * self.guidance(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n embeddings (embedding space)."""
        self.guided_steps = []
        z0 = torch.randn(n, self.flow.dim, generator=generator, device=self.flow.mean.device)
        return self.flow.denormalize(integrate(self.drift, z0, self.num_steps, self.method))


CHECK_ROWS = 65536  # embeddings checked for finiteness at a time
CANCEL_POLL_BATCHES = 16  # training batches between checks for a cancelled run


def load_embeddings(path: str | Path, finite: bool = True) -> torch.Tensor:
    """Embeddings [n, d] (float) from a .pt file: a tensor, or the corpus recipe's {"embeddings": ...}.
    Memory-mapped: a large corpus is paged in as it is read, not copied up front."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data {str(path)!r} does not exist on the surrogate")
    return _embeddings(path, f"data {str(path)!r}", finite, mmap=True)


def parse_embeddings(content: bytes) -> torch.Tensor:
    """Embeddings [n, d] from the bytes of such a .pt file (an upload's check); ValueError otherwise.
    torch.save stores its archive's entries uncompressed; a compressed entry is refused, since it
    could expand without bound when loaded."""
    if zipfile.is_zipfile(io.BytesIO(content)):
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            if any(entry.compress_type != zipfile.ZIP_STORED for entry in archive.infolist()):
                raise ValueError("the file's archive has compressed entries (torch.save writes none)")
    return _embeddings(io.BytesIO(content), "the file", finite=True)


def _embeddings(source, label: str, finite: bool, mmap: bool = False) -> torch.Tensor:
    try:
        saved = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same mistake to the user
        raise ValueError(f"{label} is not a torch file of embeddings: {exc}") from exc
    x = saved.get("embeddings") if isinstance(saved, dict) else saved
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 4:
        raise ValueError(f"{label} must hold embeddings [n >= 4, d] (a tensor or {{'embeddings': ...}})")
    if finite:
        check_finite(x, label)
    return x.float()


def check_finite(x: torch.Tensor, label: str) -> None:
    """ValueError unless every value is finite (checked CHECK_ROWS rows at a time: no full-size mask)."""
    for start in range(0, x.shape[0], CHECK_ROWS):
        if not torch.isfinite(x[start : start + CHECK_ROWS]).all():
            raise ValueError(f"{label} has non-finite embeddings")


def split(x: torch.Tensor, config: FlowConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) rows of the embeddings, fixed by the config's seed and val_fraction."""
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(config.seed))
    n_val = min(x.shape[0] - 1, max(1, round(config.val_fraction * x.shape[0])))
    return x[order[n_val:]], x[order[:n_val]]


def nearest_l2(points: torch.Tensor, reference: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Each point's L2 distance to its nearest reference row, shape [m] (reference in chunks)."""
    best = torch.full((points.shape[0],), math.inf, device=points.device)
    for start in range(0, reference.shape[0], chunk):
        distances = torch.cdist(points.float(), reference[start : start + chunk].to(points.device).float())
        best = torch.minimum(best, distances.min(dim=1).values)
    return best


@dataclasses.dataclass
class EpochLosses:
    epoch: int
    train_loss: float
    val_loss: float


class FlowTrainer:
    """Trains a FlowMatchingModel on embeddings [n, d] one epoch at a time (AdamW, gradient
    clipping, a fixed validation split) on `device`. The embeddings stay in host memory (a corpus
    of the seed's size does not fit a GPU slice); each batch moves to the device and is normalised
    there. Its state round-trips through checkpoints for resume (on another kind of device the
    noise stream restarts from the seed and the epoch)."""

    def __init__(self, embeddings: torch.Tensor, config: FlowConfig = FlowConfig(), device: str = "cpu"):
        if embeddings.dim() != 2 or embeddings.shape[0] < 4:
            raise ValueError(f"embeddings must be [n >= 4, d], got {list(embeddings.shape)}")
        check_finite(embeddings, "embeddings")
        self.config, self.device = config, torch.device(device)
        self.train, self.val = split(embeddings.float(), config)
        mean, std = (self.train.mean(0), self.train.std(0).clamp_min(1e-6)) if config.normalize else (None, None)
        # seeded initialisation without touching the process's CPU or CUDA generators
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
            torch.manual_seed(config.seed)
            self.model = FlowMatchingModel(VelocityNetwork(embeddings.shape[1], config), mean, std).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.history: list[EpochLosses] = []

    @property
    def epoch(self) -> int:
        return len(self.history)

    def batch(self, rows: torch.Tensor) -> torch.Tensor:
        """Training rows (host indices) on the device, normalised."""
        return self.model.normalize(self.train[rows].to(self.device, non_blocking=True))

    def run_epoch(self, should_stop: Callable[[], bool] = lambda: False) -> EpochLosses:
        """One pass over the training split; `should_stop` is polled every CANCEL_POLL_BATCHES batches."""
        self.model.train()
        order = torch.randperm(self.train.shape[0], generator=self.generator, device=self.device).cpu()
        total, batches = torch.zeros((), device=self.device), 0
        for start in range(0, self.train.shape[0], self.config.batch_size):
            if batches % CANCEL_POLL_BATCHES == 0 and should_stop():
                raise InterruptedError("stopped mid-epoch")
            loss = self.model.loss(self.batch(order[start : start + self.config.batch_size]), self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            total, batches = total + loss.detach(), batches + 1
        losses = EpochLosses(self.epoch + 1, float(total) / batches, self.validation_loss())
        self.history.append(losses)
        return losses

    @torch.no_grad()
    def validation_loss(self, repeats: int = 4) -> float:
        """The CFM loss on the held-out split (in batches), averaged over fixed noise draws
        (comparable across epochs)."""
        self.model.eval()
        generator = torch.Generator(self.device).manual_seed(self.config.seed + 2)
        total = 0.0
        for _ in range(repeats):
            for start in range(0, self.val.shape[0], self.config.batch_size):
                chunk = self.val[start : start + self.config.batch_size].to(self.device)
                total += float(self.model.loss(self.model.normalize(chunk), generator)) * chunk.shape[0]
        return total / (repeats * self.val.shape[0])

    def state(self) -> dict:
        """The optimizer, noise stream and history (the weights travel as the checkpoint's model)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "generator_device": self.device.type,
            "history": [dataclasses.asdict(h) for h in self.history],
        }

    def load_state(self, state: dict, model: FlowMatchingModel) -> None:
        """Continue from a checkpoint: its model's weights and this trainer's `state()`."""
        self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = [EpochLosses(**h) for h in state["history"]]
        if state.get("generator_device", "cpu") == self.device.type:
            self.generator.set_state(state["generator"])
        else:
            self.generator.manual_seed(self.config.seed + 1 + self.epoch)


HELD_OUT_REFERENCE = 1000  # held-out embeddings the on-manifold reference distance is measured on


class FlowCache:
    """Loaded flow checkpoints (model on `device`, facts) by path, reloaded when the file changes
    (a run's best_flow.pt improves while it trains), at most `max_models` (least recently used
    dropped first), and the training data split of one checkpoint's run for the manifold."""

    def __init__(self, device: str = "cpu", max_models: int = 4):
        self.device, self.max_models = torch.device(device), max_models
        self._models: collections.OrderedDict[str, tuple[tuple, FlowMatchingModel, dict]] = collections.OrderedDict()
        self._data: dict[tuple, tuple[torch.Tensor, float]] = {}
        self._lock = threading.Lock()

    def get(self, path: str | Path) -> tuple[FlowMatchingModel, dict]:
        path = Path(path)
        info = path.stat() if path.is_file() else None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino) if info else None  # a rewrite within one tick too
        with self._lock:
            cached = self._models.get(str(path))
            if cached is not None and cached[0] == stamp:
                self._models.move_to_end(str(path))
                return cached[1], cached[2]
        model, facts = load_flow(path)
        model = model.to(self.device)
        with self._lock:
            self._models[str(path)] = (stamp, model, facts)
            self._models.move_to_end(str(path))
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
        return model, facts

    def manifold(self, path: str | Path) -> tuple[torch.Tensor, float]:
        """(training embeddings of the checkpoint's run, split as it trained; the mean L2 of up to
        HELD_OUT_REFERENCE of its held-out embeddings to their nearest training one)."""
        _, facts = self.get(path)
        source = facts.get("data")
        if not source or not Path(source).is_file():
            raise ValueError(f"checkpoint {str(path)!r} records no training data on the surrogate ({source!r})")
        config = facts["config"]
        key = (source, Path(source).stat().st_mtime, config.seed, config.val_fraction)
        with self._lock:
            cached = self._data.get(key)
        if cached is None:
            train, held_out = split(load_embeddings(source, finite=False), config)  # host memory; compared in chunks
            cached = (train, float(nearest_l2(held_out[:HELD_OUT_REFERENCE], train).mean()))
            with self._lock:
                self._data = {key: cached}  # one corpus at a time: they can be large
        return cached


class ErrorModel(Protocol):
    """What guides sampling: a GP of errors over `dim`-D embeddings with a differentiable LCB
    (the surrogate's exact GP of errors, in the process that hosts both services)."""

    dim: int

    def lcb(self, x: torch.Tensor, alpha: float = 1.0, standardized: bool = False) -> torch.Tensor: ...


class FlowSampling:
    """EcoFlow's samples from flow checkpoints (cached on `device`), guided by an ErrorModel."""

    def __init__(self, device: str = "cpu"):
        self.flows = FlowCache(device)  # flows sample on the device; GPs stay on the CPU

    def sample(
        self,
        checkpoint: str,
        n: int,
        guide: ErrorModel | None = None,
        settings: GuidanceSettings | None = None,
        seed: int = 0,
        manifold_distance: bool = False,
    ) -> FlowSamples:
        """`n` samples of `checkpoint`. With `guide` and guidance_strength > 0 the ODE is guided
        by -grad LCB (in standardised units); the LCB is reported as an error rate.
        `manifold_distance` measures each sample's L2 to its nearest training embedding of the
        checkpoint's data."""
        settings = settings or GuidanceSettings()
        flow, _ = self.flows.get(checkpoint)
        if guide is not None and guide.dim != flow.dim:
            raise ValueError(f"model_id's GP is over {guide.dim}-D inputs but the flow samples {flow.dim}-D embeddings")
        alpha = settings.alpha

        def lcb(x):  # guidance follows the LCB in standardised units
            return guide.lcb(x.cpu(), alpha, standardized=True).to(x.device)

        sampler = GuidedFlowSampler(
            flow,
            lcb if guide is not None else None,
            settings.guidance_strength,
            settings.num_steps,
            settings.method,
            settings.zero_init_fraction,
            settings.zero_init,
        )
        samples = sampler.sample(n, torch.Generator(self.flows.device).manual_seed(int(seed)))
        values = None
        if guide is not None:
            with torch.no_grad():
                values = guide.lcb(samples.cpu(), alpha).numpy()  # reported as an error rate
        result = FlowSamples(samples.cpu().numpy(), values, len(sampler.guided_steps))
        if manifold_distance:
            train, reference = self.flows.manifold(checkpoint)
            result = dataclasses.replace(
                result, nearest_train_l2=nearest_l2(samples, train).cpu().numpy(), heldout_nearest_l2=reference
            )
        return result


def save_flow(path: str | Path, model: FlowMatchingModel, config: FlowConfig, **extra) -> None:
    """A checkpoint with the model, its config and `extra` facts (epoch, losses, data), written
    through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"config": dataclasses.asdict(config), "dim": model.dim, "model": model.state_dict(), **extra}, tmp)
    tmp.replace(path)


def load_flow(path: str | Path) -> tuple[FlowMatchingModel, dict]:
    """(model in eval mode, the checkpoint's facts); ValueError when it is not a flow checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"flow checkpoint {str(path)!r} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict):
            raise TypeError(f"a {type(saved).__name__}, not a checkpoint")
        config = FlowConfig(**saved["config"])
        model = FlowMatchingModel(VelocityNetwork(saved["dim"], config))
        model.load_state_dict(saved["model"])
    except (KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{str(path)!r} is not a flow checkpoint: {exc}") from exc
    model.eval()
    return model, {k: v for k, v in saved.items() if k not in ("model", "config")} | {"config": config}
