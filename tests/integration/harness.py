"""Shared pieces of the integration tests: in-process model services and the CLI run helper."""

from __future__ import annotations

import json

from services.decoder.core import NearestTextInverter
from services.optimizer import cli
from services.optimizer.algorithms.lipo import ModelServices
from services.surrogate.engine import SurrogateEngine


class InProcessDecoder:
    """The decoder client's call shape over an in-process Inverter."""

    def __init__(self, inverter):
        self.inverter = inverter

    def invert(self, embeddings, seed_texts, num_steps=0, beam_width=0):
        return self.inverter.invert(embeddings, seed_texts, num_steps, beam_width)


def nearest_text_models(embedder) -> ModelServices:
    """The embedder, nearest-text decoding (decoded texts stay among known ones) and a fresh surrogate engine."""
    return ModelServices(embedder, InProcessDecoder(NearestTextInverter(embedder.encode)), SurrogateEngine())


def run_cli(stack, tmp_path, *args) -> dict:
    """`promptopt run ARGS` against the stack's optimizer; the results JSON (its plot must exist)."""
    code = cli.main(["--optimizer", stack.address("optimizer"), "--results-dir", str(tmp_path), "run", *args])
    assert code == 0
    [path] = tmp_path.glob("*.json")
    assert path.with_suffix(".png").stat().st_size > 1000
    return json.loads(path.read_text())
