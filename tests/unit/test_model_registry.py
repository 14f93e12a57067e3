"""The surrogate's model registry: bounded by bytes with least-recently-used eviction, models
deleted by the run that owns them, and its scrape-time metrics."""

import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import NotFoundError
from services.surrogate.core import ModelRegistry, model_bytes
from services.surrogate.server import RegistryCollector
from services.surrogate.vae import InstructionVAE


def vae(width: int = 16) -> InstructionVAE:
    return InstructionVAE(input_dim=width)


def test_model_bytes_counts_parameters():
    model = vae()
    assert model_bytes(model) == 4 * sum(p.numel() for p in model.parameters()) + 4 * sum(
        b.numel() for b in model.buffers()
    )


def test_bounded_registry_evicts_the_least_recently_used():
    size = model_bytes(vae())
    registry = ModelRegistry(max_bytes=3 * size)
    ids = [registry.add(vae(), owner="run") for _ in range(3)]
    registry.get(ids[0])  # ids[0] is now the most recently used; ids[1] the least
    newest = registry.add(vae(), owner="run")
    with pytest.raises(NotFoundError):
        registry.get(ids[1])
    for model_id in (ids[0], ids[2], newest):
        registry.get(model_id)
    assert registry.evictions == 1 and registry.stats() == {"InstructionVAE": (3, 3 * size)}


def test_the_newest_model_stays_even_over_the_bound():
    registry = ModelRegistry(max_bytes=10)
    first, second = registry.add(vae()), registry.add(vae())
    registry.get(second)
    with pytest.raises(NotFoundError):
        registry.get(first)


def test_unbounded_registry_and_delete_owned():
    registry = ModelRegistry()
    a = [registry.add(vae(), owner="run-a") for _ in range(5)]
    b = registry.add(vae(), owner="run-b")
    assert registry.evictions == 0 and registry.delete_owned("run-a") == 5
    assert registry.get(b) is not None
    with pytest.raises(NotFoundError):
        registry.get(a[0])


def test_registry_metrics_by_kind():
    class Servicer:
        engine = None

    servicer = Servicer()
    scrape = CollectorRegistry()
    scrape.register(RegistryCollector(servicer))
    assert scrape.get_sample_value("promptopt_surrogate_models", {"kind": "InstructionVAE"}) is None

    class Engine:
        registry = ModelRegistry(max_bytes=model_bytes(vae()))

    servicer.engine = Engine()
    Engine.registry.add(vae())
    Engine.registry.add(vae())
    assert scrape.get_sample_value("promptopt_surrogate_models", {"kind": "InstructionVAE"}) == 1
    assert scrape.get_sample_value("promptopt_surrogate_model_bytes", {"kind": "InstructionVAE"}) == model_bytes(vae())
    assert scrape.get_sample_value("promptopt_surrogate_evictions_total") == 1
    assert scrape.get_sample_value("promptopt_surrogate_models", {"kind": "ExactGP"}) == 0
