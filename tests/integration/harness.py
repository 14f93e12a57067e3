"""Shared pieces of the integration tests: in-process model services, the CLI run helper and
reading a service's Prometheus metrics."""

from __future__ import annotations

import json
import re
import urllib.request

from services.cli import main as cli
from services.decoder.core import NearestTextInverter
from services.flow.core import FlowSampling
from services.optimizer.algorithms.base import ModelServices
from services.surrogate.engine import SurrogateEngine


class InProcessDecoder:
    """The decoder client's call shape over an in-process Inverter."""

    def __init__(self, inverter):
        self.inverter = inverter

    def invert(self, embeddings, seed_texts, num_steps=0, beam_width=0):
        return self.inverter.invert(embeddings, seed_texts, num_steps, beam_width)


class InProcessFlow:
    """The flow client's `sample` over in-process flow sampling, guided by an engine's GPs."""

    def __init__(self, engine: SurrogateEngine):
        self.engine, self.sampling = engine, FlowSampling()

    def sample(self, checkpoint, n, model_id="", settings=None, seed=0, manifold_distance=False):
        guide = self.engine.error_gp(model_id) if model_id else None
        return self.sampling.sample(checkpoint, n, guide, settings, seed, manifold_distance)


def nearest_text_models(embedder) -> ModelServices:
    """The embedder, nearest-text decoding (decoded texts stay among known ones) and a fresh
    surrogate engine (its GPs and flows)."""
    engine = SurrogateEngine()
    decoder = InProcessDecoder(NearestTextInverter(embedder.encode))
    return ModelServices(embedder, decoder, engine, InProcessFlow(engine))


def run_cli(stack, tmp_path, *args) -> dict:
    """`promptopt run ARGS` against the stack's optimizer; the results JSON (its plot must exist)."""
    code = cli.main(["--optimizer", stack.address("optimizer"), "--results-dir", str(tmp_path), "run", *args])
    assert code == 0
    [path] = tmp_path.glob("*.json")
    assert path.with_suffix(".png").stat().st_size > 1000
    return json.loads(path.read_text())


def scrape(port: int) -> str:
    """The text a service's /metrics port serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The sum of metric `name`'s samples whose labels contain `labels` (e.g. 'role="task"')."""
    pattern = rf"^{re.escape(name)}\{{[^}}]*{re.escape(labels)}[^}}]*\}} ([0-9.e+]+)$"
    return sum(float(m) for m in re.findall(pattern, text, re.M))
