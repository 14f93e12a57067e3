"""BOLT's search space (seed 004): the three parameter tiers with the seed's ranges and choices,
the four coordinate-descent phases with what each tunes, its objective and checkpoint gate,
and the baseline pipeline config (LIPO-E fields) the phases start from."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import optuna

from services.optimizer.types import settings_of


@dataclasses.dataclass(frozen=True)
class Param:
    """One tuned field of the pipeline config: a float range (`low`, `high`, log scale for
    learning rates) or a list of `choices`; `tier` 1 (critical), 2 (important) or 3 (finetune)."""

    name: str
    tier: int
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    log: bool = False

    def suggest(self, trial: optuna.Trial):
        if self.choices:
            return trial.suggest_categorical(self.name, self.choices)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        """Whether `value` lies in the range, or is one of the choices (type included: 16.0 is
        not the choice 16, nor 1 the choice True)."""
        if self.choices:
            return any(type(c) is type(value) and c == value for c in self.choices)
        return self.low <= value <= self.high

    def narrowed(self, spec) -> Param:
        """This parameter over a user's sub-range [low, high] or subset of choices; ValueError when
        it leaves the seed's."""
        where = f"space.{self.name}"
        if self.choices:
            picked = tuple(spec) if isinstance(spec, list | tuple) else ()
            if not picked or not all(self.contains(c) for c in picked):
                raise ValueError(
                    f"{where} must be a non-empty subset of the seed's choices {list(self.choices)}, got {spec!r}"
                )
            return dataclasses.replace(self, choices=picked)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in spec) if spec else False
        if not (isinstance(spec, list | tuple) and len(spec) == 2 and numbers):
            raise ValueError(f"{where} must be [low, high] within the seed's [{self.low}, {self.high}], got {spec!r}")
        low, high = float(spec[0]), float(spec[1])
        if not self.low <= low < high <= self.high:
            raise ValueError(f"{where} [{low}, {high}] is outside the seed's range [{self.low}, {self.high}]")
        return dataclasses.replace(self, low=low, high=high)


TIER_NAMES = {1: "CRITICAL", 2: "IMPORTANT", 3: "FINETUNE"}

PARAMS: tuple[Param, ...] = (
    # Tier 1: CRITICAL
    Param("vae_beta", 1, 0.005, 0.1),
    Param("vae_mse_weight", 1, 0.1, 0.5),
    Param("instruction_latent_dim", 1, choices=(12, 16, 24, 32)),
    Param("exemplar_latent_dim", 1, choices=(8, 12, 16, 24)),
    Param("ucb_beta", 1, 4.0, 16.0),
    Param("mmr_lambda", 1, 0.3, 0.9),
    Param("selection_weight", 1, 0.05, 0.4),
    # Tier 2: IMPORTANT
    Param("set_transformer_heads", 2, choices=(4, 8)),
    Param("set_transformer_hidden", 2, choices=(64, 128, 256)),
    Param("num_inducing_points", 2, choices=(4, 8)),
    Param("gp_lr", 2, 0.001, 0.01, log=True),
    Param("use_deep_kernel", 2, choices=(True, False)),
    Param("vae_lr", 2, 0.0001, 0.001, log=True),
    Param("vae_epochs", 2, choices=(20000, 50000, 100000)),
    # Tier 3: FINETUNE
    Param("num_restarts", 3, choices=(32, 64, 128)),
    Param("raw_samples", 3, choices=(2048, 4096, 8192)),
    Param("cosine_sim_threshold", 3, 0.85, 0.95),
    Param("distance_weight", 3, 1.0, 4.0),
    Param("latent_noise_scale", 3, 0.01, 0.1),
)
BY_NAME = {p.name: p for p in PARAMS}


@dataclasses.dataclass(frozen=True)
class Gate:
    """A checkpoint gate: every (metric, op, bound) must hold on the phase's best trial."""

    checks: tuple[tuple[str, str, float], ...]

    def failures(self, metrics: dict) -> list[str]:
        out = []
        for name, op, bound in self.checks:
            value = metrics.get(name)
            ok = value is not None and (value >= bound if op == ">=" else value < bound)
            if not ok:
                out.append(f"{name} {value if value is None else round(value, 4)} (needs {op} {bound})")
        return out

    def describe(self) -> str:
        return " and ".join(f"{n} {op} {b}" for n, op, b in self.checks)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One coordinate-descent phase: the parameters it tunes (the others stay at the best so far),
    the metric it maximises and its gate."""

    name: str
    params: tuple[str, ...]
    objective: str
    gate: Gate

    def tiers(self) -> list[int]:
        return sorted({BY_NAME[p].tier for p in self.params})


PHASES: dict[str, Phase] = {
    p.name: p
    for p in (
        Phase(
            "vae",
            ("vae_beta", "vae_mse_weight", "instruction_latent_dim", "exemplar_latent_dim", "vae_lr", "vae_epochs"),
            "retrieval_accuracy_at_8",
            Gate((("retrieval_accuracy_at_8", ">=", 0.85), ("lipschitz_constant", "<", 10.0))),
        ),
        Phase(
            "scorer",
            (
                "selection_weight",
                "mmr_lambda",
                "set_transformer_heads",
                "set_transformer_hidden",
                "num_inducing_points",
            ),
            "ndcg_at_8",
            Gate((("ndcg_at_8", ">=", 0.70),)),
        ),
        Phase(
            "gp", ("gp_lr", "use_deep_kernel"), "spearman_correlation", Gate((("spearman_correlation", ">=", 0.40),))
        ),
        Phase(
            "inference",
            (
                "ucb_beta",
                "num_restarts",
                "raw_samples",
                "cosine_sim_threshold",
                "distance_weight",
                "latent_noise_scale",
            ),
            "final_accuracy",
            Gate((("final_accuracy", ">=", 0.915),)),
        ),
    )
}
ORDER = ("vae", "scorer", "gp", "inference")

# BOLT's switches on top of LIPO-E: the Set Transformer scorer and UCB (seed 004).
BOLT_SWITCHES = {"use_scorer": True, "acquisition": "ucb"}


def baseline() -> dict:
    """The pipeline the phases start from: LIPO-E's declared defaults (seed 001) inside the seed-004
    space, with BOLT's switches on; a default outside a range starts at its low end (its first
    choice)."""
    declared = settings_of("lipo_e").declared()
    config = {}
    for name, param in BY_NAME.items():
        default = declared[name].default
        config[name] = default if param.contains(default) else (param.choices[0] if param.choices else param.low)
    return {**config, **BOLT_SWITCHES}


BASELINE: dict = baseline()


def parse_phases(names: Sequence[str]) -> tuple[str, ...]:
    """Phase names in coordinate-descent order; ValueError naming an unknown one."""
    unknown = [n for n in names if n not in PHASES]
    if unknown or not names:
        raise ValueError(f"phases must be a non-empty subset of {list(ORDER)}, got unknown {unknown or 'none'}")
    return tuple(p for p in ORDER if p in names)


def narrowed_space(overrides: dict) -> dict[str, Param]:
    """The seed's space with a user's narrowing (`{"vae_beta": [0.01, 0.05], "vae_epochs": [20000]}`)."""
    if not isinstance(overrides, dict):
        raise ValueError(f"space must be an object {{parameter: [low, high] or [choices]}}, got {overrides!r}")
    unknown = sorted(set(overrides) - set(BY_NAME))
    if unknown:
        raise ValueError(f"space: unknown parameters {unknown}; the seed's are {sorted(BY_NAME)}")
    return {name: p.narrowed(overrides[name]) if name in overrides else p for name, p in BY_NAME.items()}
