"""`make bench` (EcoFlow part): guided sampling on the CPU defaults, in process.

A flow (the seed's DiT velocity network, smaller: 256 wide, 4 blocks) trained on the embedding
corpus recipe's default sources with the embedded MiniLM encoder (384-D), and the exact GP of
error rates (SonarGPSurrogate) fitted on the 100 recorded Qwen2.5-7B instructions' GSM8K test
errors. For lambda in {0, 1, 2} and zero-init fractions {0, 0.04, 0.1}: the mean LCB of the
error (alpha 1; lower is better) and the mean L2 to the nearest training embedding of 200 guided
samples (Heun, 50 steps), beside the held-out embeddings' own L2 (what on-manifold looks like).
The seed reports LCB 0.824 / L2 0.343 at lambda 1 and 0.835 / 0.359 at lambda 2 for SONAR
(1024-D, its own GP and scale: compare the trends, not the numbers).

Run it alone: it uses both cores. Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from services.common.config import datasets_dir
from services.encoder.__main__ import EncoderConfig
from services.encoder.core import make_embedder
from services.encoder.corpus import SOURCES, corpus_texts
from services.flow.core import FlowConfig, FlowTrainer, GuidedFlowSampler, nearest_l2
from services.optimizer.algorithms.inputs import parse_evaluations
from services.surrogate.core import SonarGPSurrogate

EPOCHS = int(os.environ.get("ECOFLOW_BENCH_EPOCHS", "30"))
SAMPLES = 200
FLOW = FlowConfig(hidden_dim=256, num_blocks=4, batch_size=256, lr=1e-3, normalize=True, epochs=EPOCHS)


def main() -> None:
    embedder = make_embedder(EncoderConfig().model)
    texts = [text for _, text in corpus_texts(datasets_dir(), SOURCES)]
    started = time.monotonic()
    x = torch.as_tensor(np.asarray(embedder.encode(texts), dtype=np.float32))
    seconds = time.monotonic() - started
    print(f"corpus: {len(texts)} texts ({', '.join(SOURCES)}), {x.shape[1]}-D, embedded in {seconds:.0f} s")
    trainer = FlowTrainer(x, FLOW)
    started = time.monotonic()
    for _ in range(EPOCHS):
        losses = trainer.run_epoch()
    print(
        f"flow: {EPOCHS} epochs in {time.monotonic() - started:.0f} s, final train loss {losses.train_loss:.4f}, "
        f"validation loss {losses.val_loss:.4f}"
    )
    recorded = parse_evaluations((datasets_dir() / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json").read_bytes())
    instructions, errors = [r["instruction"] for r in recorded], [r["error"] for r in recorded]
    gp = SonarGPSurrogate(np.asarray(embedder.encode(list(instructions)), dtype=np.float64), np.asarray(errors))
    heldout = float(nearest_l2(trainer.val, trainer.train).mean())
    print(
        f"GP: {len(errors)} recorded instructions, error {min(errors):.3f}-{max(errors):.3f}; "
        f"held-out embeddings' L2 to the nearest training one: {heldout:.4f}"
    )
    rows = []
    for strength in (0.0, 1.0, 2.0):
        for fraction in (0.0, 0.04, 0.1):
            sampler = GuidedFlowSampler(
                trainer.model, lambda z: gp.lcb(z, 1.0, standardized=True), strength, 50, "heun", fraction
            )
            started = time.monotonic()
            samples = sampler.sample(SAMPLES, torch.Generator().manual_seed(0))
            seconds = time.monotonic() - started
            with torch.no_grad():
                lcb = float(gp.lcb(samples, 1.0).mean())
            l2 = float(nearest_l2(samples, trainer.train).mean())
            rows.append({"lambda": strength, "zero_init_fraction": fraction, "mean_lcb": lcb, "mean_l2": l2})
            print(
                f"lambda {strength:.0f} zero-init {fraction:<4}: mean LCB {lcb:.4f}  mean L2 {l2:.4f} ({seconds:.1f} s)"
            )
    print(json.dumps({"heldout_l2": heldout, "grid": rows}))


if __name__ == "__main__":
    main()
