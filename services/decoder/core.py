"""Inverters: embeddings -> text, behind one base class.

Contract of `Inverter.invert`: for each target row return (text, cosine) where cosine is
between the target and the embedding of `text` by the encoder the target came from, plus the
LLM usage spent. Backends: `llm-guided` (the embedded CPU default), `nearest` (retrieval only),
`vec2text` (GTR corrector models, GPU) and `sonar` (SONAR text decoder); the last two import
their stacks lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from services.common.cancellation import check_caller
from services.common.text import instruction_lines
from services.common.types import Usage
from services.llm_eval.types import DecodingParams, GenerateResult

log = logging.getLogger(__name__)

Encode = Callable[[Sequence[str]], np.ndarray]
Generate = Callable[[Sequence[str], DecodingParams], GenerateResult]
Inversions = tuple[list[tuple[str, float]], Usage]


def cosines(targets: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[m, d] x [n, d] -> [m, n] cosine similarities."""
    if candidates.shape[1] != targets.shape[1]:
        raise ValueError(f"embeddings have dimension {targets.shape[1]}, the encoder gives {candidates.shape[1]}")
    t = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    c = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    return t @ c.T


class Inverter(ABC):
    """Maps embeddings back to text."""

    name: str

    @abstractmethod
    def invert(
        self, targets: np.ndarray, seed_texts: Sequence[str], num_steps: int = 0, beam_width: int = 0
    ) -> Inversions:
        """targets: [batch, dim] -> (one (text, cosine) per row, usage). 0 means the backend default."""


class NearestTextInverter(Inverter):
    """Returns the seed text whose embedding is closest (cosine) to each target."""

    name = "nearest"

    def __init__(self, encode: Encode):
        self.encode = encode

    def invert(self, targets, seed_texts, num_steps=0, beam_width=0):
        if not seed_texts:
            raise ValueError("seed_texts must not be empty for the nearest-text inverter")
        sims = cosines(targets, self.encode(list(seed_texts)))
        best = sims.argmax(axis=1)
        return [(seed_texts[j], float(sims[i, j])) for i, j in enumerate(best)], Usage()


LLM_GUIDED_PROMPT = (Path(__file__).resolve().parent / "prompts" / "llm_guided.txt").read_text()


class LlmGuidedInverter(Inverter):
    """Embedded default for any encoder: start from the `beam_width` seed texts nearest the target,
    then for `num_steps` rounds ask the LLM for `candidates` instructions near the closest ones,
    re-encode them and keep the best by cosine. Returns the closest text seen (never worse than
    the nearest seed text).
    """

    name = "llm-guided"

    def __init__(
        self,
        encode: Encode,
        generate: Generate,
        num_steps: int = 3,
        beam_width: int = 4,
        candidates: int = 4,
        temperature: float = 0.8,
        max_length: int = 500,
    ):
        self.encode, self.generate = encode, generate
        self.num_steps, self.beam_width, self.candidates = num_steps, beam_width, candidates
        self.temperature, self.max_length = temperature, max_length

    def invert(self, targets, seed_texts, num_steps=0, beam_width=0):
        if not seed_texts:
            raise ValueError("seed_texts must not be empty for the llm-guided inverter")
        steps, width = num_steps or self.num_steps, beam_width or self.beam_width
        seeds = list(dict.fromkeys(seed_texts))
        seed_sims = cosines(targets, self.encode(seeds))
        usage, out = Usage(), []
        for row, target in enumerate(targets):
            known = dict(zip(seeds, seed_sims[row].tolist(), strict=True))
            for step in range(steps):
                check_caller()  # each step pays an LLM call: stop once the caller has gone
                beam = sorted(known.items(), key=lambda kv: -kv[1])[:width]
                scored = "\n".join(f"{score:.3f}: {text}" for text, score in reversed(beam))
                prompt = LLM_GUIDED_PROMPT.format(scored=scored, count=self.candidates)
                params = DecodingParams(temperature=self.temperature, max_tokens=80 * self.candidates, seed=step)
                result = self.generate([prompt], params)
                usage.add(result.usage)
                fresh = [
                    c
                    for c in dict.fromkeys(instruction_lines(result.completions[0].text, self.max_length))
                    if c not in known
                ]
                if fresh:
                    known.update(zip(fresh, cosines(target[None], self.encode(fresh))[0].tolist(), strict=True))
                log.info("llm-guided step %d: %d new candidates, best %.4f", step, len(fresh), max(known.values()))
            text, score = max(known.items(), key=lambda kv: kv[1])
            out.append((text, float(score)))
        return out, usage


GTR_ST = "sentence-transformers/gtr-t5-base"  # L2-normalised sentence-transformers GTR (the encoder's GPU default)
GTR_VEC2TEXT = "vec2text:sentence-transformers/gtr-t5-base"  # vec2text's own GTR embedding (services.encoder)


