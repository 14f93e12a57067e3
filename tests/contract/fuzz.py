"""Hypothesis strategies for any protobuf request message, built from its descriptor.

Values lean on the edges a careless handler trips over: empty, blank, huge, negative, NaN and
infinite numbers, unknown enum values, path-like and non-ASCII strings, tensors whose shape and
bytes disagree, next to `known` values by field name (a served dataset, a recorded instruction,
the id of a model or run that exists) that let a request past the first checks and into the
work behind them.
"""

from __future__ import annotations

import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

INT32 = (0, 1, 2, -1, 3, 7, 64, 1000, 2**31 - 1, -(2**31))
INT64 = INT32 + (2**63 - 1, -(2**63))
FLOATS = (0.0, 1.0, -1.0, 0.5, 1e-9, 1e30, -1e30, float("nan"), float("inf"), float("-inf"))
STRINGS = ("", " ", "\x00", "../../etc/passwd", "a" * 5000, "ü∂ƒ 🙂", "train[:", "test[5:2]", "-1", "null")

FIELD_TYPES = FieldDescriptor


Known = dict[str, tuple]  # field name -> values that are valid somewhere in the system


def _scalar(field: FieldDescriptor, known: Known) -> st.SearchStrategy:
    generic = _generic(field)
    if field.name in known:  # two draws in three take a known value
        valid = st.sampled_from(known[field.name])
        return st.one_of(valid, valid, generic)
    return generic


def _generic(field: FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t == FIELD_TYPES.TYPE_STRING:
        return st.one_of(st.sampled_from(STRINGS), st.text(max_size=40))
    if t == FIELD_TYPES.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FIELD_TYPES.TYPE_BOOL:
        return st.booleans()
    if t in (FIELD_TYPES.TYPE_FLOAT, FIELD_TYPES.TYPE_DOUBLE):
        width = 32 if t == FIELD_TYPES.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from(FLOATS), st.floats(width=width))
    if t == FIELD_TYPES.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.sampled_from(values + [max(values) + 1, -1])
    if t in (FIELD_TYPES.TYPE_UINT32, FIELD_TYPES.TYPE_FIXED32):
        return st.one_of(st.sampled_from((0, 1, 2, 64, 2**32 - 1)), st.integers(0, 100))
    if t in (FIELD_TYPES.TYPE_UINT64, FIELD_TYPES.TYPE_FIXED64):
        return st.one_of(st.sampled_from((0, 1, 2, 64, 2**64 - 1)), st.integers(0, 100))
    if t in (FIELD_TYPES.TYPE_INT64, FIELD_TYPES.TYPE_SINT64, FIELD_TYPES.TYPE_SFIXED64):
        return st.one_of(st.sampled_from(INT64), st.integers(-5, 100))
    return st.one_of(st.sampled_from(INT32), st.integers(-5, 100))


@st.composite
def tensors(draw, cls, widths: tuple[int, ...]):
    """A common.v1.Tensor: consistent float32 data (NaN and inf included) of a small shape, often
    [n, d] with d one of `widths` (the dimensions the services expect), or a shape and a byte
    string that disagree."""
    if draw(st.sampled_from((True, True, False))):
        shape = [draw(st.integers(0, 6)), draw(st.sampled_from(widths or (2,)))]
    else:
        shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    if draw(st.booleans()):
        finite = (0.0, 1.0, -2.5, 0.25, 0.5)
        choices = draw(st.sampled_from((finite, (*finite, 1e30, float("nan"), float("inf")))))
        values = draw(st.lists(st.sampled_from(choices), min_size=1))
        data = np.resize(np.asarray(values, dtype=np.float32), int(np.prod(shape))).tobytes()
    else:
        data = draw(st.binary(max_size=48))
    return cls(shape=shape, data=data)


def messages(descriptor: Descriptor, known: Known | None = None, depth: int = 3) -> st.SearchStrategy:
    """Messages of type `descriptor`: each field set or left unset, one member per oneof. A
    common.v1.Tensor field favours the widths `known["width:<field>"]` (else `known["width"]`)."""
    known = known or {}
    fields = {}
    for field in descriptor.fields:
        if field.type == FIELD_TYPES.TYPE_MESSAGE and field.message_type.name == "Tensor":
            widths = known.get(f"width:{field.name}", known.get("width", ()))
            value = tensors(message_factory.GetMessageClass(field.message_type), widths)
        elif field.type == FIELD_TYPES.TYPE_MESSAGE:
            if depth == 0 or field.message_type.GetOptions().map_entry:
                continue
            value = messages(field.message_type, known, depth - 1)
        else:
            value = _scalar(field, known)
        repeated = field.is_repeated
        fields[field.name] = (
            st.lists(value, max_size=4 if field.type == FIELD_TYPES.TYPE_MESSAGE else 70) if repeated else value
        )

    def favoured(field: FieldDescriptor) -> bool:  # fields a valid request would set from `known`
        return field.name in known or (field.message_type is not None and field.message_type.name == "Tensor")

    oneof_of = {f.name: o.name for o in descriptor.oneofs for f in o.fields}
    others = [f.name for f in descriptor.fields if f.name in fields and f.name not in oneof_of and not favoured(f)]

    @st.composite
    def build(draw):
        # "known": only the favoured fields (a request that reaches the work); "one": those and one
        # other field (that field's edges, one at a time); "any": every field set or not at random
        mode = draw(st.sampled_from(("known", "one", "any")))
        extra = draw(st.sampled_from(others)) if mode == "one" and others else None
        chosen = {o.name: draw(st.sampled_from([None, *[f.name for f in o.fields]])) for o in descriptor.oneofs}
        message = cls()
        for name, value in fields.items():
            field = descriptor.fields_by_name[name]
            if name in oneof_of:
                if chosen[oneof_of[name]] != name:
                    continue
            elif mode == "any":
                if not draw(st.booleans()):
                    continue
            elif not (favoured(field) or name == extra):
                continue
            drawn = draw(value)
            if field.is_repeated:
                getattr(message, name).extend(drawn)
            elif field.type == FIELD_TYPES.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(drawn)
            else:
                setattr(message, name, drawn)
        return message

    cls = message_factory.GetMessageClass(descriptor)
    return build()
