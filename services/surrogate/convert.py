"""The surrogate's proto <-> domain conversion: its settings dataclasses to and from proto messages."""

from __future__ import annotations

import dataclasses


def settings_from_proto(msg, default):
    """`default` (a frozen settings dataclass) with the fields set on `msg` replaced, validated."""
    return dataclasses.replace(default, **{field.name: value for field, value in msg.ListFields()})


def settings_to_proto(settings, msg_cls):
    """The proto settings message for a settings dataclass (every field set explicitly)."""
    return msg_cls(**dataclasses.asdict(settings))
