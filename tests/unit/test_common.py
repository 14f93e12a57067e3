import dataclasses

import numpy as np
import pytest

from services.common.codec import decode_tensor, encode_tensor
from services.common.config import ConfigError, ServerConfig, from_env
from services.llm_eval.config import LlmEvalConfig


def test_tensor_roundtrip_and_validation():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(decode_tensor(encode_tensor(x), ndim=2), x)
    bad = encode_tensor(x)
    bad.shape[:] = [4, 3]
    with pytest.raises(ValueError, match="embeddings.data has 24 bytes"):
        decode_tensor(bad, "embeddings")
    with pytest.raises(ValueError, match="2 dimensions"):
        decode_tensor(encode_tensor(np.zeros(3)), ndim=2)


def test_from_env_parses_types_and_names_bad_variable():
    cfg = from_env(ServerConfig, "P_", {"P_PORT": "5000", "P_GRACE_SECONDS": "2.5", "P_HOST": "0.0.0.0"})
    assert (cfg.port, cfg.grace_seconds, cfg.host) == (5000, 2.5, "0.0.0.0")
    with pytest.raises(ConfigError, match="P_PORT"):
        from_env(ServerConfig, "P_", {"P_PORT": "fifty"})
    with pytest.raises(ConfigError, match="backend"):
        from_env(LlmEvalConfig, "P_", {"P_BACKEND": "nope"})
    assert dataclasses.is_dataclass(from_env(LlmEvalConfig, "P_", {}))