@dataclasses.dataclass(frozen=True)
class Vec2TextModel:
    """A vec2text inverter and the embedding it was trained to invert.

    inversion: InversionModel (hub id or path); corrector: CorrectorEncoderModel ("" = the
    single-step inverter alone); embedder: the encoder model (`PROMPTOPT_ENCODER_MODEL`) whose
    output it inverts: fed anything else it returns unrelated text.
    """

    inversion: str
    corrector: str
    embedder: str


VEC2TEXT_MODELS = {
    # Seed 000's 32_tokens: the ielabgroup pair, trained on sentence-transformers GTR-T5-base output.
    "32_tokens": Vec2TextModel(
        "ielabgroup/vec2text_gtr-base-st_inversion", "ielabgroup/vec2text_gtr-base-st_corrector", GTR_ST
    ),
    # vec2text's pretrained `gtr-base` pair (Morris et al.), trained on vec2text's own GTR embedding.
    "gtr-base": Vec2TextModel("jxm/gtr__nq__32", "jxm/gtr__nq__32__correct", GTR_VEC2TEXT),
}


def vec2text_model(model_type: str, inversion_model: str = "", embedder: str = GTR_ST) -> Vec2TextModel:
    """The inverter for `model_type`: a preset (32_tokens, gtr-base) or 512_tokens, the seed's
    single-step InversionModel, which no public checkpoint provides: it needs `inversion_model`."""
    if model_type in VEC2TEXT_MODELS:
        return VEC2TEXT_MODELS[model_type]
    if model_type != "512_tokens":
        raise ValueError(f"vec2text_model_type must be one of {[*VEC2TEXT_MODELS, '512_tokens']}, got {model_type!r}")
    if not inversion_model:
        raise ValueError(
            "vec2text_model_type 512_tokens needs vec2text_inversion_model (a hub id or path of an InversionModel "
            "trained on the encoder's embeddings; none is published), or use 32_tokens or gtr-base"
        )
    return Vec2TextModel(inversion_model, "", embedder)


