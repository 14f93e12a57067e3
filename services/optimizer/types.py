"""The optimizer's contract beside its client: the registered algorithms (name, summary, required
services) and each one's settings class (the StartRun config its proto message mirrors), for the
CLI and the tuner to read defaults, help and bounds from; and the parsers of the ArtifactService
kinds it takes (the tuner takes the same instructions and exemplar sets)."""

from __future__ import annotations

from services.common.settings import Settings
from services.optimizer.algorithms import inputs, registry

algorithm_specs = registry.algorithms
algorithm_spec = registry.spec
upload_kinds = inputs.INPUT_KINDS


def settings_of(algorithm: str) -> type[Settings]:
    """The settings class of `algorithm` (e.g. "lipo_e"); ValueError naming the known ones."""
    return registry.spec(algorithm).settings
