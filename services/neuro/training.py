"""Neuro-Latent training runs (one step per epoch; `phase{1,2}_epoch_N.pt` after each,
`neuro_final_model.pt` at the end, under the run's directory) and the frozen models they share
with serving. torch and the models load lazily, after the server is up.

Requests name checkpoints by run, never by path: a training run's id (its final model) or
`RUN_ID/FILE.pt` (one epoch's), under the service's neuro directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import threading
from pathlib import Path

from services.common.config import confined_path, from_fields, json_object, refuse_fields
from services.common.errors import shown
from services.common.operations import Cancelled, Job
from services.neuro.feedback import FeedbackStore, feedback_training_data

NEURO_DIR = "neuro"
FINAL_CHECKPOINT = "neuro_final_model.pt"
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
CHECKPOINT_NAME = re.compile(rf"^{_PART}(/{_PART}\.pt)?$")
# fields only a stored run may hold (a request's were retired: issue 26), and what to do instead
STORED_ONLY = {
    "training_data_file": "send the data inline as training_data (promptopt neuro train --data FILE)",
    "output_dir": "a run's checkpoints live under its run id",
}


def checkpoint_file(name: str, root: Path, field: str) -> Path:
    """The checkpoint `name` (a training run's id: its final model, or RUN_ID/FILE.pt) under the
    neuro directory `root`; ValueError naming `field` when it is neither."""
    if not isinstance(name, str) or not CHECKPOINT_NAME.match(name):
        raise ValueError(f"{field} must be a training run id or RUN_ID/FILE.pt, got {shown(str(name))!r}")
    return root / name if "/" in name else root / name / FINAL_CHECKPOINT


def checkpoint_label(path: str | Path, root: Path) -> str:
    """How clients see the checkpoint at `path`: RUN_ID/FILE.pt, relative to the neuro directory."""
    path = Path(path)
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


@dataclasses.dataclass(frozen=True)
class NeuroTrainingSettings:
    """A training run: its data (the seed's JSON, sent inline), whether stored feedback joins it,
    an optional head to start from, where its checkpoints go, and the NeuroConfig."""

    training_data: dict
    include_feedback: bool
    init_checkpoint: str
    output_dir: str
    neuro: object  # NeuroConfig

    @classmethod
    def from_json(
        cls, text: str, run_id: str, state_dir: str | Path, defaults, allowed_models=None, stored: bool = False
    ) -> NeuroTrainingSettings:
        """Parsed and validated against `defaults` (a NeuroConfig: the surrogate's models; a run
        may name another encoder or generator only from `allowed_models`, None: any, as a stored
        run's own); ValueError naming the field (the data itself is checked by `data()`). The
        data comes inline (`training_data`) or, in a `stored` run, from `training_data_file`."""
        fields = json_object(text, "config_json")
        root = Path(state_dir).resolve() / NEURO_DIR
        if not stored:
            refuse_fields(fields, STORED_ONLY, "is not a request field")
        data = fields.pop("training_data", {})
        if "training_data_file" in fields:
            path = confined_path(fields.pop("training_data_file"), root / "data", "training_data_file")
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"training_data_file {path!r} cannot be read: {exc}") from exc
        include = fields.pop("include_feedback", True)
        if not isinstance(include, bool):
            raise ValueError(f"include_feedback must be a bool, got {include!r}")
        init = fields.pop("init_checkpoint", "")
        if init and stored and init.startswith("/"):  # recorded as a path before names (issue 26)
            init = confined_path(init, root, "init_checkpoint")
        elif init:
            init = str(checkpoint_file(init, root, "init_checkpoint"))
        output_dir = confined_path(fields.pop("output_dir", "") or run_id, root, "output_dir")
        neuro = dataclasses.replace(defaults, **from_fields(type(defaults), fields, "config_json"))
        for name in ("encoder", "generator"):
            value = getattr(neuro, name)
            if allowed_models is not None and value != getattr(defaults, name) and value not in allowed_models:
                raise ValueError(
                    f"{name} {shown(value)!r} is not one this surrogate serves: {getattr(defaults, name)!r} "
                    f"or one of PROMPTOPT_SURROGATE_NEURO_MODELS {sorted(allowed_models)}"
                )
        return cls(data, include, init, output_dir, neuro)

    def record(self, state_dir: str | Path) -> dict:
        """What the run store keeps: the resolved settings (the checkpoint to start from by name),
        the data in a content-addressed file under neuro/data (not in the record, which every
        ListRuns returns)."""
        root = Path(state_dir).resolve() / NEURO_DIR
        text = json.dumps(self.training_data, sort_keys=True)
        path = root / "data" / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        fields = {"training_data_file": path.name, "include_feedback": self.include_feedback}  # under neuro/data
        init = checkpoint_label(self.init_checkpoint, root) if self.init_checkpoint else ""
        fields.update(init_checkpoint=init, **dataclasses.asdict(self.neuro))
        return fields

    def data(self, feedback: FeedbackStore):
        """The run's TrainingData: the inline file, plus the stored feedback with include_feedback;
        ValueError when a phase with epochs has nothing to train on."""
        from services.neuro.core import TrainingData

        data = TrainingData.from_json(self.training_data, "training_data")
        if self.include_feedback:
            data = data + TrainingData.from_json(feedback_training_data(feedback.all()), "feedback")
        if self.neuro.phase1_epochs and not data.distillation_pairs:
            raise ValueError("phase1_epochs > 0 but training_data and the feedback hold no distillation pairs")
        if self.neuro.phase2_epochs and not data.triplets:
            raise ValueError("phase2_epochs > 0 but training_data and the feedback hold no triplets")
        return data


class ModelParts:
    """The frozen encoders and generators, loaded once per name and shared by training runs and
    Optimize (they are never changed; the names come from the surrogate's config or its
    PROMPTOPT_SURROGATE_NEURO_MODELS, so they are few)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._parts: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, config):
        """(FrozenEncoder, SoftPromptGenerator) for the config's encoder and generator names."""
        from services.neuro.core import FrozenEncoder, load_generator

        with self._lock:
            for name, load in (
                ("encoder:" + config.encoder, lambda: FrozenEncoder(config.encoder, self.device)),
                ("generator:" + config.generator, lambda: load_generator(config.generator, self.device)),
            ):
                if name not in self._parts:
                    self._parts[name] = load()
            return self._parts["encoder:" + config.encoder], self._parts["generator:" + config.generator]


class NeuroTrainingJob(Job):
    """Trains a NeuroRewriter's head one epoch per step (phase 1 epochs, then phase 2). Each
    epoch's checkpoint carries the trainer's state, so a resumed run continues from its last
    epoch; the data (inline plus the feedback stored when the run started) is fixed in
    `training_data.json` beside the checkpoints."""

    def __init__(
        self, settings: NeuroTrainingSettings, emit, cancelled, run_id, parts: ModelParts, feedback, on_final, neuro_dir
    ):
        self.settings, self.emit, self.cancelled, self.run_id = settings, emit, cancelled, run_id
        self.parts, self.feedback, self.on_final = parts, feedback, on_final
        self.root, self.neuro_dir = Path(settings.output_dir), Path(neuro_dir)
        self._rewriter = None
        self._data = None

    @property
    def data_path(self) -> Path:
        return self.root / "training_data.json"

    def total_steps(self) -> int:
        return self.settings.neuro.total_epochs

    def initial_state(self) -> dict:
        data = self.settings.data(self.feedback)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.data_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data.to_json()))
        tmp.replace(self.data_path)
        counts = {"distillation_pairs": len(data.distillation_pairs), "triplets": len(data.triplets)}
        return {"step": 0, "history": [], "data": counts, "last_checkpoint": ""}

    def rewriter(self, state: dict):
        """The rewriter at epoch `state['step']`: from this run's last checkpoint, else fresh (or
        from init_checkpoint)."""
        from services.neuro.core import NeuroRewriter, TrainingData, load_neuro

        if self._rewriter is None:
            self._data = TrainingData.from_json(json.loads(self.data_path.read_text()), str(self.data_path))
            encoder, generator = self.parts.get(self.settings.neuro)
            head, trainer = None, None
            source = state["last_checkpoint"] or self.settings.init_checkpoint
            if source:
                label = checkpoint_label(source, self.neuro_dir)
                _, head, facts = load_neuro(source, label)
                if state["last_checkpoint"]:
                    if facts.get("run_id") != self.run_id:
                        raise ValueError(f"{label} belongs to training run {facts.get('run_id')!r}")
                    trainer = facts["trainer"]
            self._rewriter = NeuroRewriter(self.settings.neuro, encoder, generator, head)
            if trainer is not None:
                self._rewriter.load_state(trainer)
        if len(self._rewriter.history) != state["step"]:
            raise ValueError(f"the checkpoint is at epoch {len(self._rewriter.history)}, the run at {state['step']}")
        return self._rewriter

    def step(self, state: dict) -> dict:
        from services.neuro.core import checkpoint_name, save_neuro

        rewriter = self.rewriter(state)
        try:
            losses = rewriter.run_epoch(self._data, self.cancelled)
        except InterruptedError as exc:
            raise Cancelled() from exc
        path = self.root / checkpoint_name(losses.phase, losses.epoch)
        save_neuro(path, rewriter, run_id=self.run_id, phase=losses.phase, epoch=losses.epoch)
        done = state["step"] + 1 == self.total_steps()
        if done:
            save_neuro(
                self.root / FINAL_CHECKPOINT, rewriter, run_id=self.run_id, phase=losses.phase, epoch=losses.epoch
            )
        name = "distillation" if losses.phase == 1 else "contrastive"
        self.emit(
            "progress",
            {
                "message": f"phase {losses.phase} ({name}) epoch {losses.epoch}: loss {losses.loss:.4f} "
                f"({'MSE' if losses.phase == 1 else 'InfoNCE'} {losses.main_loss:.4f}, generation "
                f"{losses.generation_loss:.4f}, KL {losses.kl_penalty:.4f})",
            },
        )
        if done:
            self.on_final(self.root / FINAL_CHECKPOINT)
        entry = dataclasses.asdict(losses)
        return {**state, "step": state["step"] + 1, "history": [*state["history"], entry], "last_checkpoint": str(path)}

    def best(self, state: dict) -> tuple[str, float]:
        """The newest checkpoint (by name) and its epoch's loss (lower is better)."""
        if not state["history"]:
            return "", math.nan
        return checkpoint_label(state["last_checkpoint"], self.neuro_dir), float(state["history"][-1]["loss"])

    def report(self, state: dict) -> dict:
        final = checkpoint_label(self.root / FINAL_CHECKPOINT, self.neuro_dir)
        return {
            "final_checkpoint": final if state["step"] == self.total_steps() else "",
            "last_checkpoint": checkpoint_label(state["last_checkpoint"], self.neuro_dir),
            "data": state["data"],
            "config": dataclasses.asdict(self.settings.neuro),
            "history": state["history"],
        }
