"""Rouge-n counted as the `rouge-score` package counts it, with its defaults.

Lowercase, runs of [a-z0-9] are the words (anything else separates them), no
stemming; n-grams are counted with multiplicity and the overlap is clipped (an
n-gram seen twice in the prediction and once in the reference counts once).
Precision is overlap / n-grams of the prediction (0 when it has none).
"""

from __future__ import annotations

import collections
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """rouge-score's default tokens: lowercase, then the runs of [a-z0-9] (no stemming)."""
    return _WORD.findall(text.lower())


def ngram_counts(tokens: Sequence[str], n: int) -> collections.Counter:
    """Multiset of the n-grams (tuples) of `tokens`."""
    return collections.Counter(zip(*(tokens[i:] for i in range(n))))


def overlap(a: collections.Counter, b: collections.Counter) -> int:
    """Clipped overlap: sum over n-grams of min(count in a, count in b)."""
    if len(b) < len(a):
        a, b = b, a
    return sum(min(c, b[g]) for g, c in a.items() if g in b)


@dataclass(frozen=True)
class Score:
    """Rouge-n of a prediction against a reference."""

    precision: float
    """Overlap / n-grams of the prediction."""
    recall: float
    """Overlap / n-grams of the reference."""
    fmeasure: float
    """Harmonic mean of precision and recall (0 when both are 0)."""


def _score(common: int, n_pred: int, n_ref: int) -> Score:
    p = common / max(n_pred, 1)
    r = common / max(n_ref, 1)
    return Score(p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0)


def rouge_n(prediction: str, reference: str, n: int = 2) -> Score:
    """Rouge-n of `prediction` against `reference`, equal to rouge-score's `RougeScorer(["rougeN"]).score(reference, prediction)`."""
    pred, ref = ngram_counts(words(prediction), n), ngram_counts(words(reference), n)
    return _score(overlap(pred, ref), sum(pred.values()), sum(ref.values()))


def most_similar(texts: Sequence[str], n: int = 2) -> tuple[list[float], list[int]]:
    """For each text, the highest Rouge-n F-measure with any other text, and which one (-1 if alone)."""
    grams = [ngram_counts(words(t), n) for t in texts]
    sizes = [sum(g.values()) for g in grams]
    best = [0.0] * len(texts)
    which = [-1] * len(texts)
    for i, j in itertools.combinations(range(len(texts)), 2):
        f = _score(overlap(grams[i], grams[j]), sizes[i], sizes[j]).fmeasure  # symmetric in i, j
        if f > best[i] or which[i] < 0:
            best[i], which[i] = f, j
        if f > best[j] or which[j] < 0:
            best[j], which[j] = f, i
    return best, which
