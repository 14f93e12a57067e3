"""The Neuro-Latent optimizer's service in the surrogate process (seed 002's /optimize, /health,
/feedback over gRPC): training runs (one step per epoch; `phase{1,2}_epoch_N.pt` after each,
`neuro_final_model.pt` at the end, under the run's directory), Optimize with the newest trained
model or a named checkpoint, and feedback stored durably in SQLite for the next training run.
torch and the models load lazily, after the server is up."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import threading
import time
from pathlib import Path

from promptopt.neuro.v1 import neuro_pb2, neuro_pb2_grpc

from services.common.config import confined_path, from_fields, json_object
from services.common.database import open_database, transaction
from services.common.errors import FailedPreconditionError, UnavailableError, require, shown
from services.common.operation_server import OperationServicer
from services.common.operations import Cancelled, Job, RunManager, RunStore
from services.common.server import ServiceBinding
from services.surrogate.types import MAX_PROMPT_CHARS, Feedback

log = logging.getLogger(__name__)

NEURO_DIR = "neuro"
MAX_NEW_TOKENS, MAX_SEQUENCES = 1024, 16
TEACHER_RATING = 0.5  # feedback rated at least this is a success (a teacher and a positive)


# ---------------------------------------------------------------- feedback


class FeedbackStore:
    """Feedback on rewrites in an SQLite file; each submission is one committed row."""

    SCHEMA = """CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, raw_prompt TEXT NOT NULL,
        optimized_prompt TEXT NOT NULL, rating REAL NOT NULL, corrected_prompt TEXT NOT NULL,
        comment TEXT NOT NULL)"""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = open_database(self.path, "feedback store", self.SCHEMA)
        self._lock = threading.Lock()

    def add(self, feedback: Feedback) -> tuple[int, int]:
        """(the new row's id, rows stored)."""
        with self._lock, transaction(self.conn, "feedback store", self.path) as conn:
            cursor = conn.execute(
                "INSERT INTO feedback (time, raw_prompt, optimized_prompt, rating, corrected_prompt, comment) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), *dataclasses.astuple(feedback)),
            )
            total = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        return int(cursor.lastrowid), int(total)

    def list(self, limit: int, offset: int = 0) -> list[tuple[int, float, Feedback]]:
        """(id, time, feedback), newest first."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT id, time, raw_prompt, optimized_prompt, rating, corrected_prompt, comment FROM feedback "
                "ORDER BY id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [(row[0], row[1], Feedback(*row[2:])) for row in rows]

    def all(self) -> list[Feedback]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT raw_prompt, optimized_prompt, rating, corrected_prompt, comment FROM feedback ORDER BY id"
            ).fetchall()
        return [Feedback(*row) for row in rows]


def feedback_training_data(feedback: list[Feedback]) -> dict:
    """The seed's training JSON from feedback: a rewrite rated >= TEACHER_RATING, or a corrected
    prompt, is a teacher for its raw prompt; a raw prompt with both successes and failures gives
    a triplet (its best success as the positive, every failure a negative)."""
    pairs, good, bad = [], {}, {}
    for f in feedback:
        successes = [(f.rating, f.optimized_prompt)] if f.rating >= TEACHER_RATING else []
        if f.corrected_prompt.strip():
            successes.append((1.0, f.corrected_prompt))
        for rating, text in successes:
            pairs.append({"raw": f.raw_prompt, "teacher": text})
            good.setdefault(f.raw_prompt, []).append((rating, text))
        if f.rating < TEACHER_RATING:
            bad.setdefault(f.raw_prompt, []).append(f.optimized_prompt)
    triplets = [
        {"anchor": raw, "positive": max(good[raw])[1], "negative": negatives}
        for raw, negatives in bad.items()
        if raw in good
    ]
    return {"distillation_pairs": pairs, "triplets": triplets}


# ---------------------------------------------------------------- training runs


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
        cls, text: str, run_id: str, state_dir: str | Path, defaults, allowed_models=None
    ) -> NeuroTrainingSettings:
        """Parsed and validated against `defaults` (a NeuroConfig: the surrogate's models; a run
        may name another encoder or generator only from `allowed_models`, None: any, as a stored
        run's own); ValueError naming the field (the data itself is checked by `data()`). The
        data comes inline (`training_data`) or, in a stored run, from `training_data_file`."""
        fields = json_object(text, "config_json")
        root = Path(state_dir).resolve() / NEURO_DIR
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
        init = confined_path(init, root, "init_checkpoint") if init else ""
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

    def record(self, state_dir: str | Path, output_dir: str) -> dict:
        """What the run store keeps: the resolved settings, the data in a content-addressed file
        under neuro/data (not in the record, which every ListRuns returns)."""
        text = json.dumps(self.training_data, sort_keys=True)
        path = Path(state_dir).resolve() / NEURO_DIR / "data" / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        fields = {"training_data_file": str(path), "include_feedback": self.include_feedback}
        fields.update(init_checkpoint=self.init_checkpoint, output_dir=output_dir, **dataclasses.asdict(self.neuro))
        return fields

    def data(self, feedback: FeedbackStore):
        """The run's TrainingData: the inline file, plus the stored feedback with include_feedback;
        ValueError when a phase with epochs has nothing to train on."""
        from services.surrogate.neuro import TrainingData

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
        from services.surrogate.neuro import FrozenEncoder, load_generator

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

    def __init__(self, settings: NeuroTrainingSettings, emit, cancelled, run_id, parts: ModelParts, feedback, on_final):
        self.settings, self.emit, self.cancelled, self.run_id = settings, emit, cancelled, run_id
        self.parts, self.feedback, self.on_final = parts, feedback, on_final
        self.root = Path(settings.output_dir)
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
        from services.surrogate.neuro import NeuroRewriter, TrainingData, load_neuro

        if self._rewriter is None:
            self._data = TrainingData.from_json(json.loads(self.data_path.read_text()), str(self.data_path))
            encoder, generator = self.parts.get(self.settings.neuro)
            head, trainer = None, None
            source = state["last_checkpoint"] or self.settings.init_checkpoint
            if source:
                _, head, facts = load_neuro(source)
                if state["last_checkpoint"]:
                    if facts.get("run_id") != self.run_id:
                        raise ValueError(f"{source} belongs to training run {facts.get('run_id')!r}")
                    trainer = facts["trainer"]
            self._rewriter = NeuroRewriter(self.settings.neuro, encoder, generator, head)
            if trainer is not None:
                self._rewriter.load_state(trainer)
        if len(self._rewriter.history) != state["step"]:
            raise ValueError(f"the checkpoint is at epoch {len(self._rewriter.history)}, the run at {state['step']}")
        return self._rewriter

    def step(self, state: dict) -> dict:
        from services.surrogate.neuro import FINAL_CHECKPOINT, checkpoint_name, save_neuro

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
        """The newest checkpoint and its epoch's loss (lower is better)."""
        if not state["history"]:
            return "", math.nan
        return state["last_checkpoint"], float(state["history"][-1]["loss"])

    def report(self, state: dict) -> dict:
        from services.surrogate.neuro import FINAL_CHECKPOINT

        final = self.root / FINAL_CHECKPOINT
        return {
            "final_checkpoint": str(final) if state["step"] == self.total_steps() else "",
            "last_checkpoint": state["last_checkpoint"],
            "data": state["data"],
            "config": dataclasses.asdict(self.settings.neuro),
            "history": state["history"],
        }


# ---------------------------------------------------------------- serving


def checkpoints_newest_first(root: Path) -> list[Path]:
    """Every `neuro_final_model.pt` under `root`, newest first, then the epoch checkpoints."""
    from services.surrogate.neuro import FINAL_CHECKPOINT

    out = []
    for pattern in (FINAL_CHECKPOINT, "phase*_epoch_*.pt"):
        out += sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    return out


def check_compatible(init: str, config) -> None:
    """ValueError naming init_checkpoint unless its head fits `config` (a NeuroConfig)."""
    from services.surrogate.neuro import load_neuro

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
        from services.surrogate.neuro import NeuroRewriter, load_neuro

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


def parse_optimize(request) -> dict:
    """Optimize's fields, checked (INVALID_ARGUMENT naming the field); unset fields take the
    seed's values (max_length 200, one sequence, temperature 0.7)."""
    require(bool(request.raw_prompt.strip()), "raw_prompt must be a non-empty prompt")
    require(len(request.raw_prompt) <= MAX_PROMPT_CHARS, f"raw_prompt is longer than {MAX_PROMPT_CHARS} characters")
    max_length = request.max_length if request.HasField("max_length") else 200
    require(1 <= max_length <= MAX_NEW_TOKENS, f"max_length must be in [1, {MAX_NEW_TOKENS}], got {max_length}")
    n = request.num_return_sequences if request.HasField("num_return_sequences") else 1
    require(1 <= n <= MAX_SEQUENCES, f"num_return_sequences must be in [1, {MAX_SEQUENCES}], got {n}")
    temperature = request.temperature if request.HasField("temperature") else 0.7
    require(
        math.isfinite(temperature) and temperature > 0, f"temperature must be a finite number > 0, got {temperature}"
    )
    return {
        "raw": request.raw_prompt,
        "max_new_tokens": max_length,
        "n": n,
        "temperature": temperature,
        "seed": request.seed,
    }


def feedback_from_proto(message) -> Feedback:
    return Feedback(
        message.raw_prompt, message.optimized_prompt, message.rating, message.corrected_prompt, message.comment
    )


class NeuroServicer(OperationServicer):
    """The six run RPCs over the training runs, Optimize and the feedback RPCs."""

    def __init__(self, store: RunStore, manager: RunManager, parse, rewriters: Rewriters, feedback: FeedbackStore):
        super().__init__(neuro_pb2, store, manager, parse)
        self.rewriters, self.feedback = rewriters, feedback

    def Optimize(self, request, context):  # noqa: N802 - gRPC method name
        fields = parse_optimize(request)
        path, rewriter = self.rewriters.get(request.checkpoint)
        return neuro_pb2.OptimizeResponse(optimized_prompts=rewriter.rewrite(**fields), checkpoint=path)

    def SubmitFeedback(self, request, context):  # noqa: N802 - gRPC method name
        require(request.HasField("feedback"), "feedback must be set")
        feedback_id, total = self.feedback.add(feedback_from_proto(request.feedback))
        return neuro_pb2.SubmitFeedbackResponse(feedback_id=feedback_id, total=total)

    def ListFeedback(self, request, context):  # noqa: N802 - gRPC method name
        size = request.page_size or 50
        require(1 <= size <= 1000, f"page_size must be in [1, 1000], got {size}")
        require(re.fullmatch(r"[0-9]{0,9}", request.page_token) is not None, "page_token is not one this service gave")
        offset = int(request.page_token or 0)
        rows = self.feedback.list(size + 1, offset)
        return neuro_pb2.ListFeedbackResponse(
            feedback=[
                neuro_pb2.StoredFeedback(feedback_id=i, time=t, feedback=neuro_pb2.Feedback(**dataclasses.asdict(f)))
                for i, t, f in rows[:size]
            ],
            next_page_token=str(offset + size) if len(rows) > size else "",
        )


def neuro_service(
    store: RunStore,
    state_dir: str | Path,
    defaults,
    device: str = "cpu",
    parts: ModelParts | None = None,
    allowed_models: tuple[str, ...] = (),
) -> tuple[ServiceBinding, RunManager, Rewriters]:
    """The NeuroService over `store` (checkpoints and feedback under `state_dir`/neuro; new runs
    take `defaults`, a NeuroConfig, for what they leave unset, and may name other frozen models
    only from `allowed_models`; the frozen models from `parts`), its run manager, and the
    rewriters (call `load_newest()` once torch may load)."""
    root = Path(state_dir).resolve() / NEURO_DIR
    feedback = FeedbackStore(root / "feedback.sqlite")
    parts = parts or ModelParts(device)
    rewriters = Rewriters(root, parts)

    def factory(record, emit, usage, cancelled):
        settings = NeuroTrainingSettings.from_json(json.dumps(record.config), record.run_id, state_dir, defaults)
        return NeuroTrainingJob(settings, emit, cancelled, record.run_id, parts, feedback, rewriters.use)

    def parse(request):
        settings = NeuroTrainingSettings.from_json(request.config_json, "check", state_dir, defaults, allowed_models)
        given = json_object(request.config_json, "config_json").get("output_dir", "")
        if given and any(Path(settings.output_dir).glob("*.pt")):
            raise ValueError(f"output_dir {settings.output_dir!r} holds another training run's checkpoints")
        settings.data(feedback)  # refused now, not when the run starts
        init = settings.init_checkpoint
        if not init and not settings.neuro.phase1_epochs:  # the seed's phase-2-only run continues phase 1's model
            newest = checkpoints_newest_first(root)
            if not newest:
                raise ValueError("phase1_epochs 0 trains phase 2 alone: it needs init_checkpoint (no model is trained)")
            init = str(newest[0])
        if init:
            check_compatible(init, settings.neuro)
        settings = dataclasses.replace(settings, init_checkpoint=init)
        return "neuro", request.display_name, settings.record(state_dir, given), settings.neuro.total_epochs

    manager = RunManager(store, factory)
    servicer = NeuroServicer(store, manager, parse, rewriters, feedback)
    add = neuro_pb2_grpc.add_NeuroServiceServicer_to_server
    return ServiceBinding.of(neuro_pb2, "NeuroService", add, servicer), manager, rewriters
