"""Proto <-> domain conversion of the value types every service shares."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from promptopt.common.v1 import common_pb2

from services.common.types import Usage


def usage_to_proto(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        llm_calls=usage.llm_calls,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cache_hits=usage.cache_hits,
    )


def usage_from_proto(msg: common_pb2.Usage) -> Usage:
    return Usage(msg.llm_calls, msg.prompt_tokens, msg.completion_tokens, msg.cache_hits)


def timestamp(seconds: float) -> Timestamp:
    """A protobuf Timestamp of `seconds` since the epoch."""
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
