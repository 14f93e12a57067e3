"""EcoFlow's flow-matching training as a resumable run: one step per epoch, `last_flow.pt` (with
the trainer's state) every epoch and `best_flow.pt` at each best validation loss, under the
run's directory (state_dir/flows/<run id> by default)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from services.common.config import confined_path, from_fields, json_object
from services.common.operations import Cancelled, Job


@dataclasses.dataclass(frozen=True)
class FlowTrainingSettings:
    """A training run: the embeddings file, where its checkpoints go, and the FlowConfig."""

    data: str
    output_dir: str
    flow: object  # FlowConfig

    @classmethod
    def from_json(cls, text: str, run_id: str, state_dir: str | Path) -> FlowTrainingSettings:
        """Parsed and validated; ValueError naming the field."""
        from services.flow.core import FlowConfig

        fields = json_object(text, "config_json")
        data, output_dir = fields.pop("data", ""), fields.pop("output_dir", "")
        if not isinstance(data, str) or not data:
            raise ValueError("data must name a .pt file of embeddings on the surrogate")
        flow = FlowConfig(**from_fields(FlowConfig, fields, "config_json"))
        # relative to state_dir/flows (default: flows/RUN), never outside state_dir
        root = Path(state_dir).resolve()
        return cls(data, confined_path(output_dir or run_id, root, "output_dir", base=root / "flows"), flow)


class FlowTrainingJob(Job):
    """Trains a flow model one epoch per step. The trainer's state rides in `last_flow.pt`, so a
    resumed run (after a restart, a failure or a cancel) continues from its last epoch."""

    def __init__(self, settings: FlowTrainingSettings, emit, cancelled, run_id: str = "", device: str = "cpu"):
        self.settings, self.emit, self.cancelled, self.run_id = settings, emit, cancelled, run_id
        self.device = device
        self.root = Path(settings.output_dir)
        self._trainer = None  # a FlowTrainer, built at the first step

    @property
    def last(self) -> Path:
        return self.root / "last_flow.pt"

    @property
    def best_path(self) -> Path:
        return self.root / "best_flow.pt"

    def total_steps(self) -> int:
        return self.settings.flow.epochs

    def checkpoint(self):
        """(model, facts) of this run's `last_flow.pt`, None before its first epoch; ValueError
        when the file belongs to another run."""
        from services.flow.core import load_flow

        if not self.last.is_file():
            return None
        model, facts = load_flow(self.last)
        if facts.get("run_id") != self.run_id:
            raise ValueError(f"output_dir {str(self.root)!r} holds training run {facts.get('run_id')!r}'s checkpoints")
        return model, facts

    def initial_state(self) -> dict:
        from services.flow.core import load_embeddings

        self.checkpoint()  # this run's own (it died after saving its first epoch) or none
        x = load_embeddings(self.settings.data, finite=False)  # checked when the run started
        return {"step": 0, "history": [], "best_val_loss": None, "n": int(x.shape[0]), "dim": int(x.shape[1])}

    def trainer(self, step: int):
        """The FlowTrainer at epoch `step` (or one past it, when the process died between saving
        the epoch and checkpointing the run), from this run's last checkpoint."""
        from services.flow.core import FlowTrainer, load_embeddings

        if self._trainer is None:
            data = load_embeddings(self.settings.data, finite=False)  # checked when the run started
            self._trainer = FlowTrainer(data, self.settings.flow, self.device)
            saved = self.checkpoint()
            if saved is not None:
                self._trainer.load_state(saved[1]["trainer"], saved[0])
        if self._trainer.epoch not in (step, step + 1):
            raise ValueError(f"{self.last} is at epoch {self._trainer.epoch}, the run at {step}: it cannot resume")
        return self._trainer

    def step(self, state: dict) -> dict:
        from services.flow.core import save_flow

        trainer = self.trainer(state["step"])
        if trainer.epoch == state["step"]:  # else this epoch ran and was saved before a crash
            try:
                trainer.run_epoch(self.cancelled)
            except InterruptedError as exc:
                raise Cancelled() from exc
            save_flow(
                self.last,
                trainer.model,
                self.settings.flow,
                trainer=trainer.state(),
                data=self.settings.data,
                run_id=self.run_id,
            )
        losses = trainer.history[state["step"]]
        best = state["best_val_loss"]
        if best is None or losses.val_loss < best:
            best = losses.val_loss
            save_flow(
                self.best_path,
                trainer.model,
                self.settings.flow,
                epoch=losses.epoch,
                val_loss=losses.val_loss,
                data=self.settings.data,
            )
        self.emit(
            "progress",
            {
                "message": f"epoch {losses.epoch}/{self.settings.flow.epochs}: train loss {losses.train_loss:.4f}, "
                f"validation loss {losses.val_loss:.4f} (best {best:.4f})",
            },
        )
        entry = dataclasses.asdict(losses)
        return {**state, "step": state["step"] + 1, "history": [*state["history"], entry], "best_val_loss": best}

    def best(self, state: dict) -> tuple[str, float]:
        """The best checkpoint and its validation loss (lower is better)."""
        loss = state["best_val_loss"]
        return (str(self.best_path), float(loss)) if loss is not None else ("", math.nan)

    def report(self, state: dict) -> dict:
        return {
            "best_checkpoint": str(self.best_path),
            "last_checkpoint": str(self.last),
            "data": self.settings.data,
            "embeddings": state["n"],
            "dim": state["dim"],
            "best_val_loss": state["best_val_loss"],
            "history": state["history"],
        }
