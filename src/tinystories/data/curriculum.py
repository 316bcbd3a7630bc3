"""Curriculum: the first training windows drawn from the easiest stories.

A measure gives each story of the training split a difficulty score:

    length     tokens in the story
    rare       share of its tokens outside the split's common tokens (those that make up 90% of the text)
    diversity  distinct token bigrams / bigrams (repetitive stories are easy)
    compress   zlib-compressed size / raw size of its token ids (predictable stories compress well)
    FILE       a text file with one number per line, one line per story of the training split, in its order

Each window (`seq_len + 1` tokens at stride `seq_len` from the start of the
stream) scores the token-weighted mean of the stories it covers; the windows are
ranked easy to hard (hard to easy when reversed, the control), ties broken by a
seeded shuffle.

The schedule is competence pacing: global window `g < span` is drawn uniformly
from the easiest fraction `c(g) = start + (1 - start) * g / span` of the
ranking; after the span the loader's uniform random epochs take over. Each draw
is a pure function of (seed, g), so a resumed run or any DDP split sees exactly
the windows of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinystories.data.shards import Split
from tinystories.errors import UserError

_TAG = 0x63757272  # keeps the curriculum's random streams apart from the loader's


def _doc_sums(split: Split, values_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Per story, the sum of `values_of(tokens)` over its tokens (float64, one shard in memory at a time)."""
    bounds = split.index
    prefix = np.zeros(len(bounds), dtype=np.float64)
    total = 0.0
    for i, shard in enumerate(split.shards):
        lo, hi = int(split.starts[i]), int(split.starts[i + 1])
        c = np.concatenate([[0.0], np.cumsum(values_of(np.asarray(shard)), dtype=np.float64)])
        inside = (bounds >= lo) & (bounds <= hi)
        prefix[inside] = total + c[bounds[inside] - lo]
        total += float(c[-1])
    return np.diff(prefix)


def _lengths(split: Split) -> np.ndarray:
    return np.diff(split.index).astype(np.float64)


def _rare(split: Split) -> np.ndarray:
    counts = _token_counts(split)
    ranked = np.argsort(-counts, kind="stable")
    covered = np.cumsum(counts[ranked]) / max(1, counts.sum())
    common = ranked[: int(np.searchsorted(covered, 0.9)) + 1]
    is_rare = np.ones(len(counts), dtype=np.float64)
    is_rare[common] = 0.0
    return _doc_sums(split, lambda t: is_rare[t]) / np.maximum(_lengths(split), 1)


def _token_counts(split: Split) -> np.ndarray:
    size = 1 + max((int(np.asarray(s).max()) for s in split.shards if len(s)), default=0)
    counts = np.zeros(size, dtype=np.int64)
    for s in split.shards:
        counts += np.bincount(np.asarray(s), minlength=size)
    return counts


def _per_story(split: Split, score: Callable[[np.ndarray], float]) -> np.ndarray:
    return np.array([score(split.document(i).astype(np.int64)) for i in range(split.n_documents)])


def _diversity(tokens: np.ndarray) -> float:
    if len(tokens) < 2:
        return 0.0
    pairs = tokens[:-1] * (int(tokens.max()) + 1) + tokens[1:]
    return len(np.unique(pairs)) / len(pairs)


def _compress(tokens: np.ndarray) -> float:
    raw = tokens.astype(np.uint32).tobytes()
    return len(zlib.compress(raw, 6)) / max(1, len(raw))


MEASURES: dict[str, Callable[[Split], np.ndarray]] = {
    "length": _lengths,
    "rare": _rare,
    "diversity": lambda split: _per_story(split, _diversity),
    "compress": lambda split: _per_story(split, _compress),
}


def story_scores(split: Split, measure: str) -> np.ndarray:
    """(n_documents,) float64 difficulty of each story of `split` under `measure` (a name or a score file)."""
    if measure in MEASURES:
        return MEASURES[measure](split)
    path = Path(measure)
    if not path.is_file():
        raise UserError(
            f"--curriculum {measure!r} is neither a measure ({', '.join(MEASURES)}) nor a score file"
        )
    try:
        scores = np.array([float(x) for x in path.read_text(encoding="utf-8").split()], dtype=np.float64)
    except ValueError as e:
        raise UserError(f"score file {path}: {e}") from None
    if len(scores) != split.n_documents or not np.isfinite(scores).all():
        raise UserError(
            f"score file {path} has {len(scores)} numbers; the {split.name!r} split has {split.n_documents} "
            "stories (one finite number per story, in the split's order)"
        )
    return scores


def window_scores(split: Split, doc_scores: np.ndarray, seq_len: int, n_windows: int) -> np.ndarray:
    """(n_windows,) token-weighted mean story score of windows `[k * seq_len, (k + 1) * seq_len)`."""
    bounds = split.index
    # Prefix sums of the per-token score (each token carries its story's score), read at the window edges.
    before = np.concatenate([[0.0], np.cumsum(doc_scores * np.diff(bounds))])

    def prefix(p: np.ndarray) -> np.ndarray:
        d = np.clip(np.searchsorted(bounds, p, side="right") - 1, 0, len(doc_scores) - 1)
        return before[d] + doc_scores[d] * (p - bounds[d])

    edges = np.arange(n_windows + 1, dtype=np.int64) * seq_len
    return np.diff(prefix(edges)) / seq_len


class Curriculum:
    """Which window the first `span` global windows are: a pure function of (seed, g)."""

    def __init__(
        self, split: Split, seq_len: int, measure: str, seed: int, span: int, start: float = 0.1,
        reverse: bool = False,
    ):
        if not 0.0 < start <= 1.0:
            raise UserError(f"--curriculum-start must be in (0, 1], got {start}")
        self.seq_len, self.seed, self.span, self.start = seq_len, seed, span, start
        n_windows = (split.n_tokens - 1) // seq_len
        self.scores = window_scores(split, story_scores(split, measure), seq_len, n_windows)  # (W,)
        tiebreak = np.random.default_rng([seed, _TAG]).permutation(n_windows)
        self.ranked = np.lexsort((tiebreak, -self.scores if reverse else self.scores))  # (W,) easy first
        self.fingerprint = hashlib.sha256(self.ranked.astype(np.int64).tobytes()).hexdigest()[:16]

    def window(self, g: int) -> int:
        """Index (in the ranking's grid) of global window `g < span`."""
        pool = self.start + (1.0 - self.start) * g / self.span
        n = min(len(self.ranked), max(1, math.ceil(pool * len(self.ranked))))
        pick = int(np.random.default_rng([self.seed, _TAG, g]).integers(n))
        return int(self.ranked[pick])

    def window_start(self, g: int) -> int:
        """Stream position of global window `g < span`."""
        return self.window(g) * self.seq_len
