"""The trained rewriters Optimize serves: the newest checkpoint by default, or a named one."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from services.common.config import confined_path
from services.common.errors import FailedPreconditionError, UnavailableError
from services.neuro.training import ModelParts

log = logging.getLogger(__name__)


def checkpoints_newest_first(root: Path) -> list[Path]:
    """Every `neuro_final_model.pt` under `root`, newest first, then the epoch checkpoints."""
    from services.neuro.core import FINAL_CHECKPOINT

    out = []
    for pattern in (FINAL_CHECKPOINT, "phase*_epoch_*.pt"):
        out += sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return out


def check_compatible(init: str, config) -> None:
    """ValueError naming init_checkpoint unless its head fits `config` (a NeuroConfig)."""
    from services.neuro.core import load_neuro

    saved, _, _ = load_neuro(init)
    for name in ("encoder", "generator", "soft_prompt_length", "black_box_hidden"):
        if getattr(saved, name) != getattr(config, name):
            raise ValueError(
                f"init_checkpoint {init!r} has {name} {getattr(saved, name)!r}, the run {getattr(config, name)!r}"
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
        self.get(str(path))
        self._default = str(path)

    def get(self, checkpoint: str):
        """(checkpoint path, NeuroRewriter); ValueError naming `checkpoint` when it is no
        checkpoint under the neuro directory, FailedPreconditionError when nothing is trained yet
        or its frozen models cannot be loaded here, UnavailableError while start-up loads."""
        from services.neuro.core import NeuroRewriter, load_neuro

        if not checkpoint:
            if self._default is None and self.loading:
                raise UnavailableError("the newest Neuro-Latent model is still loading; retry shortly")
            if self._default is None:
                raise FailedPreconditionError(
                    "no trained Neuro-Latent model yet: train one first (promptopt neuro train)"
                )
            checkpoint = self._default
        path = confined_path(checkpoint, self.root, "checkpoint")
        with self._lock:
            if path not in self._loaded:
                config, head, _ = load_neuro(path)
                try:
                    encoder, generator = self.parts.get(config)
                except Exception as exc:  # a missing package, model file or hub access on this pod
                    raise FailedPreconditionError(
                        f"checkpoint {path!r}: its frozen models ({config.encoder}, {config.generator}) cannot be "
                        f"loaded here: {exc}"
                    ) from exc
                kept = {k: v for k, v in self._loaded.items() if k == self._default}
                self._loaded = {**kept, path: NeuroRewriter(config, encoder, generator, head)}
            return path, self._loaded[path]
