"""The GPU paths on real hub models: GTR, vec2text (both inverters with the embedding each was
trained on), vLLM and SONAR. Run with `pytest -m gpu` on a CUDA machine with the hub (or a warm
HF cache) reachable; skipped where no GPU is."""

import numpy as np
import pytest

from services.decoder.core import GTR_ST, GTR_VEC2TEXT, VEC2TEXT_MODELS, Vec2TextInverter
from services.encoder.core import SentenceTransformerEmbedder, make_embedder

pytestmark = pytest.mark.gpu

TEXT = "Let's think step by step and write the final answer as a number."


def words(text: str) -> set[str]:
    return {w.strip(".,").lower() for w in text.split()}


def test_gtr_embeddings_are_768_d_and_normalised():
    embedder = SentenceTransformerEmbedder(GTR_ST, device="cuda")
    x = embedder.encode([TEXT, "Solve it."])
    assert x.shape == (2, 768) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)


def test_vec2text_32_tokens_inverts_sentence_transformers_gtr():
    embedder = SentenceTransformerEmbedder(GTR_ST, device="cuda")
    inverter = Vec2TextInverter(embedder.encode, VEC2TEXT_MODELS["32_tokens"], normalized=True)
    [(text, cosine)], _ = inverter.invert(embedder.encode([TEXT]), [], num_steps=20, beam_width=4)
    assert cosine > 0.9 and len(words(text) & words(TEXT)) >= len(words(TEXT)) // 2, text


def test_vec2text_gtr_base_needs_its_own_embedding():
    """jxm's gtr-base pair inverts vec2text's GTR embedding; the sentence-transformers one (the bug
    this guards against) gives it unrelated text."""
    own = make_embedder(GTR_VEC2TEXT, device="cuda")
    inverter = Vec2TextInverter(own.encode, VEC2TEXT_MODELS["gtr-base"], normalized=False)
    [(right, cosine)], _ = inverter.invert(own.encode([TEXT]), [TEXT], num_steps=20, beam_width=4)
    st = SentenceTransformerEmbedder(GTR_ST, device="cuda")
    [(wrong, _)], _ = inverter.invert(st.encode([TEXT]), [TEXT], num_steps=20, beam_width=4)
    assert cosine > 0.9 and len(words(right) & words(TEXT)) > len(words(wrong) & words(TEXT)), (right, wrong)


def test_vllm_backend_scores_gsm8k(datasets_dir, tmp_path):
    from services.llm_eval.backends import VLLMBackend
    from services.llm_eval.cache import AnswerCache
    from services.llm_eval.core import LlmEvaluator
    from services.llm_eval.datasets import DatasetStore
    from services.llm_eval.types import EvaluationRequest

    backend = VLLMBackend("Qwen/Qwen2.5-0.5B-Instruct", 1, 0.5)
    assert backend.identity()["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    evaluator = LlmEvaluator(backend, backend, DatasetStore(datasets_dir), AnswerCache(tmp_path / "a.sqlite"))
    result = evaluator.evaluate(EvaluationRequest("Let's think step by step.", split="test", fidelity=32))
    assert result.num_evaluated == 32 and result.usage.llm_calls == 32 and result.num_correct > 0


def test_sonar_decodes_its_own_embeddings():
    pytest.importorskip("sonar")
    from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline

    from services.decoder.core import SonarInverter

    encoder = TextToEmbeddingModelPipeline("text_sonar_basic_encoder", "text_sonar_basic_encoder")

    def encode(texts):
        return encoder.predict(list(texts), source_lang="eng_Latn").cpu().numpy()

    [(text, cosine)], _ = SonarInverter(encode).invert(encode([TEXT]), [])
    assert cosine > 0.9, text
