"""A tuning run's settings (StartRun's config_json, `promptopt tune` flags), validated with
errors that name the field. Everything a worker needs to run a trial travels with the study
(Optuna user attributes), so a worker knows only the storage URL and the study's name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import sqlalchemy

from services.common.config import datasets_dir
from services.tuner.hyperspace import ORDER, narrowed_space, parse_phases

ZERO_MEANS_DEFAULT = ("vae_epochs_cap", "fidelity", "test_fidelity", "inference_iterations")
QUICK_TRIALS = 5  # the seed's quick test: 5 trials per phase
FULL_TRIALS = 50


@dataclasses.dataclass(frozen=True)
class Budget:
    """How big each trial's work is. The tuned values are the seed's; on CPU a quick run caps
    VAE epochs (`vae_epochs_cap`, the trial records both) and shrinks the fixed training sizes."""

    vae_epochs_cap: int = 0  # 0: the tuned vae_epochs
    vae_samples: int = 2000
    vae_patience: int = 500
    gp_epochs: int = 1000
    scorer_epochs: int = 300
    corpus_size: int = 1000  # APE instructions beside the grid's in the VAE phase
    inference_iterations: int = 10
    fidelity: int = 0  # validation questions in the inference phase (0: the whole split)
    test_fidelity: int = 0

    @classmethod
    def quick(cls) -> Budget:
        return cls(
            vae_epochs_cap=40,
            vae_samples=300,
            vae_patience=40,
            gp_epochs=200,
            scorer_epochs=150,
            corpus_size=200,
            inference_iterations=3,
            fidelity=80,
            test_fidelity=200,
        )


@dataclasses.dataclass(frozen=True)
class TuningSettings:
    phases: tuple[str, ...] = ORDER
    quick: bool = False
    trials_per_phase: int = 0  # 0: 5 when quick, else 50
    workers: int = 0  # 0: one per visible GPU, else 1
    storage: str = ""  # SQLAlchemy URL; empty: SQLite in the output directory
    output_dir: str = ""  # empty: the tuner's state directory / the run id
    study_prefix: str = ""  # empty: the run id
    space: dict = dataclasses.field(default_factory=dict)  # narrowing of the seed's ranges
    seed: int = 0
    grid_dir: str = ""  # the recorded grid the scorer, GP and inference phases use (hbbops_dev)
    corpus_path: str = ""  # instruction corpus of the VAE phase (the APE pool)
    split: str = "test[:50%]"
    test_split: str = "test[50%:]"
    heartbeat_seconds: int = 60
    grace_seconds: int = 180
    max_retry: int = 3
    resume: bool = False  # continue the tuning saved in output_dir (its coordinator_state.json)
    budget: Budget = dataclasses.field(default_factory=Budget)

    @classmethod
    def from_json(
        cls, text: str, run_id: str = "", state_dir: str | Path = "state/tuner", storage: str = ""
    ) -> TuningSettings:
        """Parsed and validated settings; ValueError naming the field."""
        if not text.strip():
            raise ValueError("config_json must be set (a JSON object; {} keeps every default)")
        try:
            fields = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"config_json is not JSON: {exc}") from exc
        if not isinstance(fields, dict):
            raise ValueError("config_json must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"config_json: unknown fields {unknown}; known: {sorted(known)}")
        for name in ("quick", "resume"):
            if not isinstance(fields.get(name, False), bool):
                raise ValueError(f"{name} must be true or false, got {fields[name]!r}")
        quick = fields.get("quick", False)
        budget = Budget.quick() if quick else Budget()
        if "budget" in fields:
            extra = fields["budget"]
            names = {f.name for f in dataclasses.fields(Budget)}
            if not isinstance(extra, dict) or set(extra) - names:
                raise ValueError(f"budget must be an object with fields from {sorted(names)}")
            budget = dataclasses.replace(budget, **extra)
        fields["budget"] = budget
        if "phases" in fields:
            if isinstance(fields["phases"], str):
                fields["phases"] = [p.strip() for p in fields["phases"].split(",") if p.strip()]
            if not isinstance(fields["phases"], list | tuple):
                raise ValueError(f"phases must be a list of phases from {list(ORDER)}, got {fields['phases']!r}")
            fields["phases"] = tuple(fields["phases"])
        datasets = datasets_dir()
        defaults = {
            "trials_per_phase": QUICK_TRIALS if quick else FULL_TRIALS,
            "output_dir": str(Path(state_dir) / (run_id or "tuning")),
            "study_prefix": run_id or "bolt",
            "grid_dir": str(datasets / "hbbops_dev"),
            "corpus_path": str(datasets / "prompts" / "ape_instructions_1000.json"),
        }
        for name, value in defaults.items():
            if fields.get(name) in (None, ""):
                fields[name] = value
        if not fields.get("storage"):
            fields["storage"] = storage or f"sqlite:///{Path(fields['output_dir']).resolve() / 'optuna.db'}"
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ValueError(f"config_json: {exc}") from exc

    def __post_init__(self):
        parse_phases(list(self.phases))
        if list(self.phases) != list(parse_phases(list(self.phases))):
            raise ValueError(f"phases must be in coordinate-descent order {list(ORDER)}, got {list(self.phases)}")
        narrowed_space(self.space)
        for name in ("output_dir", "study_prefix", "storage", "grid_dir", "corpus_path", "split", "test_split"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("quick", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name, low, high in (
            ("trials_per_phase", 1, None),
            ("heartbeat_seconds", 1, None),
            ("grace_seconds", 1, None),
            ("workers", 0, 64),
            ("max_retry", 0, 10),
        ):
            value = getattr(self, name)
            if not is_int(value) or value < low or (high is not None and value > high):
                bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError("grace_seconds must exceed heartbeat_seconds (a live trial beats within the grace)")
        try:
            sqlalchemy.engine.make_url(self.storage)
        except sqlalchemy.exc.ArgumentError as exc:
            raise ValueError(f"storage {redact(self.storage)!r} is not a SQLAlchemy URL: {exc}") from exc
        for part in ("instructions.json", "exemplar_sets.json", "grid.jsonl"):
            if not (Path(self.grid_dir) / part).is_file():
                raise ValueError(f"grid_dir {self.grid_dir!r} has no {part} (a recorded grid like hbbops_dev)")
        if not Path(self.corpus_path).is_file():
            raise ValueError(f"corpus_path {self.corpus_path!r} is not a file (a JSON list of instructions)")
        for f in dataclasses.fields(Budget):
            value, may_be_zero = getattr(self.budget, f.name), f.name in ZERO_MEANS_DEFAULT
            if not is_int(value) or value < 0 or (value == 0 and not may_be_zero):
                raise ValueError(f"budget.{f.name} must be a {'non-negative' if may_be_zero else 'positive'} integer")
        if not is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def to_json(self, redacted: bool = False) -> str:
        """JSON of every field; `redacted` hides the storage URL's password (what is persisted)."""
        fields = dataclasses.asdict(self)
        if redacted:
            fields["storage"] = redact(self.storage)
        return json.dumps(fields)

    @classmethod
    def from_dict(cls, fields: dict) -> TuningSettings:
        """Settings as `to_json` wrote them (a study's user attribute)."""
        return cls(**{**fields, "phases": tuple(fields["phases"]), "budget": Budget(**fields["budget"])})


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def redact(url: str) -> str:
    """A storage URL without its password."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url
