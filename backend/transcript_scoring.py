"""Scoring recognised turns against a known transcript: word error rate and turn-edge error."""
from __future__ import annotations

import re
from collections.abc import Sequence

_SPELLINGS = {"all right": "alright", "okay": "ok"}  # one spelling per word, so they are not errors


def words_of(text: str) -> list[str]:
    """Lower-case words without punctuation (apostrophes kept: "let's" is one word)."""
    text = text.lower()
    for variant, spelling in _SPELLINGS.items():
        text = text.replace(variant, spelling)
    return re.findall(r"[\w']+", text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by word-level edit distance."""
    ref, hyp = words_of(reference), words_of(hypothesis)
    if not ref:
        return float(bool(hyp))
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1] / len(ref)


def max_edge_error(found: Sequence[tuple[float, float]], truth: Sequence[tuple[float, float]]) -> float:
    """The largest |start - start'| or |end - end'| over turns paired in order (same count required)."""
    if len(found) != len(truth):
        raise ValueError(f"{len(found)} turns found for {len(truth)} true turns")
    return max((max(abs(a - c), abs(b - d)) for (a, b), (c, d) in zip(found, truth)), default=0.0)
