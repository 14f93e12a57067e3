"""Graded relevance of pool exemplars per instruction from evaluated (instruction, exemplar set)
pairs: the labels BOLT's exemplar scorer learns from (LIPO-E with use_scorer, the tuner's scorer phase)."""

from __future__ import annotations

import numpy as np


def relevance_from_evaluations(
    num_instructions: int, pool_size: int, pairs: list[tuple[int, list[int]]], accuracies: list[float]
) -> np.ndarray:
    """Graded relevance [num_instructions, P] from evaluated (instruction, exemplar set) pairs:
    the mean accuracy of the instruction's pairs that show the exemplar; where it has none, the
    exemplar's mean over every instruction's pairs; NaN for an exemplar no pair showed (the
    scorer's losses leave those out)."""
    total = np.zeros((num_instructions, pool_size))
    count = np.zeros((num_instructions, pool_size))
    for (instruction, ids), accuracy in zip(pairs, accuracies, strict=True):
        for e in ids:
            total[instruction, e] += accuracy
            count[instruction, e] += 1
    column = np.where(count.sum(0) > 0, total.sum(0) / np.maximum(count.sum(0), 1), np.nan)
    return np.where(count > 0, total / np.maximum(count, 1), column[None, :])
