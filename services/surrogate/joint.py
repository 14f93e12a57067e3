"""LIPO-E's surrogate (seed 001): the StructureAwareVAE over (instruction, exemplar set) and the
JointPromptGP over its z_joint (32-D by default), with Beta smoothing of observed error rates.

- `StructureAwareVAE`: instruction encoder d -> 256 -> 128 -> z_inst (16; BOLT tunes 12..32);
  exemplar-set encoder (Set Transformer: ISAB -> ISAB -> PMA) over the exemplars' embeddings ->
  z_ex (16; BOLT tunes 8..24); a residual joint refinement MLP over [z_inst || z_ex] -> z_joint.
  Decoders: z_inst -> instruction embedding (cosine loss), and a slot decoder: `num_slots` slots
  from z_ex, each attending over the exemplar pool and choosing one pool item or "empty" (a
  discrete selection of 0..num_slots exemplars).
- `JointPromptGP`: product kernel k_inst(z_inst) x k_ex(z_ex) (Matern 5/2, ARD each) with a
  FixedNoiseGaussianLikelihood whose noise is the Beta posterior variance of each observation,
  trained on every fidelity. BOLT's `use_deep_kernel` puts a small MLP before each factor.
- Acquisition: LogEI (seed 001) or BOLT's UCB (`ucb_beta`), less `distance_weight` times the
  normalised distance to the nearest observed z_joint (keeps InvBO near what the GP has seen).
"""

from __future__ import annotations

import copy
import math

import gpytorch
import numpy as np
import torch
import torch.nn.functional as F
from botorch.models.gpytorch import GPyTorchModel
from scipy.optimize import linear_sum_assignment
from torch import nn

from services.common.cancellation import check_caller
from services.surrogate.acquisition import latent_bounds, log_ei
from services.surrogate.core import Surrogate, tensor_bytes
from services.surrogate.types import AcquisitionConfig, JointGpConfig, JointVaeConfig, JointVaeResult

INST_DIM = 16
EX_DIM = 16
JOINT_DIM = INST_DIM + EX_DIM


class MAB(nn.Module):
    """Multihead attention block (Lee et al., 2019): H = LN(X + MHA(X, Y)); LN(H + rFF(H))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x, y, y_padding=None):
        h = self.ln1(x + self.attention(x, y, y, key_padding_mask=y_padding, need_weights=False)[0])
        return self.ln2(h + self.ff(h))


class ISAB(nn.Module):
    """Induced set attention block: inducing points attend to the set, the set attends back."""

    def __init__(self, dim: int, heads: int, num_inducing: int):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, num_inducing, dim) / math.sqrt(dim))
        self.mab1, self.mab2 = MAB(dim, heads), MAB(dim, heads)

    def forward(self, x, padding):
        h = self.mab1(self.inducing.expand(x.shape[0], -1, -1), x, padding)
        return self.mab2(x, h)


class PMA(nn.Module):
    """Pooling by multihead attention with one seed vector: a set -> one vector."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.seed = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.mab = MAB(dim, heads)

    def forward(self, x, padding):
        return self.mab(self.seed.expand(x.shape[0], -1, -1), x, padding).squeeze(1)


