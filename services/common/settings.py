"""One declaration per setting: its default, one line of help, its bounds and its debug value.

An algorithm's settings are a frozen dataclass deriving from `Settings`, each field declared
with `setting(...)`, or with a shared `Setting` of a group (APE, Hyperband, VAE, GP,
acquisition, guidance) and a per-algorithm default where the seeds differ. From that one source
come: validation with messages naming the field (`Settings.__post_init__`), the debug preset
(`Settings.from_fields`), the CLI flags with help and defaults, the proto drift test and the
tuner's baseline.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from services.common.config import coerced

NO_DEBUG = object()  # the setting keeps its default in debug runs


@dataclasses.dataclass(frozen=True)
class Setting:
    """A setting's declaration.

    Attributes:
        default: the value when unset (the seed's).
        help: what it does, in one line (the CLI's help text).
        low, high: inclusive bounds of a number (None: unbounded).
        above: an exclusive lower bound (`above=0`: positive).
        choices: the allowed values of a string (empty: any).
        debug: the value a debug run takes when the setting is unset (NO_DEBUG: the default).
        group: the shared group it belongs to ("" for the algorithm's own settings).
    """

    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple = ()
    debug: Any = NO_DEBUG
    group: str = ""

    def field(self, **overrides) -> Any:
        """A dataclass field carrying this declaration (`overrides`: e.g. another default)."""
        spec = dataclasses.replace(self, **overrides)
        return dataclasses.field(default=spec.default, metadata={"setting": spec})

    def problem(self, value) -> str | None:
        """Why `value` is out of bounds ('must be ...'), or None when it is allowed."""
        if self.choices:
            return None if value in self.choices else f"must be one of {list(self.choices)}, got {value!r}"
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        low_ok = (self.low is None or value >= self.low) and (self.above is None or value > self.above)
        if low_ok and (self.high is None or value <= self.high):
            return None
        if self.high is None and (self.above == 0 or (self.low == 1 and isinstance(value, int))):
            return f"must be positive, got {value}"
        left = f"({self.above}" if self.above is not None else (f"[{self.low}" if self.low is not None else "(-inf")
        if self.high is None:
            return f"must be {'>' if self.above is not None else '>='} {left[1:]}, got {value}"
        return f"must be in {left}, {self.high}], got {value}"

    def describe(self) -> str:
        """The help line with its bounds and default, as the CLI shows it."""
        bounds = ""
        if self.choices:
            bounds = f" (one of: {', '.join(map(str, self.choices))})"
        elif self.low is not None or self.above is not None or self.high is not None:
            left = f"> {self.above}" if self.above is not None else (f">= {self.low}" if self.low is not None else "")
            right = f"<= {self.high}" if self.high is not None else ""
            bounds = f" ({', '.join(b for b in (left, right) if b)})"
        default = self.default if not isinstance(self.default, tuple) else list(self.default)
        return f"{self.help}{bounds} (default: {default!r})"


def setting(default, help: str, **bounds) -> Any:
    """A field of a `Settings` class: `count: int = setting(10, "what it does", low=1)`."""
    return Setting(default, help, **bounds).field()


@contextlib.contextmanager
def named_section(section: str):
    """Prefix `section.` to a ValueError raised inside (checks of a nested settings type, e.g. the
    surrogate's `raw_samples must be >= num_restarts`), so the message names the run's field."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"{section}.{exc}") from exc


def _coerce(value, kind, name: str):
    """`value` as the field's type `kind` (an int for a float, a list for a tuple); TypeError naming it."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, list | tuple) or not all(isinstance(v, item) for v in value):
            raise ValueError(f"{name} must be a list of {item.__name__}, got {value!r}")
        return tuple(value)
    return coerced(value, kind, name)


class Settings(abc.ABC):
    """Base of every algorithm's frozen settings dataclass.

    Contract: subclasses are `@dataclasses.dataclass(frozen=True)`, set `section` (the name
    messages use, e.g. "opro"), declare each field with `setting` or a shared `Setting`, and
    put checks across fields in `validate`. The per-algorithm hooks below have defaults.
    """

    section: ClassVar[str] = ""
    debug = False  # a class attribute: settings with a debug preset declare a `debug` field

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for name, spec in self.declared().items():
            value = _coerce(getattr(self, name), hints[name], f"{self.section}.{name}")
            object.__setattr__(self, name, value)
            problem = spec.problem(value)
            if problem:
                raise ValueError(f"{self.section}.{name} {problem}")
        self.validate()

    def validate(self) -> None:
        """Checks across fields; ValueError naming the fields (bounds are checked before)."""
        return None

    @classmethod
    def declared(cls) -> dict[str, Setting]:
        """Each field's declaration, in field order."""
        return {f.name: f.metadata["setting"] for f in dataclasses.fields(cls) if "setting" in f.metadata}

    @classmethod
    def debug_preset(cls, fields: Mapping) -> dict:
        """The values a debug run gives its unset fields (`fields`: those the user set)."""
        return {name: spec.debug for name, spec in cls.declared().items() if spec.debug is not NO_DEBUG}

    @classmethod
    def upgrade(cls, fields: dict) -> dict:
        """Fields stored by older runs under names since changed, renamed to today's."""
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping):
        """The settings from the fields a user set (the rest: debug values in a debug run, else
        defaults); ValueError naming an unknown field."""
        fields = cls.upgrade(dict(fields))
        unknown = sorted(set(fields) - set(cls.declared()))
        if unknown:
            raise ValueError(f"{cls.section}: unknown settings {unknown}; known: {sorted(cls.declared())}")
        if fields.get("debug"):
            fields = {**cls.debug_preset(fields), **fields}
        return cls(**fields)

    def as_fields(self) -> dict:
        """The settings as JSON-ready fields (what a run stores; `from_fields` reads them back)."""
        return {name: list(v) if isinstance(v, tuple) else v for name, v in dataclasses.asdict(self).items()}

    @abc.abstractmethod
    def search_steps(self) -> int:
        """Steps of the search before the held-out step."""

    def seen_splits(self) -> list[tuple[str, str]]:
        """(field, split) of data the search sees besides the validation split."""
        return []

    def check_splits(self, evaluation, sizes: dict[str, int]) -> None:
        """Check the run's splits against the dataset's `sizes` (ValueError naming the field)."""
        return None

    def named_models(self) -> dict[str, str]:
        """Models of llm_eval the run names, by field ('' = the run's meta model)."""
        return {}
