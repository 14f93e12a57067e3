"""The trained rewriters Optimize serves: the newest checkpoint by default, or a named one."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from services.common.errors import FailedPreconditionError, UnavailableError
from services.neuro.training import FINAL_CHECKPOINT, ModelParts, checkpoint_file, checkpoint_label

log = logging.getLogger(__name__)


def checkpoints_newest_first(root: Path) -> list[Path]:
    """Every `neuro_final_model.pt` under `root`, newest first, then the epoch checkpoints."""
    out = []
    for pattern in (FINAL_CHECKPOINT, "phase*_epoch_*.pt"):
        out += sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return out


def check_compatible(init: str, config, root: Path) -> None:
    """ValueError naming init_checkpoint unless its head fits `config` (a NeuroConfig)."""
    from services.neuro.core import load_neuro

    label = checkpoint_label(init, root)
    try:
        saved, _, _ = load_neuro(init, label)
    except ValueError as exc:
        raise ValueError(f"init_checkpoint: {exc}") from None
    for name in ("encoder", "generator", "soft_prompt_length", "black_box_hidden"):
        if getattr(saved, name) != getattr(config, name):
            raise ValueError(
                f"init_checkpoint {label!r} has {name} {getattr(saved, name)!r}, the run {getattr(config, name)!r}"
            )


class Rewriters:
    """The rewriter Optimize serves by default (the newest trained model: loaded at start-up,
    replaced when a training run finishes) and any named checkpoint (the last one asked for)."""

    def __init__(self, root: Path, parts: ModelParts):
        self.root, self.parts = root, parts
        self._loaded: dict[str, object] = {}
        self._default: str | None = None
        self._lock = threading.Lock()
        self.loading = False

    def load_newest(self) -> None:
        """Serve the newest checkpoint that loads (one that does not is logged and passed over)."""
        self.loading = True
        try:
            for path in checkpoints_newest_first(self.root):
                try:
                    self.use(path)
                    return
                except (ValueError, FailedPreconditionError) as exc:
                    log.warning("Neuro-Latent checkpoint %s passed over: %s", path, exc)
        finally:
            self.loading = False

    def use(self, path: Path) -> None:
        """Serve `path` by default from now on."""
        name = checkpoint_label(path, self.root)
        self.get(name)
        self._default = name

    def get(self, checkpoint: str):
        """(checkpoint name, NeuroRewriter) of a training run's id (its final model) or
        RUN_ID/FILE.pt; ValueError naming `checkpoint` when it is no such checkpoint,
        FailedPreconditionError when nothing is trained yet or its frozen models cannot be loaded
        here, UnavailableError while start-up loads."""
        from services.neuro.core import NeuroRewriter, load_neuro

        if not checkpoint:
            if self._default is None and self.loading:
                raise UnavailableError("the newest Neuro-Latent model is still loading; retry shortly")
            if self._default is None:
                raise FailedPreconditionError(
                    "no trained Neuro-Latent model yet: train one first (promptopt neuro train)"
                )
            checkpoint = self._default
        path = checkpoint_file(checkpoint, self.root, "checkpoint")
        name = checkpoint_label(path, self.root)
        with self._lock:
            if name not in self._loaded:
                config, head, _ = load_neuro(path, name)
                try:
                    encoder, generator = self.parts.get(config)
                except Exception as exc:  # a missing package, model file or hub access on this pod
                    raise FailedPreconditionError(
                        f"checkpoint {name!r}: its frozen models ({config.encoder}, {config.generator}) cannot be "
                        f"loaded here: {exc}"
                    ) from exc
                kept = {k: v for k, v in self._loaded.items() if k == self._default}
                self._loaded = {**kept, name: NeuroRewriter(config, encoder, generator, head)}
            return name, self._loaded[name]