def pad_sets(sets: list[list[int]], num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exemplar id sets -> (ids [n, 1 + num_slots] with -1 padding, padding mask). Position 0 is a
    learned "set" token, so an empty set (zero-shot) is still a set the encoder can read."""
    ids = torch.full((len(sets), num_slots), -1, dtype=torch.long)
    for row, members in enumerate(sets):
        if len(members) > num_slots:
            raise ValueError(f"an exemplar set has {len(members)} members, more than num_slots {num_slots}")
        ids[row, : len(members)] = torch.as_tensor(list(members), dtype=torch.long)
    padding = torch.cat([torch.zeros(len(sets), 1, dtype=torch.bool), ids < 0], dim=1)
    return ids, padding


class StructureAwareVAE(nn.Module):
    """(instruction embedding, exemplar set over a pool) <-> z_joint = [z_inst || z_ex] (see module docstring).

    Args:
        input_dim: embedding dimension d (768 for GTR).
        pool: [P, d] embeddings of the exemplar pool (Q/A text), a buffer of the model.
        num_slots: most exemplars per set (8).
    """

    def __init__(
        self,
        input_dim: int,
        pool: torch.Tensor,
        num_slots: int = 8,
        inst_dim: int = INST_DIM,
        ex_dim: int = EX_DIM,
        set_dim: int = 128,
        heads: int = 4,
    ):
        super().__init__()
        self.input_dim, self.num_slots, self.inst_dim, self.ex_dim = input_dim, num_slots, inst_dim, ex_dim
        self.joint_dim = inst_dim + ex_dim
        self.register_buffer("pool", F.normalize(pool.float(), dim=-1))
        self.inst_encoder = nn.Sequential(
            nn.Linear(input_dim, 256), nn.GELU(), nn.LayerNorm(256), nn.Linear(256, 128), nn.GELU(), nn.LayerNorm(128)
        )
        self.inst_head = nn.Linear(128, 2 * inst_dim)
        self.set_token = nn.Parameter(torch.zeros(1, 1, set_dim))
        self.item_proj = nn.Linear(input_dim, set_dim)
        self.isab1 = ISAB(set_dim, heads, num_inducing=4)
        self.isab2 = ISAB(set_dim, heads, num_inducing=4)
        self.pma = PMA(set_dim, heads)
        self.ex_head = nn.Linear(set_dim, 2 * ex_dim)
        self.refine = nn.Sequential(nn.Linear(self.joint_dim, 64), nn.GELU(), nn.Linear(64, self.joint_dim))
        self.inst_decoder = nn.Sequential(
            nn.Linear(inst_dim, 128), nn.GELU(), nn.LayerNorm(128), nn.Linear(128, 256), nn.GELU(),
            nn.LayerNorm(256), nn.Linear(256, input_dim),
        )  # fmt: skip
        self.slots = nn.Sequential(nn.Linear(ex_dim, 128), nn.GELU(), nn.Linear(128, num_slots * set_dim))
        self.pool_keys = nn.Linear(input_dim, set_dim)
        self.empty_key = nn.Parameter(torch.zeros(set_dim))

    def encode(self, inst: torch.Tensor, ids: torch.Tensor, padding: torch.Tensor):
        """-> (mu [n, joint_dim], log_var [n, joint_dim]) of [z_inst || z_ex]."""
        mu_i, lv_i = self.inst_head(self.inst_encoder(inst)).chunk(2, dim=-1)
        items = self.item_proj(self.pool[ids.clamp_min(0)])
        x = torch.cat([self.set_token.expand(len(ids), -1, -1), items], dim=1)
        h = self.isab2(self.isab1(x, padding), padding)
        mu_e, lv_e = self.ex_head(self.pma(h, padding)).chunk(2, dim=-1)
        return torch.cat([mu_i, mu_e], -1), torch.cat([lv_i, lv_e], -1).clamp(-20.0, 10.0)

    def joint(self, z: torch.Tensor) -> torch.Tensor:
        """Joint refinement z + MLP(z): the residual keeps z_inst instruction-led and z_ex exemplar-led."""
        return z + self.refine(z)

    def decode_instruction(self, z_joint: torch.Tensor) -> torch.Tensor:
        """z_joint [n, joint_dim] -> unit-norm instruction embeddings [n, d]."""
        return F.normalize(self.inst_decoder(z_joint[..., : self.inst_dim]), dim=-1)

    def slot_logits(self, z_joint: torch.Tensor) -> torch.Tensor:
        """z_joint [n, joint_dim] -> [n, num_slots, P + 1] scores over the pool items and "empty" (last)."""
        slots = self.slots(z_joint[..., self.inst_dim :]).view(len(z_joint), self.num_slots, -1)
        keys = torch.cat([self.pool_keys(self.pool), self.empty_key[None]], dim=0)
        return slots @ keys.T / math.sqrt(keys.shape[-1])

    def decode_exemplars(self, z_joint: torch.Tensor) -> list[list[int]]:
        """z_joint -> exemplar id sets: each slot's argmax, "empty" and repeats dropped, slot order kept."""
        choice = self.slot_logits(z_joint).argmax(-1).tolist()
        empty = len(self.pool)
        return [list(dict.fromkeys(c for c in row if c != empty)) for row in choice]

    def embed(self, inst: torch.Tensor, sets: list[list[int]]) -> torch.Tensor:
        """Deterministic z_joint (posterior means) of (instruction embedding, exemplar set) pairs."""
        ids, padding = pad_sets(sets, self.num_slots)
        mu, _ = self.encode(inst, ids, padding)
        return self.joint(mu)


def slot_targets(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-slot target ids: members matched to slots by the Hungarian algorithm on -log p (the
    set is unordered), unmatched slots target "empty"."""
    empty = logits.shape[-1] - 1
    targets = torch.full(ids.shape[:1] + (logits.shape[1],), empty, dtype=torch.long)
    log_p = logits.detach().log_softmax(-1)
    for row in range(len(ids)):
        members = ids[row][ids[row] >= 0]
        if len(members):
            slot, member = linear_sum_assignment(-log_p[row][:, members].numpy())
            targets[row, torch.as_tensor(slot)] = members[torch.as_tensor(member)]
    return targets


def random_sets(rng: np.random.Generator, count: int, pool_size: int, config: JointVaeConfig) -> list[list[int]]:
    """`count` exemplar sets of min_exemplars..num_slots distinct pool ids (sizes uniform)."""
    sizes = rng.integers(config.min_exemplars, min(config.num_slots, pool_size) + 1, size=count)
    return [rng.choice(pool_size, size=int(k), replace=False).tolist() for k in sizes]


def set_f1(predicted: list[list[int]], target: list[list[int]]) -> float:
    """Mean F1 between decoded and true exemplar sets (1 when both are empty)."""
    scores = []
    for p, t in zip(predicted, target, strict=True):
        p, t = set(p), set(t)
        scores.append(1.0 if not p and not t else 2 * len(p & t) / (len(p) + len(t)))
    return float(np.mean(scores))


def _draw(rng: np.random.Generator, instructions: torch.Tensor, pool_size: int, config: JointVaeConfig):
    """`samples` (instruction embedding, random exemplar set) pairs: x [n, d], sets, ids, padding."""
    rows = torch.as_tensor(rng.integers(0, len(instructions), size=config.samples))
    sets = random_sets(rng, config.samples, pool_size, config)
    return instructions[rows], sets, *pad_sets(sets, config.num_slots)


def train_joint_vae(
    instructions: torch.Tensor, pool: torch.Tensor, config: JointVaeConfig, progress=lambda epoch, loss: None
) -> tuple[StructureAwareVAE, JointVaeResult]:
    """Train on (instruction, random exemplar set) pairs drawn afresh every epoch: instruction
    cosine reconstruction + mse_weight * MSE + slot cross-entropy + beta KL. Returns the best checkpoint by epoch loss
    and its quality on `samples` held-out pairs (new random sets, drawn after training)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = StructureAwareVAE(instructions.shape[1], pool, config.num_slots, config.inst_dim, config.ex_dim)
    instructions = F.normalize(instructions.float(), dim=-1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    best, best_loss, stale, epoch = copy.deepcopy(model.state_dict()), math.inf, 0, 0
    for epoch in range(1, config.epochs + 1):  # noqa: B007 - epoch is reported after the loop
        check_caller()
        model.train()
        x, _, ids, padding = _draw(rng, instructions, len(pool), config)
        order = torch.randperm(config.samples)
        total = 0.0
        for start in range(0, config.samples, config.batch_size):
            batch = order[start : start + config.batch_size]
            mu, log_var = model.encode(x[batch], ids[batch], padding[batch])
            z = model.joint(mu + torch.randn_like(mu) * torch.exp(0.5 * log_var))
            decoded = model.decode_instruction(z)
            recon = (1 - F.cosine_similarity(decoded, x[batch], dim=-1)).mean()
            recon = recon + config.mse_weight * (decoded - x[batch]).pow(2).sum(-1).mean()
            logits = model.slot_logits(z)
            slots = F.cross_entropy(logits.flatten(0, 1), slot_targets(logits, ids[batch]).flatten())
            kl = -0.5 * torch.mean(torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1))
            loss = recon + slots + config.beta * kl
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(batch)
        total /= config.samples
        progress(epoch, total)
        if total < best_loss - 1e-5:
            best, best_loss, stale = copy.deepcopy(model.state_dict()), total, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best)
    model.eval()
    x, sets, ids, padding = _draw(rng, instructions, len(pool), config)
    with torch.no_grad():
        z = model.embed(x, sets)
        cosine = float(F.cosine_similarity(model.decode_instruction(z), x, dim=-1).mean())
        f1 = set_f1(model.decode_exemplars(z), sets)
        mu, log_var = model.encode(x, ids, padding)
        kl = float(-0.5 * torch.mean(torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1)))
    return model, JointVaeResult(epoch, best_loss, cosine, f1, kl_divergence=kl)


