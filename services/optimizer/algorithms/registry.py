"""The optimiser registry: each algorithm registers itself beside its code.

    @register("opro", OproConfig, summary="...")
    class OproOptimizer(Optimizer): ...

A name is registered once (a second registration is a ValueError, as BoTorch's
`acqf_input_constructor` refuses duplicates). `algorithms()` imports every module of this
package, so a new optimiser is one module (or package) here plus its tests: the server builds it
from its spec, handing it only the model services it `requires`, and the CLI reads its flags
from its settings class.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from services.common.settings import Settings
from services.optimizer.algorithms.base import MODEL_FIELDS


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """A registered optimiser: its name (StartRunRequest's oneof field), settings class,
    optimiser class, the model services it requires and a one-line summary."""

    name: str
    settings: type[Settings]
    optimizer: type
    requires: tuple[str, ...]
    summary: str


_REGISTRY: dict[str, AlgorithmSpec] = {}


def register(name: str, settings: type[Settings], requires: tuple[str, ...] = (), summary: str = ""):
    """Class decorator registering an `Optimizer` subclass under `name`."""
    unknown = [r for r in requires if r not in MODEL_FIELDS]  # what it may ask for besides llm_eval
    if unknown:
        raise ValueError(f"algorithm {name!r} requires unknown services {unknown}; known: {list(MODEL_FIELDS)}")

    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"algorithm {name!r} is already registered (by {_REGISTRY[name].optimizer.__qualname__})")
        _REGISTRY[name] = AlgorithmSpec(name, settings, cls, tuple(requires), summary)
        cls.name = name
        return cls

    return decorate


def algorithms() -> dict[str, AlgorithmSpec]:
    """Every registered optimiser by name (the package's modules are imported on first use)."""
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")
    return dict(sorted(_REGISTRY.items()))


def spec(name: str) -> AlgorithmSpec:
    """The registered optimiser `name`; ValueError listing the known ones."""
    known = algorithms()
    if name not in known:
        raise ValueError(f"algorithm {name!r} is not registered; known: {sorted(known)}")
    return known[name]
