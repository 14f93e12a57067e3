"""The GPU paths on real hub models: GTR, vec2text (both inverters with the embedding each was
trained on), vLLM, SONAR, flow training and the Neuro-Latent pair (RoBERTa-base, T5-small). Run
with `pytest -m gpu` on a CUDA machine with the hub (or a warm HF cache) reachable; skipped where
no GPU is."""

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
    """The encoder-sonar / decoder-sonar pair: 1024-D embeddings decode to text whose re-encoding
    is close (round-trip cosine), with the throughput of each direction printed."""
    pytest.importorskip("sonar")
    import time

    from services.decoder.core import SonarInverter
    from services.encoder.types import SONAR_ENCODER

    embedder = make_embedder(SONAR_ENCODER, device="cuda")
    texts = [TEXT, "Solve the problem and give only the number.", "Read the question twice, then answer."] * 11
    start = time.perf_counter()
    targets = embedder.encode(texts)
    encode_s = time.perf_counter() - start
    assert targets.shape == (len(texts), 1024) and embedder.dimension == 1024
    inverter = SonarInverter(embedder.encode)
    start = time.perf_counter()
    decoded, _ = inverter.invert(targets, [])
    decode_s = time.perf_counter() - start
    cosines = [c for _, c in decoded]
    print(
        f"SONAR round trip over {len(texts)} texts: cosine mean {np.mean(cosines):.3f} min {min(cosines):.3f}; "
        f"encode {len(texts) / encode_s:.1f} texts/s, decode {len(texts) / decode_s:.1f} texts/s"
    )
    assert np.mean(cosines) > 0.9 and len(words(decoded[0][0]) & words(TEXT)) >= len(words(TEXT)) // 2, decoded[0]


def test_flow_trains_and_samples_on_the_gpu(tmp_path):
    """The surrogate's GPU placement: a flow trained on cuda, checkpointed, served by an engine on
    cuda with a CPU GP guiding it; the loss falls and the samples come back finite on the host."""
    import torch

    from services.flow.core import FlowConfig, FlowSampling, FlowTrainer, save_flow
    from services.flow.types import GuidanceSettings
    from services.surrogate.engine import SurrogateEngine

    data = torch.randn(4096, 64) * 0.3 + 1.0
    config = FlowConfig(hidden_dim=128, num_blocks=2, epochs=5, batch_size=256, normalize=True)
    trainer = FlowTrainer(data, config, device="cuda")
    losses = [trainer.run_epoch().val_loss for _ in range(5)]
    assert next(trainer.model.parameters()).is_cuda and losses[-1] < losses[0]
    resumed = FlowTrainer(data, config, device="cuda")
    resumed.load_state(trainer.state(), trainer.model)  # the CUDA noise stream round-trips
    assert resumed.epoch == 5 and torch.equal(resumed.generator.get_state(), trainer.generator.get_state())
    save_flow(tmp_path / "flow.pt", trainer.model, config, data=str(tmp_path / "data.pt"))
    torch.save(data, tmp_path / "data.pt")
    engine = SurrogateEngine()  # its GPs stay on the CPU; the flow samples on the GPU
    x = data[:12].numpy()
    gp = engine.fit(x, (x[:, 0] - 1.0) ** 2 * 0.1 + 0.3, minimize=True)
    settings = GuidanceSettings(num_steps=20)
    guide = engine.error_gp(gp.model_id)
    result = FlowSampling("cuda").sample(str(tmp_path / "flow.pt"), 32, guide, settings, manifold_distance=True)
    assert result.embeddings.shape == (32, 64) and np.isfinite(result.embeddings).all()
    assert result.lcb.shape == (32,) and result.nearest_train_l2.shape == (32,)


def test_neuro_latent_trains_and_rewrites_with_the_seeds_models_on_the_gpu():
    """Seed 002's production pair from the hub: RoBERTa-base (768-D, mean pooled) and T5-small
    (512-D), the head on the GPU; only the head learns, and the trained rewriter writes text."""
    import torch

    from services.neuro.core import FrozenEncoder, NeuroRewriter, TrainingData, load_generator
    from services.neuro.types import NeuroConfig

    config = NeuroConfig(phase1_epochs=2, phase2_epochs=1)  # roberta-base, t5-small
    encoder, generator = FrozenEncoder(config.encoder, "cuda"), load_generator(config.generator, "cuda")
    assert (encoder.dimension, generator.hidden_size) == (768, 512)
    frozen = {k: v.clone() for k, v in generator.model.state_dict().items()}
    rewriter = NeuroRewriter(config, encoder, generator)
    data = TrainingData(
        (("Solve it.", "Solve the problem step by step and give the final number."),) * 4,
        (("Solve it.", "Solve the problem step by step and give the final number.", ("Guess.",)),) * 4,
    )
    losses = [rewriter.run_epoch(data) for _ in range(config.total_epochs)]
    assert next(rewriter.head.parameters()).is_cuda and losses[1].loss < losses[0].loss
    assert all(torch.equal(frozen[k], v) for k, v in generator.model.state_dict().items())
    [text] = rewriter.rewrite("Solve it.", max_new_tokens=24)
    assert text.strip(), "T5-small wrote nothing"