# ---------------------------------------------------------------- Beta smoothing and the GP


def fit_beta_prior(error_rates: np.ndarray) -> tuple[float, float]:
    """Empirical-Bayes Beta(alpha, beta) prior of error rates by the method of moments
    (alpha + beta = m(1 - m)/v - 1); Beta(1, 1) when the rates have no usable spread."""
    rates = np.clip(np.asarray(error_rates, dtype=float), 1e-6, 1 - 1e-6)
    mean, var = float(rates.mean()), float(rates.var())
    if len(rates) < 2 or var <= 0 or var >= mean * (1 - mean):
        return 1.0, 1.0
    common = mean * (1 - mean) / var - 1
    return mean * common, (1 - mean) * common


def beta_smooth(errors: np.ndarray, fidelities: np.ndarray, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Seed 001: smoothed error (k + alpha) / (n + alpha + beta) and its Beta posterior variance
    s (1 - s) / (n + alpha + beta + 1), for k = error rate x n observed errors of n questions."""
    n = np.asarray(fidelities, dtype=float)
    k = np.asarray(errors, dtype=float) * n
    smoothed = (k + alpha) / (n + alpha + beta)
    return smoothed, smoothed * (1 - smoothed) / (n + alpha + beta + 1)


class _ProductKernelGP(gpytorch.models.ExactGP, GPyTorchModel):
    """Matern 5/2 over [z_inst || z_ex]: a product of one ARD kernel per block (or one kernel over
    all); with `deep`, each block first passes its own MLP (dim -> dim, tanh), trained with the GP."""

    _num_outputs = 1

    def __init__(self, x, y, likelihood, product: bool, inst_dim: int, deep: bool):
        super().__init__(x, y, likelihood)
        width = x.shape[-1]
        self.blocks = [(0, inst_dim), (inst_dim, width)] if product or deep else [(0, width)]
        self.features = (
            nn.ModuleList(
                nn.Sequential(nn.Linear(b - a, b - a), nn.Tanh(), nn.Linear(b - a, b - a)) for a, b in self.blocks
            )
            if deep
            else None
        )
        self.mean_module = gpytorch.means.ConstantMean()
        if product:
            inst = gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=inst_dim, active_dims=tuple(range(inst_dim)))
            ex = gpytorch.kernels.MaternKernel(
                nu=2.5, ard_num_dims=width - inst_dim, active_dims=tuple(range(inst_dim, width))
            )
            base = inst * ex
        else:
            base = gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=width)
        self.covar_module = gpytorch.kernels.ScaleKernel(base)

    def forward(self, x):
        if self.features is not None:
            x = torch.cat([f(x[..., a:b]) for f, (a, b) in zip(self.features, self.blocks, strict=True)], -1)
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    def lengthscales(self) -> list[np.ndarray]:
        """The ARD lengthscales of each kernel factor (one array per factor)."""
        base = self.covar_module.base_kernel
        kernels = base.kernels if hasattr(base, "kernels") else [base]
        return [k.lengthscale.detach().reshape(-1).numpy() for k in kernels]


class JointPromptGP(Surrogate):
    """Error-rate GP over z_joint on observations at any fidelity (see module docstring).

    Targets are Beta-smoothed errors, standardised; each observation's noise is its Beta
    variance in standardised units. Prediction, LogEI and UCB are for minimisation of error.
    """

    def __init__(self, z, errors, fidelities, config: JointGpConfig | None = None):
        z, errors, fidelities = np.asarray(z, float), np.asarray(errors, float), np.asarray(fidelities, float)
        self.config = config = config or JointGpConfig()
        if z.ndim != 2 or z.shape[1] <= config.inst_dim:
            raise ValueError(
                f"z must have shape [n, inst_dim + ex_dim], inst_dim {config.inst_dim}, got {list(z.shape)}"
            )
        if len(errors) != len(z) or len(fidelities) != len(z) or len(z) < 2:
            raise ValueError("errors and fidelities need one value per row of z, and at least 2 rows")
        if np.any((errors < 0) | (errors > 1)) or np.any(fidelities <= 0):
            raise ValueError("errors must lie in [0, 1] and fidelities be positive")
        if config.beta_smoothing:
            self.prior = fit_beta_prior(errors)
            target, noise = beta_smooth(errors, fidelities, *self.prior)
        else:
            self.prior = (0.0, 0.0)
            target = errors
            noise = np.full_like(errors, max(errors.mean() * (1 - errors.mean()), 1e-4)) / fidelities
        self.y_mean, self.y_std = float(target.mean()), float(target.std() or 1.0)
        self.x = torch.as_tensor(z, dtype=torch.float64)
        self.y = torch.as_tensor((target - self.y_mean) / self.y_std, dtype=torch.float64)
        noise = torch.as_tensor(noise / self.y_std**2, dtype=torch.float64).clamp_min(1e-6)
        self.likelihood = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(noise=noise)
        torch.manual_seed(config.seed)
        self.model = _ProductKernelGP(
            self.x, self.y, self.likelihood, config.product, config.inst_dim, config.deep_kernel
        ).double()
        self.epochs_trained, self.mll = self._train()
        self.best_observed = float(target.min())

    def _train(self) -> tuple[int, float]:
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(self.likelihood, self.model)
        self.model.train()
        self.likelihood.train()
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        best, best_state, stale, epoch = math.inf, copy.deepcopy(self.model.state_dict()), 0, 0
        for epoch in range(1, self.config.epochs + 1):  # noqa: B007
            check_caller()
            optimizer.zero_grad()
            loss = -mll(self.model(self.x), self.y)
            loss.backward()
            optimizer.step()
            if loss.item() < best - 1e-4:
                best, best_state, stale = loss.item(), copy.deepcopy(self.model.state_dict()), 0
            else:
                stale += 1
                if stale >= self.config.patience:
                    break
        self.model.load_state_dict(best_state)
        self.model.eval()
        self.likelihood.eval()
        return epoch, -best

    def posterior(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent-function mean and std of the smoothed error at z [m, width] (differentiable)."""
        with gpytorch.settings.fast_pred_var():
            f = self.model(z.double())
        return f.mean * self.y_std + self.y_mean, f.variance.clamp_min(1e-12).sqrt() * self.y_std

    def _z(self, x) -> torch.Tensor:
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] != self.x.shape[1]:
            raise ValueError(f"x must have shape [m, {self.x.shape[1]}], got {list(x.shape)}")
        return torch.as_tensor(x, dtype=torch.float64)

    def predict(self, x):
        with torch.no_grad():
            mean, std = self.posterior(self._z(x))
        return mean.numpy(), (std**2).numpy()

    def log_ei(self, x, best_f=None):
        best = self.best_observed if best_f is None else best_f
        with torch.no_grad():
            mean, std = self.posterior(self._z(x))
            return log_ei(mean, std, best, minimize=True).numpy()

    def ucb(self, x, beta):
        mean, var = self.predict(x)
        return -mean + np.sqrt(beta * var)

    def acquisition(self, z: torch.Tensor, config: AcquisitionConfig) -> torch.Tensor:
        """The config's acquisition at z [m, width], differentiable: LogEI or UCB (beta `ucb_beta`,
        in standardised units), less distance_weight x the distance to the nearest observed z_joint
        (each dimension scaled by the observed range, divided by sqrt(width))."""
        mean, std = self.posterior(z)
        if config.acquisition == "ucb":
            value = (-mean + math.sqrt(config.ucb_beta) * std) / self.y_std
        else:
            value = log_ei(mean, std, self.best_observed)
        if config.distance_weight:
            span = (self.x.max(0).values - self.x.min(0).values).clamp_min(1e-6)
            gap = torch.cdist(z.double() / span, self.x / span).min(-1).values / math.sqrt(self.x.shape[1])
            value = value - config.distance_weight * gap
        return value

    def lengthscale_ratio(self) -> float:
        """Mean instruction lengthscale over mean exemplar lengthscale (product kernel; 1 otherwise)."""
        scales = self.model.lengthscales()
        return float(scales[0].mean() / scales[1].mean()) if len(scales) == 2 else 1.0

    def nbytes(self) -> int:
        return tensor_bytes(self.model, self.x, self.y)


