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
    with pytest.raises(ConfigError, match=r"max_concurrent_rpcs 64 must exceed max_streams \+ max_workers \(72\)"):
        from_env(ServerConfig, "P_", {"P_MAX_CONCURRENT_RPCS": "64"})


def test_healthcheck_follows_the_service_health(monkeypatch, capsys):
    import threading

    from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

    from services.common import healthcheck
    from services.common.config import ServerConfig
    from services.common.server import ServiceBinding, serve
    from services.surrogate.engine import SurrogateEngine
    from services.surrogate.server import SurrogateServicer

    loaded = threading.Event()
    binding = ServiceBinding.of(
        surrogate_pb2,
        "SurrogateService",
        surrogate_pb2_grpc.add_SurrogateServiceServicer_to_server,
        SurrogateServicer(SurrogateEngine()),
    )
    running = serve(ServerConfig(port=0, metrics_port=-1), [binding], load=loaded.wait, install_signal_handlers=False)
    monkeypatch.setenv("PROMPTOPT_SURROGATE_PORT", str(running.port))
    assert healthcheck.main(["surrogate"]) == 1  # still loading: NOT_SERVING
    loaded.set()
    assert running.ready.wait(10)
    assert healthcheck.main(["surrogate"]) == 0
    running.stop()
    assert healthcheck.main(["surrogate"]) == 1  # gone
    monkeypatch.delenv("PROMPTOPT_SURROGATE_PORT")
    assert healthcheck.main(["surrogate"]) == 2
    out = capsys.readouterr()
    assert "surrogate: NOT_SERVING" in out.out and "surrogate: SERVING" in out.out
    assert "PROMPTOPT_SURROGATE_PORT is not set" in out.err
