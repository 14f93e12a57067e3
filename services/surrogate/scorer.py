"""BOLT's learned exemplar scorer (seed 004, phase 2): a Set Transformer that scores every pool
exemplar for an instruction, trained with the ListMLE ranking loss, and MMR selection of a
relevant yet diverse exemplar set from its scores (the tuner measures its quality: NDCG@8, MRR,
the ListMLE selection loss, exemplar diversity and variance).

- `ExemplarScorer`: each pool exemplar's embedding, projected and shifted by the instruction's
  projection, passes an ISAB (the pool as context, `num_inducing` inducing points, `heads`
  heads, width `hidden`); a small head maps [element || instruction] to one score.
- `list_mle`: -log P(the observed order | scores) under the Plackett-Luce model (Xia et al., 2008).
- `mmr_select`: greedy maximal marginal relevance, lambda * score - (1 - lambda) * max cosine to
  the exemplars already chosen (Carbonell & Goldstein, 1998).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.common.cancellation import check_caller
from services.surrogate.joint import ISAB
from services.surrogate.types import ScorerConfig, ScorerTraining


class ExemplarScorer(nn.Module):
    """Instruction embeddings [B, d] -> scores [B, P] of its pool (a unit-norm buffer; see module docstring)."""

    def __init__(self, pool: torch.Tensor, config: ScorerConfig):
        super().__init__()
        dim = pool.shape[1]
        self.config = config
        self.register_buffer("pool", F.normalize(pool.float(), dim=-1))
        self.instruction = nn.Linear(dim, config.hidden)
        self.item = nn.Linear(dim, config.hidden)
        self.context = ISAB(config.hidden, config.heads, config.num_inducing)
        self.head = nn.Sequential(nn.Linear(2 * config.hidden, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1))

    def forward(self, instructions: torch.Tensor) -> torch.Tensor:
        query = self.instruction(F.normalize(instructions.float(), dim=-1))  # [B, h]
        items = self.item(self.pool).unsqueeze(0) + query.unsqueeze(1)  # [B, P, h]
        padding = torch.zeros(items.shape[:2], dtype=torch.bool, device=items.device)
        h = self.context(items, padding)
        both = torch.cat([h, query.unsqueeze(1).expand_as(h)], dim=-1)
        return self.head(both).squeeze(-1)


def list_mle(scores: torch.Tensor, relevance: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean over rows of -log P(relevance's order | scores) (Plackett-Luce); items with NaN
    relevance (never evaluated) take no part. Ties come in a random order drawn from `generator`
    (each a valid order of the relevance), else in index order."""
    if generator is not None:
        shuffle = torch.argsort(torch.rand(relevance.shape, generator=generator), dim=-1)
        scores, relevance = torch.gather(scores, -1, shuffle), torch.gather(relevance, -1, shuffle)
    known = ~torch.isnan(relevance)
    order = torch.argsort(torch.where(known, relevance, -torch.inf), dim=-1, descending=True, stable=True)
    ranked = torch.gather(torch.where(known, scores, -torch.inf), -1, order)
    valid = torch.gather(known, -1, order)
    # log of the sum of exp over each suffix: position i normalises over items ranked i..P
    suffix = torch.logcumsumexp(ranked.flip(-1), dim=-1).flip(-1)
    return torch.where(valid, suffix - ranked, 0.0).sum(-1).mean()


def pointwise(scores: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the scores to each row's standardised relevance (known items only)."""
    known = ~torch.isnan(relevance)
    filled = torch.where(known, relevance, 0.0)
    count = known.sum(-1, keepdim=True).clamp_min(1)
    mean = filled.sum(-1, keepdim=True) / count
    std = (torch.where(known, filled - mean, 0.0).pow(2).sum(-1, keepdim=True) / count).sqrt().clamp_min(1e-6)
    return torch.where(known, (scores - (filled - mean) / std).pow(2), 0.0).sum() / known.sum().clamp_min(1)


def mmr_select(scores: np.ndarray, embeddings: np.ndarray, k: int, mmr_lambda: float) -> list[int]:
    """Greedy MMR: k indices, each maximising lambda * score - (1 - lambda) * its largest cosine
    to those already chosen (scores are min-max scaled to [0, 1] first, so lambda weighs like
    against like)."""
    if not 0 <= k <= len(scores):
        raise ValueError(f"k must be in [0, {len(scores)}], got {k}")
    span = float(np.ptp(scores))
    relevance = (scores - scores.min()) / span if span > 0 else np.zeros_like(scores, dtype=float)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    chosen: list[int] = []
    for _ in range(k):
        redundancy = (unit @ unit[chosen].T).max(axis=1) if chosen else np.zeros(len(scores))
        value = mmr_lambda * relevance - (1 - mmr_lambda) * redundancy
        value[chosen] = -math.inf
        chosen.append(int(np.argmax(value)))
    return chosen


def train_scorer(
    instructions: np.ndarray, pool: np.ndarray, relevance: np.ndarray, config: ScorerConfig
) -> tuple[ExemplarScorer, ScorerTraining]:
    """Fit an ExemplarScorer so that, for each instruction row, its scores rank the pool as
    `relevance` [n, P] does (NaN: unknown): the objective is a pointwise fit of the standardised
    relevance plus selection_weight x ListMLE, so the weight trades calibrated scores against the
    listwise order."""
    instructions_t = torch.as_tensor(np.asarray(instructions, dtype=np.float32))
    pool_t = torch.as_tensor(np.asarray(pool, dtype=np.float32))
    relevance_t = torch.as_tensor(np.asarray(relevance, dtype=np.float32))
    if instructions_t.ndim != 2 or pool_t.ndim != 2 or instructions_t.shape[1] != pool_t.shape[1]:
        shapes = f"{list(instructions_t.shape)} and {list(pool_t.shape)}"
        raise ValueError(f"instructions [n, d] and pool [P, d] must share d, got {shapes}")
    if tuple(relevance_t.shape) != (instructions_t.shape[0], pool_t.shape[0]):
        raise ValueError(f"relevance must have shape [{instructions_t.shape[0]}, {pool_t.shape[0]}]")
    torch.manual_seed(config.seed)
    ties = torch.Generator().manual_seed(config.seed)  # a fresh order of tied exemplars each epoch
    model = ExemplarScorer(pool_t, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    first = final = float("nan")
    model.train()
    for epoch in range(config.epochs):
        check_caller()
        scores = model(instructions_t)
        loss = list_mle(scores, relevance_t, ties)
        optimizer.zero_grad()
        (pointwise(scores, relevance_t) + config.selection_weight * loss).backward()
        optimizer.step()
        final = float(loss.detach())
        if epoch == 0:
            first = final
    model.eval()
    return model, ScorerTraining(config.epochs, first, final)


@torch.no_grad()
def score(model: ExemplarScorer, instructions: np.ndarray) -> np.ndarray:
    """Scores [n, P] of every pool exemplar for each instruction."""
    return model(torch.as_tensor(np.asarray(instructions, dtype=np.float32))).numpy()


def select(model: ExemplarScorer, instructions: np.ndarray, k: int, mmr_lambda: float | None = None):
    """(scores [n, P], per instruction the k exemplars MMR picks from them over the pool's embeddings)."""
    scores = score(model, instructions)
    lam = model.config.mmr_lambda if mmr_lambda is None else mmr_lambda
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"mmr_lambda must be in [0, 1], got {lam}")
    pool = model.pool.numpy()
    return scores, [mmr_select(row, pool, k, lam) for row in scores]
