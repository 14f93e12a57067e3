"""A tuning run's settings (StartRun's config_json, `promptopt tune` flags), validated with
errors that name the field. Everything a worker needs to run a trial travels with the study
(Optuna user attributes), so a worker knows only the storage URL and the study's name.

No request names a place on the tuner: its grid and corpus are uploads named by id, its output
lives under the tuner's state directory named by run id, and the Optuna storage is the operator's.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import sqlalchemy

from services.common.artifacts import check_id
from services.common.config import json_object, refuse_fields
from services.tuner.hyperspace import ORDER, narrowed_space, parse_phases

ZERO_MEANS_DEFAULT = ("vae_epochs_cap", "fidelity", "test_fidelity", "inference_iterations")
QUICK_TRIALS = 5  # the seed's quick test: 5 trials per phase
FULL_TRIALS = 50
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a study prefix or a run id: a label, a directory
# fields a request may not set, and what to do instead (runs stored before they were retired keep loading)
NOT_REQUEST_FIELDS = {
    "grid_dir": "upload the grid (promptopt tune --grid DIR) and name it by "
    "instructions_artifact, exemplar_sets_artifact and grid_artifact",
    "corpus_path": "upload the corpus (promptopt tune --corpus FILE) and name it by corpus_artifact",
    "resume": "name the run whose tuning continues by resume_run (promptopt tune --resume RUN_ID)",
    "output_dir": "the tuner keeps each tuning under its state directory, named by run id",
    "storage": "the Optuna storage is the operator's setting PROMPTOPT_TUNER_STORAGE_URL",
}
MAX_BUDGET = 1_000_000  # any Budget field
MAX_SEED = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Budget:
    """How big each trial's work is. The tuned values are the seed's; on CPU a quick run caps
    VAE epochs (`vae_epochs_cap`, the trial records both) and shrinks the fixed training sizes."""

    vae_epochs_cap: int = 0  # 0: the tuned vae_epochs (values up to MAX_BUDGET)
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
    study_prefix: str = ""  # empty: the run id
    space: dict = dataclasses.field(default_factory=dict)  # narrowing of the seed's ranges
    seed: int = 0
    # the recorded grid the scorer, GP and inference phases use: three uploads, or none (hbbops_dev)
    instructions_artifact: str = ""
    exemplar_sets_artifact: str = ""
    grid_artifact: str = ""
    corpus_artifact: str = ""  # uploaded instruction corpus of the VAE phase ('': the shipped APE pool)
    split: str = "test[:50%]"
    test_split: str = "test[50%:]"
    heartbeat_seconds: int = 60
    grace_seconds: int = 180
    max_retry: int = 3
    resume_run: str = ""  # continue the tuning of this earlier run (its saved state and studies)
    budget: Budget = dataclasses.field(default_factory=Budget)
    # set by the service, never by a request
    output_dir: str = ""  # the tuner's state directory / the run id (resume_run's when resuming)
    storage: str = ""  # the operator's SQLAlchemy URL, else SQLite in output_dir

    @classmethod
    def from_json(
        cls, text: str, run_id: str = "", state_dir: str | Path = "state/tuner", storage: str = "", stored: bool = False
    ) -> TuningSettings:
        """Parsed and validated settings with the service's `output_dir` and `storage` (the
        operator's URL, else SQLite in the output directory); ValueError naming the field. A
        `stored` run's config may hold fields since retired: they are dropped."""
        if not text.strip():
            raise ValueError("config_json must be set (a JSON object; {} keeps every default)")
        fields = json_object(text, "config_json")
        if fields.get("resume") is False:  # what earlier clients always sent: no request to resume
            fields.pop("resume")
        if stored and fields.get("resume") is True and isinstance(fields.get("output_dir"), str):
            fields.setdefault("resume_run", Path(fields["output_dir"]).name)  # recorded before resume_run
        if not stored:
            refuse_fields(fields, NOT_REQUEST_FIELDS, "is not a request field")
        for name in NOT_REQUEST_FIELDS:
            fields.pop(name, None)
        known = {f.name for f in dataclasses.fields(cls)} - set(NOT_REQUEST_FIELDS)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"config_json: unknown fields {unknown}; known: {sorted(known)}")
        for name in ("quick",):
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
        resume_run = fields.get("resume_run", "")
        if not isinstance(resume_run, str) or (resume_run and not NAME.match(resume_run)):
            raise ValueError(f"resume_run must be a tuner run id, got {str(resume_run)[:80]!r}")
        defaults = {
            "trials_per_phase": QUICK_TRIALS if quick else FULL_TRIALS,
            "study_prefix": run_id or "bolt",
        }
        for name, value in defaults.items():
            if fields.get(name) in (None, ""):
                fields[name] = value
        fields.update(service_paths(state_dir, resume_run or run_id or "tuning", storage))
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ValueError(f"config_json: {exc}") from exc

    def __post_init__(self):
        parse_phases(list(self.phases))
        if list(self.phases) != list(parse_phases(list(self.phases))):
            raise ValueError(f"phases must be in coordinate-descent order {list(ORDER)}, got {list(self.phases)}")
        narrowed_space(self.space)
        for name in ("output_dir", "study_prefix", "storage", "split", "test_split", "resume_run"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not NAME.match(self.study_prefix):
            raise ValueError(f"study_prefix must match {NAME.pattern} (it names studies and metric series)")
        for name in ("instructions_artifact", "exemplar_sets_artifact", "grid_artifact", "corpus_artifact"):
            if getattr(self, name):
                check_id(getattr(self, name), name)
        if not isinstance(self.quick, bool):
            raise ValueError(f"quick must be true or false, got {self.quick!r}")
        for name, low, high in (
            ("trials_per_phase", 1, 10_000),
            ("heartbeat_seconds", 1, 3600),
            ("grace_seconds", 1, 86_400),
            ("workers", 0, 16),
            ("max_retry", 0, 10),
            ("seed", 0, MAX_SEED),
        ):
            value = getattr(self, name)
            if not is_int(value) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r:.80}")
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError("grace_seconds must exceed heartbeat_seconds (a live trial beats within the grace)")
        try:
            sqlalchemy.engine.make_url(self.storage)
        except sqlalchemy.exc.ArgumentError as exc:
            raise ValueError(f"storage {redact(self.storage)!r} is not a SQLAlchemy URL: {exc}") from exc
        for f in dataclasses.fields(Budget):
            value, may_be_zero = getattr(self.budget, f.name), f.name in ZERO_MEANS_DEFAULT
            if not is_int(value) or not (0 if may_be_zero else 1) <= value <= MAX_BUDGET:
                low = "non-negative" if may_be_zero else "positive"
                raise ValueError(f"budget.{f.name} must be a {low} integer up to {MAX_BUDGET}")

    def to_json(self, redacted: bool = False) -> str:
        """JSON of every field; `redacted` hides the storage URL's password (what is persisted)."""
        fields = dataclasses.asdict(self)
        if redacted:
            fields["storage"] = redact(self.storage)
        return json.dumps(fields)

    @classmethod
    def from_dict(cls, fields: dict) -> TuningSettings:
        """Settings as `to_json` wrote them (a study's user attribute, a saved state); fields
        since retired are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in fields.items() if k in known}
        return cls(**{**fields, "phases": tuple(fields["phases"]), "budget": Budget(**fields["budget"])})


def service_paths(state_dir: str | Path, name: str, storage: str = "") -> dict:
    """The output directory of tuning `name` under the tuner's state directory, and its Optuna
    storage: the operator's URL, else SQLite in that directory."""
    output_dir = Path(state_dir) / name
    return {"output_dir": str(output_dir), "storage": storage or f"sqlite:///{output_dir.resolve() / 'optuna.db'}"}


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def redact(url: str) -> str:
    """A storage URL without its password."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url
