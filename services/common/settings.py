"""One declaration per setting: its default, one line of help, its bounds and its debug value.

An algorithm's settings are a frozen dataclass deriving from `Settings`, each field declared
with `setting(...)`, or a nested `SettingsGroup` shared by several algorithms (APE, Hyperband,
VAE, GP, acquisition, guidance) declared with `nested(Group, ...)` and this algorithm's defaults
where the seeds differ. Outside the code a setting has one flat name (`vae_epochs`): in stored
runs, the proto, the CLI and the tuner. From that one source come: validation with messages
naming the field (`Settings.__post_init__`), the debug preset (`Settings.from_fields`), the CLI
flags with help and defaults, the proto drift test and the tuner's baseline.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import math
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from services.common.artifacts import ARTIFACT_ID
from services.common.config import coerced
from services.common.errors import shown

NO_DEBUG = object()  # the setting keeps its default in debug runs
MAX_TEXT_CHARS = 4096  # a text setting, or one item of a list setting (a prompt, a path, a name)
MAX_LIST_ITEMS = 5000  # items of a list setting (e.g. random search's candidate instructions)


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
        group: the title of the group it is shown under ("" for the algorithm's own settings).
        flat: its flat name, in a group whose prefix does not make it ('' : prefix + field name).
        artifact: the kind of uploaded artifact whose id it holds ('': none); the service loads it.
    """

    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple = ()
    debug: Any = NO_DEBUG
    group: str = ""
    flat: str = ""
    artifact: str = ""

    def field(self, **overrides) -> Any:
        """A dataclass field carrying this declaration (`overrides`: e.g. another default)."""
        spec = dataclasses.replace(self, **overrides)
        return dataclasses.field(default=spec.default, metadata={"setting": spec})

    def problem(self, value) -> str | None:
        """Why `value` is out of bounds ('must be ...'), or None when it is allowed."""
        if self.choices:
            return None if value in self.choices else f"must be one of {list(self.choices)}, got {shown(repr(value))}"
        if self.artifact and value and not ARTIFACT_ID.match(value):
            return f"must be an artifact id (32 hex digits from an upload), got {shown(repr(value))}"
        if isinstance(value, str):
            return None if len(value) <= MAX_TEXT_CHARS else f"must be at most {MAX_TEXT_CHARS} characters"
        if isinstance(value, tuple):
            if len(value) > MAX_LIST_ITEMS:
                return f"must hold at most {MAX_LIST_ITEMS} items, got {len(value)}"
            longest = max(map(len, value), default=0)
            return None if longest <= MAX_TEXT_CHARS else f"items must be at most {MAX_TEXT_CHARS} characters"
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


class Slot(typing.NamedTuple):
    """Where a setting lives in an algorithm's settings."""

    group: str | None  # the attribute of its nested group (None: a field of the settings)
    name: str  # its field name there
    kind: Any  # its type
    setting: Setting  # its declaration, with the algorithm's default and debug value and the group's title


class SettingsGroup:
    """Base of a group of settings that several algorithms nest (a frozen dataclass whose fields
    are declared with `setting`). Its fields' flat names are `prefix` + field name unless a field
    names its own (`flat=`); values are checked by the settings that nest it, naming the flat name."""

    title: ClassVar[str] = ""  # the CLI's heading of the group
    prefix: ClassVar[str] = ""

    @classmethod
    def declared(cls) -> dict[str, Setting]:
        """Each field's declaration, by field name."""
        return {f.name: f.metadata["setting"] for f in dataclasses.fields(cls)}

    @classmethod
    def flat_name(cls, name: str) -> str:
        return cls.declared()[name].flat or cls.prefix + name


