"""InstructionVAE (seed 000): embeddings -> smooth 64-D latent -> L2-normalised reconstructions.

Also the frozen-VAE + trainable adapter (`VAEWithAdapter`) the deep-kernel GP works on, and
the InvBO latent inversion (find z whose decoding matches a target embedding).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from services.common.cancellation import check_caller
from services.surrogate.types import InversionConfig, VaeConfig


class InstructionVAE(nn.Module):
    """Encoder d -> 64 -> LN -> 32 -> LN -> 2 x latent; decoder latent -> 32 -> LN -> 64 -> LN -> hidden -> LN -> d."""

    def __init__(self, input_dim: int, latent_dim: int = 64, hidden_dim: int = 256):
        super().__init__()
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.encoder = nn.Sequential(
            nn.Linear(input_dim, 64),
            nn.GELU(),
            nn.LayerNorm(64),
            nn.Linear(64, 32),
            nn.GELU(),
            nn.LayerNorm(32),
            nn.Linear(32, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 32),
            nn.GELU(),
            nn.LayerNorm(32),
            nn.Linear(32, 64),
            nn.GELU(),
            nn.LayerNorm(64),
            nn.Linear(64, hidden_dim),
            nn.GELU(),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, input_dim),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [n, d] -> (mu, log_var), each [n, latent]."""
        mu, log_var = self.encoder(x).chunk(2, dim=-1)
        return mu, log_var.clamp(-20.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: [n, latent] -> unit-norm embeddings [n, d]."""
        return F.normalize(self.decoder(z), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return self.decode(z), mu, log_var


def vae_losses(x, recon, mu, log_var) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean(1 - cos(x, recon)), -0.5 * mean(sum(1 + log_var - mu^2 - exp(log_var))))."""
    recon_loss = (1 - F.cosine_similarity(x, recon, dim=-1)).mean()
    kl = -0.5 * torch.mean(torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1))
    return recon_loss, kl


def kl_beta(epoch: int, config: VaeConfig) -> float:
    """Linear KL annealing from 0 to beta over `annealing_epochs`, then constant."""
    if epoch < config.annealing_epochs:
        return config.beta * epoch / config.annealing_epochs
    return config.beta


@dataclasses.dataclass
class VaeTraining:
    """The seed's `vae_training` block (final losses: the returned checkpoint on the training rows,
    decoding mu) plus the best held-out reconstruction loss."""

    epochs_trained: int
    final_recon_loss: float
    final_kl_loss: float
    early_stopped: bool
    best_val_recon_loss: float


