"""The base of optimisers whose models live in the surrogate service (LIPO, LIPO-E)."""

from __future__ import annotations

import abc
import copy
import logging
from pathlib import Path

from services.common.errors import NotFoundError
from services.common.text import EncodeMemo
from services.optimizer.algorithms.base import Optimizer, RunContext

log = logging.getLogger(__name__)


class SurrogateBackedOptimizer(Optimizer):
    """An optimiser whose VAE and GPs live in the surrogate, owned by its run (`owner`).

    Models are addressed by id and do not survive a restart of the surrogate or of this process:
    a step that finds one gone (NotFoundError) forgets its ids, restores the state it started
    from and runs again, retraining from the checkpointed data (llm_eval's cache answers the
    LLM calls it repeats). Steps are named phases; `state["calls"]` counts LLM calls per phase.
    """

    def __init__(
        self, config, evaluation, llm, emit, models=None, state_dir="state/optimizer", owner: str = "", artifacts=None
    ):
        super().__init__(config, evaluation, llm, emit)
        self.models = models
        self.owner = owner  # the run id: the surrogate's models made for this run belong to it
        self.state_dir = Path(state_dir)
        self.artifacts = artifacts  # the optimizer's ArtifactStore: the inputs the run names by id
        self._encode = EncodeMemo(models.encoder.encode) if models and models.encoder else None

    @classmethod
    def create(cls, config, evaluation, llm, emit, context: RunContext):
        return cls(
            config,
            evaluation,
            llm,
            emit,
            models=context.models,
            state_dir=context.state_dir,
            owner=context.owner,
            artifacts=context.artifacts,
        )

    @abc.abstractmethod
    def phase(self, step: int) -> str:
        """The name of search step `step` (a key of `state["calls"]`)."""

    @abc.abstractmethod
    def run_phase(self, phase: str, state: dict) -> None:
        """Run one named phase, updating `state` in place."""

    @abc.abstractmethod
    def forget_models(self) -> None:
        """Drop every surrogate model id this optimiser holds (they are retrained on demand)."""

    def nvalid(self) -> int:
        """Full fidelity: `fidelity`, else 20 questions in debug runs, else the whole validation split."""
        return self.validation_questions()

    def gpu_memory_peak(self) -> int | None:
        """GPU memory (bytes) of the models behind the run: the high-water marks the model services
        (encoder, decoder, surrogate; each owns its GPU slice) reported, summed; None when none runs
        on GPU. A high-water mark counts since the service started, so it bounds this run's use from
        above. The task LLM is left out: vLLM reserves its share of the GPU whatever the run."""
        services = vars(self.models).values() if self.models else ()
        peaks = {  # one per service process (the surrogate's two clients share it)
            getattr(getattr(s, "config", None), "address", id(s)): s.gpu_peak.bytes
            for s in services
            if getattr(s, "gpu_peak", None) and s.gpu_peak.bytes is not None
        }
        return sum(peaks.values()) if peaks else None

    def _progress(self, message: str) -> None:
        self.emit("progress", {"message": message})

    def _calls(self) -> int:
        return self.llm.usage.llm_calls

    def release(self) -> None:
        """Free this run's models in the surrogate (the run has ended)."""
        if self.owner and self.models is not None and self.models.surrogate is not None:
            deleted = self.models.surrogate.delete_owned(self.owner)
            self.forget_models()
            log.info("run %s: freed %d surrogate models", self.owner, deleted)

    def search_step(self, state: dict) -> None:
        phase = self.phase(state["step"])
        start = self._calls()
        snapshot = copy.deepcopy(state)
        try:
            self.run_phase(phase, state)
        except NotFoundError as exc:  # the surrogate restarted and lost our models: retrain, redo the step
            self._progress(f"surrogate lost a model ({exc}); retraining from the checkpoint and repeating the step")
            self.forget_models()
            state.clear()
            state.update(snapshot)
            self.run_phase(phase, state)
        state["calls"][phase] = state["calls"].get(phase, 0) + self._calls() - start