def nested(group: type[SettingsGroup], debug: Mapping | None = None, **defaults) -> Any:
    """A `Settings` field holding `group`, with this algorithm's `defaults` and `debug` values
    (by field name) where they differ from the group's."""
    unknown = sorted((set(defaults) | set(debug or {})) - set(group.declared()))
    if unknown:
        raise TypeError(f"{group.__name__} has no settings {unknown}")
    return dataclasses.field(
        default_factory=lambda: group(**defaults), metadata={"group": (group, defaults, dict(debug or {}))}
    )


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
    messages use, e.g. "opro"), declare each field with `setting` (or a shared `Setting`) or a
    shared group with `nested`, and put checks across fields in `validate`. Build them with
    `from_fields` (flat names): a group constructed by hand has the group's defaults, not the
    algorithm's. The per-algorithm hooks below have defaults.
    """

    section: ClassVar[str] = ""
    retired: ClassVar[tuple[str, ...]] = ()  # settings runs stored before they were removed
    debug = False  # a class attribute: settings with a debug preset declare a `debug` field

    def __post_init__(self):
        for attr, (group, _, _) in self.nested_groups().items():
            if not isinstance(getattr(self, attr), group):
                raise TypeError(f"{self.section}.{attr} must be a {group.__name__}, got {getattr(self, attr)!r}")
        group_values = {}
        for flat, slot in self.layout().items():
            value = _coerce(getattr(self._holder(slot), slot.name), slot.kind, f"{self.section}.{flat}")
            problem = slot.setting.problem(value)
            if problem:
                raise ValueError(f"{self.section}.{flat} {problem}")
            if slot.group is None:
                object.__setattr__(self, slot.name, value)
            else:
                group_values.setdefault(slot.group, {})[slot.name] = value
        for attr, values in group_values.items():  # a new group: the caller's instance stays as it was
            object.__setattr__(self, attr, dataclasses.replace(getattr(self, attr), **values))
        self.validate()

    def _holder(self, slot: Slot):
        """The object whose field `slot` is: these settings, or one of their nested groups."""
        return self if slot.group is None else getattr(self, slot.group)

    def validate(self) -> None:
        """Checks across fields; ValueError naming the fields (bounds are checked before)."""
        return None

    @classmethod
    @functools.cache
    def nested_groups(cls) -> dict[str, tuple[type[SettingsGroup], dict, dict]]:
        """Each nested group's attribute: (its type, this algorithm's defaults, its debug values)."""
        return {f.name: f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata}

    @classmethod
    @functools.cache
    def layout(cls) -> dict[str, Slot]:
        """Where each setting, by flat name, lives, with its declaration as this algorithm makes it;
        TypeError on a flat name declared twice."""
        out, hints = {}, typing.get_type_hints(cls)
        groups = cls.nested_groups()
        for f in dataclasses.fields(cls):
            if "setting" in f.metadata:
                slots = {f.name: Slot(None, f.name, hints[f.name], f.metadata["setting"])}
            elif f.name in groups:
                group, defaults, debug = groups[f.name]
                group_hints, slots = typing.get_type_hints(group), {}
                for name, spec in group.declared().items():
                    spec = dataclasses.replace(
                        spec,
                        group=group.title,
                        flat="",
                        default=defaults.get(name, spec.default),
                        debug=debug.get(name, spec.debug),
                    )
                    slots[group.flat_name(name)] = Slot(f.name, name, group_hints[name], spec)
            else:
                continue
            twice = sorted(set(slots) & set(out))
            if twice:
                raise TypeError(f"{cls.__name__}: settings {twice} are declared twice")
            out.update(slots)
        return out

    @classmethod
    def declared(cls) -> dict[str, Setting]:
        """Each setting's declaration by flat name, in field order."""
        return {flat: slot.setting for flat, slot in cls.layout().items()}

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
        for name in cls.retired:  # a stored run that left a retired setting unset still loads
            if fields.pop(name, ""):
                raise ValueError(f"{cls.section}.{name} is retired: start a new run that names its files by upload")
        unknown = sorted(set(fields) - set(cls.declared()))
        if unknown:
            raise ValueError(f"{cls.section}: unknown settings {unknown}; known: {sorted(cls.declared())}")
        if fields.get("debug"):
            fields = {**cls.debug_preset(fields), **fields}
        own, grouped, layout = {}, {}, cls.layout()
        for flat, value in fields.items():
            slot = layout[flat]
            if slot.group is None:
                own[slot.name] = value
            else:
                grouped.setdefault(slot.group, {})[slot.name] = value
        for attr, values in grouped.items():
            group, defaults, _ = cls.nested_groups()[attr]
            own[attr] = group(**{**defaults, **values})
        return cls(**own)

    def as_fields(self) -> dict:
        """The settings by flat name, JSON-ready (what a run stores; `from_fields` reads them back)."""
        out = {}
        for flat, slot in self.layout().items():
            value = getattr(self._holder(slot), slot.name)
            out[flat] = list(value) if isinstance(value, tuple) else value
        return out

    @abc.abstractmethod
    def search_steps(self) -> int:
        """Steps of the search before the held-out step."""

    def seen_splits(self) -> list[tuple[str, str]]:
        """(field, split) of data the search sees besides the validation split."""
        return []

    def check_splits(self, evaluation, sizes: dict[str, int]) -> None:
        """Check the run's splits against the dataset's `sizes` (ValueError naming the field)."""
        return None

    def load_inputs(self, artifacts) -> dict:
        """The parsed content of each uploaded artifact these settings name, by flat name, from
        `artifacts` (an ArtifactStore); ValueError naming the field when one is missing or of
        another kind. Then `check_inputs` checks them against the settings."""
        inputs, values = {}, self.as_fields()
        for flat, spec in self.declared().items():
            value = values[flat]
            if spec.artifact and value:
                inputs[flat] = artifacts.load(value, spec.artifact, f"{self.section}.{flat}")
        self.check_inputs(inputs)
        return inputs

    def check_inputs(self, inputs: dict) -> None:
        """Checks of the uploaded inputs against the settings (ValueError naming the field)."""
        return None

    def named_models(self) -> dict[str, str]:
        """Models of llm_eval the run names, by field ('' = the run's meta model)."""
        return {}
