"""EcoFlow's flow-matching training as a resumable run: one step per epoch, `last_flow.pt` (with
the trainer's state) every epoch and `best_flow.pt` at each best validation loss, under the
run's directory (state_dir/flows/<run id>). Its data is an uploaded embeddings artifact; the run's
id names its model (SampleFlow's `checkpoint`, EcoFlow's `flow_checkpoint`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from services.common.config import from_fields, json_object, refuse_fields
from services.common.operations import Cancelled, Job


def parse_embeddings(content: bytes):
    """The "embeddings" artifact kind: a .pt of embeddings [n, d] (torch loads lazily)."""
    from services.flow.core import parse_embeddings as parse

    return parse(content)


# The ArtifactService kinds the surrogate's process takes.
INPUT_KINDS = {"embeddings": parse_embeddings}
RETIRED = {
    "data": "upload the embeddings (`promptopt flow train --data FILE` does) and pass data_artifact",
    "output_dir": "a run's checkpoints live in the surrogate's flows/<run id>, named by the run id",
}


def flow_dir(state_dir: str | Path, run_id: str) -> Path:
    """Where training run `run_id` keeps its checkpoints."""
    return Path(state_dir).resolve() / "flows" / run_id


@dataclasses.dataclass(frozen=True)
class FlowTrainingSettings:
    """A training run: its embeddings (an artifact's id and its file), its checkpoints' directory
    and the FlowConfig."""

    data_artifact: str
    data: str
    output_dir: str
    flow: object  # FlowConfig

    @classmethod
    def from_json(cls, text: str, run_id: str, state_dir: str | Path, artifacts) -> FlowTrainingSettings:
        """Parsed and validated against `artifacts` (a FilesystemArtifactStore); ValueError naming the field."""
        from services.flow.core import FlowConfig

        fields = json_object(text, "config_json")
        refuse_fields(fields, RETIRED, "is retired (a request names no path on the surrogate's host)")
        data = fields.pop("data_artifact", "")
        if not data:
            raise ValueError("data_artifact must name uploaded embeddings (ArtifactService kind 'embeddings')")
        path = artifacts.file(data, "embeddings", "data_artifact")
        flow = FlowConfig(**from_fields(FlowConfig, fields, "config_json"))
        return cls(data, str(path), str(flow_dir(state_dir, run_id)), flow)


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
            raise ValueError(f"{self.run_id}'s directory holds training run {facts.get('run_id')!r}'s checkpoints")
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
        """The best checkpoint, named by this run's id, and its validation loss (lower is better)."""
        loss = state["best_val_loss"]
        return (self.run_id, float(loss)) if loss is not None else ("", math.nan)

    def report(self, state: dict) -> dict:
        return {
            "flow_run": self.run_id,  # names its best checkpoint in SampleFlow and EcoFlow runs
            "best_checkpoint": f"flows/{self.run_id}/{self.best_path.name}",  # on the surrogate's state volume
            "data_artifact": self.settings.data_artifact,
            "embeddings": state["n"],
            "dim": state["dim"],
            "best_val_loss": state["best_val_loss"],
            "history": state["history"],
        }
