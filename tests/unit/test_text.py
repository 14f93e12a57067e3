import numpy as np

from services.common.text import EncodeMemo


def test_encode_memo_encodes_each_text_once_and_keeps_order():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts])

    memo = EncodeMemo(encode)
    first = memo(["ab", "c", "ab"])
    assert calls == [["ab", "c"]] and first[:, 0].tolist() == [2, 1, 2]
    assert memo(["c", "dddd"])[:, 0].tolist() == [1, 4]
    assert calls[-1] == ["dddd"]


def test_encode_memo_drops_the_oldest_beyond_its_bound():
    calls = []
    memo = EncodeMemo(lambda texts: calls.append(list(texts)) or np.ones((len(texts), 2)), max_entries=2)
    memo(["a", "b", "c"])
    memo(["b", "c", "a"])
    assert calls == [["a", "b", "c"], ["a"]]  # "a" was evicted, "b" and "c" kept
