"""Checks on generated stories, and near-duplicate detection over a corpus.

`check_story` returns None for a good story, or the reason it is rejected:
a required word missing in every form (the lexicon's inflections count, so
`decorate` is met by `decorated` and `mouse` by `mice`), a length out of
range, a cut-off answer, a refusal or a meta-answer ("Sure! Here is a story"),
or text that is not English. `near_duplicates` is a separate pass over a whole
corpus: MinHash signatures of word 5-shingles, banded (LSH) to find candidate
pairs, compared by the share of equal signature entries.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tinystories.synth.lexicon import POS, Lexicon

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_NON_ASCII_LETTER = re.compile(r"[^\W\d_A-Za-z]")
_COMPOUND = re.compile(r"[a-z]+(?:-[a-z]+)+")  # "grown-up", "yo-yo": lexicon words with a hyphen
# Openings of answers that talk about the task instead of telling the story.
_META = re.compile(
    r"^\W*(sure\b|certainly\b|of course\b|absolutely\b|okay[,!.]|ok[,!.]|here is\b|here's\b|"
    r"i'd be happy|i would be happy|i'm sorry|i am sorry|i cannot\b|i can't\b|i can not\b|"
    r"as an ai\b|sorry,)",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\bas an ai\b|\blanguage model\b|\bi (?:cannot|can't|won't) (?:write|help|create)", re.I
)
# The most frequent English function words: any English story is full of them.
_STOPWORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "to",
        "of",
        "in",
        "on",
        "was",
        "is",
        "it",
        "he",
        "she",
        "they",
        "his",
        "her",
        "was",
        "were",
        "with",
        "for",
        "at",
        "that",
        "this",
        "but",
        "so",
        "not",
        "had",
        "be",
        "have",
        "you",
        "i",
        "my",
        "we",
        "said",
        "there",
        "then",
        "one",
        "day",
        "very",
        "all",
        "up",
        "out",
    ]
)


@dataclass
class CheckConfig:
    """Limits for `check_story`."""

    min_words: int = 40
    """Shortest acceptable story, in words."""
    max_words: int = 1200
    """Longest acceptable story, in words."""
    min_english: float = 0.2
    """Least share of common English function words among a story's words."""
    require_words: bool = True
    """Reject a story that misses one of its three words in every form."""


def words_of(text: str) -> list[str]:
    """Lower-case word tokens (letters and inner apostrophes)."""
    return _WORD.findall(text.lower())


def story_words(text: str, toks: list[str] | None = None, compounds: bool = True) -> set[str]:
    """The word forms a story uses: plain words (possessives too), and hyphenated compounds also with a space.

    `toks` is `words_of(text)` when the caller has it already; `compounds=False` skips the compounds.
    """
    low = text.lower()
    toks = _WORD.findall(low) if toks is None else toks
    out = set(toks)
    # "the horse's name" uses "horse": the word regex keeps "horse's" whole (for "don't", "I'll")
    out.update(t[:-2] for t in toks if t.endswith("'s"))
    if compounds:
        out.update(_COMPOUND.findall(low))
        # "grown up" and "grown-up" are the same word to a reader
        out.update(f"{a}-{b}" for a, b in itertools.pairwise(toks))
    return out


def missing_words(used: set[str], words: Sequence[str], lexicon: Lexicon) -> list[str]:
    """Which of [verb, noun, adjective] appear in no form among `used` (from `story_words`)."""
    out = []
    for w, pos in zip(words, POS):
        forms = {f.lower() for f in lexicon.forms_of(w, pos)}
        if not forms & used:
            out.append(w)
    return out


def check_story(
    story: str,
    words: Sequence[str],
    lexicon: Lexicon,
    finish_reason: str = "stop",
    cfg: CheckConfig | None = None,
) -> str | None:
    """None if the story passes, else a short reason (`truncated`, `missing words: x`, ...)."""
    cfg = cfg or CheckConfig()
    if finish_reason == "length":
        return "truncated (hit max_tokens)"
    text = story.strip()
    if _META.match(text) or _REFUSAL.search(text[:400]):
        return "refusal or meta-answer"
    toks = words_of(text)
    if len(toks) < cfg.min_words:
        return f"too short ({len(toks)} words < {cfg.min_words})"
    if len(toks) > cfg.max_words:
        return f"too long ({len(toks)} words > {cfg.max_words})"
    if text.isascii():  # the common case, checked in C
        ascii_share = 1.0
    else:
        other = len(_NON_ASCII_LETTER.findall(text))
        ascii_share = 1 - other / max(1, other + len(_ASCII_LETTER.findall(text)))
    english = sum(t in _STOPWORDS for t in toks) / len(toks)
    if ascii_share < 0.95 or english < cfg.min_english:
        return "not English"
    if words and cfg.require_words:
        missing = missing_words(story_words(text, toks, any("-" in w for w in words)), words, lexicon)
        if missing:
            return "missing words: " + ", ".join(missing)
    return None


# --- near-duplicates ------------------------------------------------------------------------------

_MASK = np.uint64(0xFFFFFFFF)


class MinHasher:
    """MinHash signatures of word k-shingles with `num_perm` universal hash functions (fixed seed)."""

    def __init__(self, num_perm: int = 64, shingle: int = 5, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**32, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64)
        self.shingle = shingle

    def signature(self, text: str) -> np.ndarray:
        toks = words_of(text)
        k = self.shingle
        grams = [" ".join(toks[i : i + k]) for i in range(max(1, len(toks) - k + 1))]
        x = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))
        # (a*x + b) mod 2^32: both factors < 2^32, so the product fits in 64 bits.
        h = (x[:, None] * self.a[None, :] + self.b[None, :]) & _MASK
        return h.min(axis=0).astype(np.uint32)


def near_duplicates(
    texts: Iterable[str], threshold: float = 0.8, num_perm: int = 64, bands: int = 16
) -> list[tuple[int, int, float]]:
    """(i, j, similarity) for each text j that nearly repeats an earlier text i (first one kept).

    Similarity is the estimated Jaccard similarity of word 5-shingle sets.
    """
    hasher = MinHasher(num_perm)
    rows = num_perm // bands
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    sigs: list[np.ndarray] = []
    out = []
    for j, text in enumerate(texts):
        sig = hasher.signature(text)
        sigs.append(sig)
        best: tuple[int, float] | None = None
        seen: set[int] = set()
        for band in range(bands):
            key = sig[band * rows : (band + 1) * rows].tobytes()
            for i in buckets[band].get(key, ()):
                if i in seen:
                    continue
                seen.add(i)
                sim = float((sigs[i] == sig).mean())
                if sim >= threshold and (best is None or sim > best[1]):
                    best = (i, sim)
        if best is not None:
            out.append((best[0], j, best[1]))
        else:  # only originals go into the index, so a chain of copies all points at the first
            for band in range(bands):
                buckets[band].setdefault(sig[band * rows : (band + 1) * rows].tobytes(), []).append(j)
    return out