def train_vae(embeddings: torch.Tensor, config: VaeConfig, progress=None) -> tuple[InstructionVAE, VaeTraining]:
    """Fit an InstructionVAE with AdamW, cosine LR (T_max = 2 x epochs), grad clipping and early
    stopping on the held-out reconstruction loss; returns the best model (eval mode).

    Args:
        embeddings: [n, d] L2-normalised embeddings, n >= 2.
        progress: optional callable(epoch, recon, kl) called every 100 epochs.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings must be [n >= 2, d], got {list(embeddings.shape)}")
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    x = F.normalize(embeddings.float(), dim=-1)
    order = torch.randperm(x.shape[0], generator=generator)
    n_val = math.floor(config.val_fraction * x.shape[0])
    val, train = x[order[:n_val]], x[order[n_val:]]
    if n_val == 0:
        val = train
    model = InstructionVAE(x.shape[1], config.latent_dim, config.hidden_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2 * config.epochs, eta_min=config.eta_min)
    best, best_state, since_best = math.inf, copy.deepcopy(model.state_dict()), 0
    epoch = 0
    for epoch in range(config.epochs):
        check_caller()
        model.train()
        beta = kl_beta(epoch, config)
        perm = torch.randperm(train.shape[0], generator=generator)
        recon_sum = kl_sum = 0.0
        for start in range(0, train.shape[0], config.batch_size):
            batch = train[perm[start : start + config.batch_size]]
            recon, mu, log_var = model(batch)
            recon_loss, kl = vae_losses(batch, recon, mu, log_var)
            optimizer.zero_grad()
            (recon_loss + beta * kl).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            recon_sum += recon_loss.item() * batch.shape[0]
            kl_sum += kl.item() * batch.shape[0]
        scheduler.step()
        model.eval()
        with torch.no_grad():
            mu, _ = model.encode(val)
            val_recon = float((1 - F.cosine_similarity(val, model.decode(mu), dim=-1)).mean())
        if val_recon < best - 1e-6:
            best, best_state, since_best = val_recon, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
        if progress is not None and epoch % 100 == 0:
            progress(epoch, recon_sum / train.shape[0], kl_sum / train.shape[0])
        if since_best >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():  # the returned checkpoint's losses on the training rows (decoding mu)
        mu, log_var = model.encode(train)
        recon_loss, kl = vae_losses(train, model.decode(mu), mu, log_var)
    early = epoch + 1 < config.epochs
    return model, VaeTraining(epoch + 1, float(recon_loss), float(kl), early, best)


@torch.no_grad()
def vae_quality(model: InstructionVAE, embeddings: torch.Tensor) -> dict:
    """The seed's `vae_quality_metrics`: reconstruction cosine (mean/std over rows, decoding mu),
    mean KL per row, and active dimensions (variance of mu over rows > 0.01)."""
    x = F.normalize(embeddings.float(), dim=-1)
    mu, log_var = model.encode(x)
    cosine = F.cosine_similarity(x, model.decode(mu), dim=-1)
    kld = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1)
    active = int((mu.var(dim=0) > 0.01).sum()) if x.shape[0] > 1 else 0
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_std": float(cosine.std()) if x.shape[0] > 1 else 0.0,
        "kld_mean": float(kld.mean()),
        "active_dims": active,
        "total_dims": model.latent_dim,
    }


def make_adapter(latent_dim: int = 64, gp_latent_dim: int = 10) -> nn.Sequential:
    """The trainable adapter: latent -> 32 -> ReLU -> LayerNorm -> gp_latent_dim."""
    return nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, gp_latent_dim))


class VAEWithAdapter(nn.Module):
    """Frozen VAE + trainable adapter: x [n, d] -> mu [n, 64] (`encode_vae`) -> adapter [n, 10]."""

    def __init__(self, vae: InstructionVAE, gp_latent_dim: int = 10):
        super().__init__()
        self.vae = vae
        for parameter in self.vae.parameters():
            parameter.requires_grad_(False)
        self.adapter = make_adapter(vae.latent_dim, gp_latent_dim)

    def encode_vae(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, d] -> VAE means [n, latent]."""
        with torch.no_grad():
            return self.vae.encode(F.normalize(x.float(), dim=-1))[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[n, latent] -> unit-norm embeddings [n, d]."""
        return self.vae.decode(z.float())


def invert_latent(
    decode, target: torch.Tensor, z_init: torch.Tensor, config: InversionConfig | None = None
) -> tuple[torch.Tensor, float, int]:
    """Adam on z minimising 1 - cos(decode(z), target); stops once the loss is below the threshold.

    Args:
        decode: z [1, k] -> embedding [1, d] (differentiable).
        target: [d] or [1, d].
        z_init: [k] or [1, k] start point.

    Returns:
        (z [k], final loss, steps taken)
    """
    config = config or InversionConfig()
    target = target.reshape(1, -1).float()
    z = z_init.reshape(1, -1).detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=config.lr)
    steps = 0
    for step in range(1, config.n_steps + 1):
        check_caller()
        steps = step
        loss = 1 - F.cosine_similarity(decode(z), target, dim=-1).mean()
        if loss.item() < config.convergence_threshold:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        loss_value = float(1 - F.cosine_similarity(decode(z), target, dim=-1).mean())
    return z.detach().reshape(-1), loss_value, steps
