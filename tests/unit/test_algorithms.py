import pytest

from services.optimizer.algorithms.base import extract_tagged, unique_new
from services.optimizer.algorithms.opro import OproConfig, bucketize, meta_prompt
from services.optimizer.algorithms.protegi import ProtegiConfig, ucb_select


@pytest.mark.parametrize(("score", "expected"), [(0.0, 0), (0.024, 0), (0.026, 5), (0.51, 50), (0.874, 85), (1.0, 100)])
def test_bucketize_20_buckets(score, expected):
    assert bucketize(score, 20) == expected


def test_bucketize_10_buckets():
    assert bucketize(0.87, 10) == 90


def test_meta_prompt_shows_top_k_ascending():
    history = [{"prompt": f"p{i}", "score": s} for i, s in enumerate([0.3, 0.9, 0.1, 0.6])]
    text = meta_prompt(history, [("What is 1+1?", "2")], top_k=3, num_buckets=20)
    assert "p2" not in text  # lowest score falls out of the top 3
    assert text.index("p0") < text.index("p3") < text.index("p1")
    assert "score:\n90" in text and "Q: What is 1+1?" in text


def test_ucb_pulls_unpulled_arms_first_then_balances():
    assert ucb_select([0.9, 0.0], [3, 0], t=4, c=2.0) == 1
    assert ucb_select([0.5, 0.6], [10, 10], t=20, c=2.0) == 1
    # a rarely pulled arm wins on exploration despite a lower mean
    assert ucb_select([0.5, 0.45], [50, 1], t=51, c=1.0) == 1
    assert ucb_select([0.5, 0.45], [50, 1], t=51, c=0.0) == 0


def test_extract_tagged():
    assert extract_tagged("x <INS>Think step by step.</INS> y", "ins") == ["Think step by step."]
    assert extract_tagged("<START>a<END> and <START>b<END>", "start") == ["a", "b"]
    assert extract_tagged("<INS>unterminated instruction\n\nmore", "ins") == ["unterminated instruction"]
    assert extract_tagged("Here: [Solve carefully and check units]", "ins") == ["Solve carefully and check units"]
    assert extract_tagged('\n"Plain line."\nsecond', "ins") == ["Plain line."]
    assert extract_tagged("", "ins") == []


def test_unique_new():
    seen = {"a"}
    assert unique_new(["a", "b", "b", "c"], seen) == ["b", "c"]
    assert seen == {"a", "b", "c"}


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="opro.iterations"):
        OproConfig(iterations=0)
    with pytest.raises(ValueError, match="protegi.beam_width"):
        ProtegiConfig(beam_width=-1)
    assert ProtegiConfig().beam_width == 4 and ProtegiConfig().minibatch_size == 64
    assert ProtegiConfig().num_gradients == 4
    assert OproConfig().meta_temperature == 1.0 and OproConfig().num_buckets == 20