# ---------------------------------------------------------------- proposals


def ascend(
    gp: JointPromptGP, param: torch.Tensor, to_joint, low, high, steps: int, lr: float, config: AcquisitionConfig
) -> None:
    """Adam on `param` (in place) maximising the GP's acquisition at `to_joint(param)`, projected
    back into the box [low, high] after every step."""
    optimizer = torch.optim.Adam([param], lr=lr)
    for _ in range(steps):
        check_caller()
        loss = -gp.acquisition(to_joint(param), config).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            param.copy_(torch.maximum(torch.minimum(param, high), low))


def propose_exemplars(
    vae: StructureAwareVAE,
    gp: JointPromptGP,
    instructions: torch.Tensor,
    steps: int = 20,
    restarts: int = 5,
    seed: int = 0,
    margin: float = 0.2,
) -> list[tuple[list[int], float]]:
    """Two-stage proposals, stage 2 (seed 001): for each instruction embedding, optimise z_ex by
    gradient ascent on LogEI (Adam, `steps` x `restarts` random starts, z_inst fixed at the
    instruction's encoding) inside the box of the GP's observed z_ex widened by `margin` (beyond
    it a constant-mean GP rewards distance itself), decode each restart's z_ex to an exemplar
    set, and keep the set whose re-encoded pair has the highest LogEI. Returns (exemplar ids,
    LogEI) per instruction."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    logei = AcquisitionConfig()
    low, high = latent_bounds(gp.x[:, vae.inst_dim :].float(), margin)
    for row in instructions.float():
        with torch.no_grad():
            ids, padding = pad_sets([[]], vae.num_slots)
            mu, _ = vae.encode(row[None], ids, padding)
        z_ex = (low + (high - low) * torch.rand(restarts, vae.ex_dim, generator=generator)).requires_grad_(True)
        z_inst = mu[:, : vae.inst_dim].expand(restarts, -1)
        # stay where the GP has seen exemplar sets (as InvBO's box)
        ascend(
            gp,
            z_ex,
            lambda z_ex, z_inst=z_inst: vae.joint(torch.cat([z_inst, z_ex], -1)),
            low,
            high,
            steps,
            0.1,
            logei,
        )
        with torch.no_grad():
            sets = vae.decode_exemplars(vae.joint(torch.cat([z_inst, z_ex], -1)))
            candidates = list({tuple(s): s for s in sets}.values())
            z = vae.embed(row[None].expand(len(candidates), -1), candidates)
            scores = gp.log_ei(z.numpy())
        best = int(np.argmax(scores))
        out.append((candidates[best], float(scores[best])))
    return out


def optimize_joint(
    gp: JointPromptGP, bounds: torch.Tensor, config: AcquisitionConfig, seed: int = 0
) -> tuple[np.ndarray, float]:
    """InvBO's step: the z_joint in `bounds` ([2, width]) maximising the config's acquisition: Adam
    (`maxiter` steps) from the best `num_restarts` of `raw_samples` uniform points, projected into
    the box. Returns (z, acquisition value)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = bounds[0].double(), bounds[1].double()
    raw = low + (high - low) * torch.rand(config.raw_samples, len(low), generator=generator, dtype=torch.float64)
    with torch.no_grad():
        scores = gp.acquisition(raw, config)
    z = raw[scores.topk(min(config.num_restarts, config.raw_samples)).indices].clone().requires_grad_(True)
    ascend(gp, z, lambda z: z, low, high, config.maxiter, 0.05 * float((high - low).mean()), config)
    with torch.no_grad():
        final = gp.acquisition(z.detach(), config)
    best = int(torch.argmax(final))
    return z.detach()[best].numpy(), float(final[best])