def match_norms(targets: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rescale unit-direction targets [m, d] to the mean norm of `reference` embeddings [n, d]
    (an inverter trained on unnormalised embeddings expects their scale; the VAE decodes unit vectors)."""
    scale = float(np.linalg.norm(reference, axis=1).mean())
    return targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12) * scale


def load_vec2text_model(model_cls, name_or_path: str):
    """A vec2text `InversionModel`/`CorrectorEncoderModel` from a hub id or a local folder.

    Built from its config, then its weights file loaded (`model.safetensors` or
    `pytorch_model.bin`): vec2text's own `from_pretrained` fails under transformers 5, which
    builds models on the meta device while vec2text's constructor loads its T5 and embedder.
    The T5's unset `length_penalty` takes transformers 4's 1.0, which vec2text's reranking needs.
    Raises RuntimeError naming the weights the checkpoint lacks (tied T5 embeddings excepted).
    """
    import torch

    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    model = model_cls(model_cls.config_class.from_pretrained(folder))
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise RuntimeError(f"vec2text model {name_or_path!r}: no model.safetensors or pytorch_model.bin")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = ("embed_tokens.weight",)  # T5's encoder and decoder embeddings are `shared`
    if getattr(model.encoder_decoder.config, "tie_word_embeddings", True):
        tied += ("lm_head.weight",)  # and its output layer too, unless the config unties it
    untied = [key for key in missing if not key.endswith(tied)]
    if untied:
        raise RuntimeError(f"vec2text model {name_or_path!r} lacks weights for {untied[:5]} ({len(untied)} in all)")
    if unexpected:
        log.warning("vec2text model %s: ignored %d unexpected weights", name_or_path, len(unexpected))
    model.tie_weights()
    generation = model.encoder_decoder.generation_config
    if generation.length_penalty is None:  # unset in transformers 5; vec2text's corrector divides by it
        generation.length_penalty = 1.0  # transformers 4's default, which vec2text was written against
    return model


def vec2text_corrector(inversion, corrector):
    """vec2text's `Corrector` over a loaded inversion and corrector model, as `vec2text.api.load_corrector`
    builds it, but with its trainers' scratch folder in a temporary directory (not `tmp_trainer/` in
    the working directory, which is read-only in the deployments) and without the evaluation
    metrics they would fetch from the hub."""
    import tempfile

    import transformers
    import vec2text

    with tempfile.TemporaryDirectory(prefix="vec2text-") as scratch, metrics_left_unloaded():
        args = transformers.TrainingArguments(output_dir=scratch, report_to=[], save_strategy="no")
        inversion_trainer = vec2text.trainers.InversionTrainer(
            model=inversion,
            args=args,
            train_dataset=None,
            eval_dataset=None,
            data_collator=transformers.DataCollatorForSeq2Seq(inversion.tokenizer, label_pad_token_id=-100),
        )
        corrector.config.dispatch_batches = None  # as load_corrector does, for older checkpoints
        return vec2text.trainers.Corrector(
            model=corrector,
            inversion_trainer=inversion_trainer,
            args=args,
            data_collator=vec2text.collator.DataCollatorForCorrection(tokenizer=inversion.tokenizer),
        )


@contextlib.contextmanager
def metrics_left_unloaded():
    """vec2text's trainers load their evaluation metrics (`evaluate.load`, scripts fetched from the
    hub) in their constructors, though inversion never scores: within this block they are not
    loaded, so the decoder starts without reaching the hub for them."""
    import evaluate

    def unloaded(name, *args, **kwargs):
        return None

    load, evaluate.load = evaluate.load, unloaded
    try:
        yield
    finally:
        evaluate.load = load


class Vec2TextInverter(Inverter):
    """vec2text over GTR-T5-base embeddings (GPU; `vec2text` and the weights load lazily from the hub).

    With a corrector, `num_steps` correction rounds with `sequence_beam_width` = beam; without,
    the InversionModel generates with num_beams = beam, max_length 128, no_repeat_ngram_size 3 and
    repetition_penalty 1.2 (seed 000). `normalized`: whether the encoder's embeddings (what the
    inverter was trained on) are unit-norm; if not, targets are rescaled to the seed texts' norm.
    """

    name = "vec2text"

    def __init__(
        self,
        encode: Encode,
        model: Vec2TextModel,
        normalized: bool = True,
        num_steps: int = 20,
        beam_width: int = 8,
        device: str = "cuda",
    ):
        import torch
        import vec2text  # lazy: GPU images only

        self.encode, self.model, self.normalized = encode, model, normalized
        self.num_steps, self.beam_width = num_steps, beam_width
        self.device = device if torch.cuda.is_available() else "cpu"
        inversion = load_vec2text_model(vec2text.models.InversionModel, model.inversion).to(self.device).eval()
        if model.corrector:
            corrector = load_vec2text_model(vec2text.models.CorrectorEncoderModel, model.corrector)
            self.corrector = vec2text_corrector(inversion, corrector.to(self.device).eval())
        else:
            self.inversion = inversion

    def invert(self, targets, seed_texts, num_steps=0, beam_width=0):
        import torch
        import vec2text

        steps, beam = num_steps or self.num_steps, beam_width or self.beam_width
        if not self.normalized:
            if not seed_texts:
                raise ValueError("seed_texts must not be empty: they set the scale of unnormalised embeddings")
            targets = match_norms(targets, self.encode(list(seed_texts)))
        embeddings = torch.as_tensor(targets, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            if self.model.corrector:
                texts = vec2text.invert_embeddings(
                    embeddings=embeddings, corrector=self.corrector, num_steps=steps, sequence_beam_width=beam
                )
            else:
                ids = self.inversion.generate(
                    inputs={"frozen_embeddings": embeddings},
                    generation_kwargs={
                        "num_beams": beam,
                        "max_length": 128,
                        "no_repeat_ngram_size": 3,
                        "repetition_penalty": 1.2,
                    },
                )
                texts = self.inversion.tokenizer.batch_decode(ids, skip_special_tokens=True)
        sims = cosines(targets, self.encode(texts))
        return [(t, float(sims[i, i])) for i, t in enumerate(texts)], Usage()


class SonarInverter(Inverter):
    """SONAR text decoder over 1024-D SONAR embeddings (`sonar-space`, its own torch; lazy)."""

    name = "sonar"

    def __init__(
        self,
        encode: Encode,
        decoder: str = "text_sonar_basic_decoder",
        language: str = "eng_Latn",
        device: str = "cuda",
    ):
        import torch
        from sonar.inference_pipelines.text import EmbeddingToTextModelPipeline  # lazy: SONAR image only

        self.encode, self.language = encode, language
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"SONAR decoder on {device}, but this torch sees no CUDA device")
        self.pipeline = EmbeddingToTextModelPipeline(decoder=decoder, tokenizer=decoder, device=torch.device(device))

    def invert(self, targets, seed_texts, num_steps=0, beam_width=0):
        import torch

        texts = self.pipeline.predict(
            torch.as_tensor(targets, dtype=torch.float32),
            target_lang=self.language,
            batch_size=32,
            beam_size=beam_width or 5,
        )
        sims = cosines(targets, self.encode(texts))
        return [(t, float(sims[i, i])) for i, t in enumerate(texts)], Usage()
