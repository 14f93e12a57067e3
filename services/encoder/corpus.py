"""EcoFlow's embedding corpus (seed 003): `python -m services.encoder.corpus [--output PATH]
[--sources ape,recorded,gsm8k] [--encoder ADDRESS] [--limit N]`.

Embeds instruction-like text with the configured encoder into a .pt file holding
{"embeddings": float32 [n, d], "texts", "sources": {name: count}, "encoder"}, the input of
`promptopt flow train --data`. Production embeds a large corpus with SONAR (1024-D; the seed
used 1.5M texts) through the encoder service (--encoder); on CPU the embedded encoder runs in
process over what ships offline in datasets/: the APE instruction pool, the recorded
instructions and the GSM8K train questions (the test split, where winners are reported, stays
out). It prints the corpus's size and sources.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.progress import Progress

from services.common.config import datasets_dir
from services.encoder.__main__ import PREFIX, EncoderConfig

SOURCES = ("ape", "recorded", "gsm8k")
BATCH = 256


def corpus_texts(root: Path, sources: tuple[str, ...]) -> list[tuple[str, str]]:
    """(source, text) of each source in order, each text once."""
    found: dict[str, str] = {}

    def add(source: str, texts) -> None:
        for text in texts:
            text = text.strip()
            if text and text not in found:
                found[text] = source

    for source in sources:
        if source == "ape":
            add(source, json.loads((root / "prompts" / "ape_instructions_1000.json").read_text()))
        elif source == "recorded":
            recorded = json.loads((root / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json").read_text())
            add(source, [r["instruction"] for r in recorded["results"]])
            add(source, json.loads((root / "hbbops_dev" / "instructions.json").read_text()))
        elif source == "gsm8k":  # train only: winners are reported on the test split
            lines = (root / "gsm8k" / "train.jsonl").read_text().splitlines()
            add(source, [json.loads(line)["question"] for line in lines if line.strip()])
        else:
            raise ValueError(f"--sources: unknown source {source!r}; known: {', '.join(SOURCES)}")
    return [(source, text) for text, source in found.items()]


def embed_all(texts: list[str], encode) -> np.ndarray:
    """Embeddings of `texts` in batches, with a progress bar."""
    parts = []
    with Progress() as progress:
        task = progress.add_task("embedding", total=len(texts))
        for start in range(0, len(texts), BATCH):
            parts.append(np.asarray(encode(texts[start : start + BATCH]), dtype=np.float32))
            progress.advance(task, len(parts[-1]))
    return np.concatenate(parts)


def encoder_for(address: str):
    """(encode function, model name): the encoder service at `address`, else the configured
    encoder (PROMPTOPT_ENCODER_*) in this process."""
    if address:
        from services.encoder.client import EncoderClient

        client = EncoderClient(address)
        return client.encode, client.model_info().model
    from services.common.config import from_env
    from services.encoder.core import make_embedder

    config = from_env(EncoderConfig, PREFIX)
    return make_embedder(config.model, config.device, config.batch_size).encode, config.model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.encoder.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="state/flow/corpus.pt", help="the .pt file to write")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated subset of {SOURCES}")
    parser.add_argument("--encoder", default="", help="encoder service address (default: in process)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many texts (0: all)")
    args = parser.parse_args(argv)
    try:
        sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
        rows = corpus_texts(datasets_dir(), sources)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = rows[: args.limit] if args.limit > 0 else rows
    encode, model = encoder_for(args.encoder)
    embeddings = embed_all([text for _, text in rows], encode)
    counts = {source: sum(1 for s, _ in rows if s == source) for source in sources}

    import torch

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "embeddings": torch.from_numpy(embeddings),
            "texts": [text for _, text in rows],
            "sources": counts,
            "encoder": model,
        },
        output,
    )
    described = ", ".join(f"{name}: {count}" for name, count in counts.items())
    print(
        f"{len(rows)} texts ({described}) embedded with {model} into {output}: "
        f"{list(embeddings.shape)}, {output.stat().st_size / 1e6:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
