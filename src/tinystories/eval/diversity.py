"""`tinystories eval diversity`: memorization and diversity, the paper's four measures (§4.4).

A sample of `n` training stories is cut after about 40% of their words; the
run's model completes each beginning. With T_i the i-th completion, T'_i the
true rest of that story and S the training corpus:

1. completion vs original: s_i = Rouge-2 precision of T_i against T'_i
   (paper Figure 14); high values mean the model recites the story it saw.
2. between generations: r_i = max over j != i of the Rouge-2 F-measure of T_i
   and T_j (Figure 15); high values mean the completions resemble each other.
3. k-grams in the corpus: for each distinct k-gram r of the completions
   (k = 2..5), g_r = occurrences of r among S's k-grams / number of S's k-grams,
   shown as log10 g_r with -10 for "never" (Figure 16).
4. closest training story: h_i = max over stories S_j of the Rouge-k precision
   of T_i against S_j, k = 2 and 3 (Figure 17).

Beside the model, a reference: the same measures on the true continuations
T'_i (measure 3 counts in the corpus without the picked stories, measure 4
leaves out the story each continuation comes from; else every continuation
would trivially be found in the corpus). It shows what the training text
itself scores.

Words and counts are those of the `rouge-score` package with its defaults:
lowercase, runs of [a-z0-9] are the words (anything else separates them), no
stemming; n-grams are counted with multiplicity and the overlap is clipped
(an n-gram seen twice in T_i and once in S_j counts once). Precision is
overlap / n-grams of the prediction (0 when it has none).

Measures 3 and 4 look at every training story, so they go through a
`CorpusIndex`: each word gets a 64-bit key, each k-gram a 64-bit hash of its
words' keys; per k a
sorted table of distinct hashes with their corpus counts (measure 3 is a
binary search per k-gram), and for k = 2, 3 posting lists (story id, count in
that story) per distinct k-gram. Measure 4 adds, for each story, the clipped
overlap min(count in T_i, count in S_j) over the posting lists of T_i's
k-grams (one `np.bincount` over the stories), which is the exact Rouge-k
overlap of T_i with every story at once; the best one is taken. Hash
collisions (of words or k-grams) are the only approximation: with 10^8
distinct k-grams the chance
that any two share a hash is about 3 in 10,000, and a completion's k-gram
meets a wrong count with a chance near 10^-7.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinystories.errors import UserError

ORDERS = (2, 3, 4, 5)
"""k of the k-gram frequencies (measure 3)."""
CLOSEST_ORDERS = (2, 3)
"""k of the nearest-story precision (measure 4); these orders get posting lists."""
NEVER = -10.0
"""log10 frequency shown for a k-gram that never occurs in the corpus (as in the paper's Figure 16)."""
INDEX_FORMAT = 1


@dataclass
class DiversityConfig:
    """`tinystories eval diversity`: memorization and diversity of a run's completions (the paper's §4.4)."""

    run: str = ""
    """Run folder whose model completes the cut training stories."""
    data: tuple[str, ...] = ()
    """Training corpus: story files (.txt, .jsonl, .json, .parquet, globs, folders, hf:) or a dataset folder; default: the run's dataset."""
    split: str = "train"
    """Split of a dataset folder to use as the corpus."""
    n: int = 100
    """Training stories to cut and complete (the paper used 100)."""
    cut: float = 0.4
    """Share of a story's words kept as the prompt (the paper: roughly the first 40%)."""
    min_words: int = 20
    """Stories with fewer words are not picked for cutting."""
    max_new_tokens: int = 300
    """New tokens per completion at most."""
    temperature: float = 1.0
    """Sampling temperature; 0 = greedy."""
    top_k: int = 0
    """Sample from the k most likely tokens only; 0 = off."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1 = off."""
    seed: int = 1234
    """Seed that picks the stories; completion i is sampled with seed + i."""
    max_stories: int = 0
    """Use only the first this many corpus stories (0 = all)."""
    index: str | None = None
    """Folder to keep the corpus index in and reuse on later runs (default: build it in memory each time)."""
    step: int | None = None
    """Checkpoint step to load; default = the latest."""
    device: str = "auto"
    """Torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1, mps."""
    batch: int = 64
    """Sequences decoded together at most."""
    bins: int = 40
    """Histogram bins over [0, 1] for the Rouge measures (the k-gram frequencies use 0.5-wide bins of log10)."""
    plot: bool = True
    """Also draw the histograms into eval/diversity.png (needs matplotlib, the [report] extra)."""
    write: bool = True
    """Write eval/diversity.json in the run folder."""


# --- Rouge, counted as rouge-score counts -------------------------------------------------

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


# --- words and k-grams as 64-bit keys --------------------------------------------------------------

_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# Odd 64-bit multipliers, one per position in a k-gram (fixed: a saved index depends on them).
_MULT = np.array(
    [0x9E3779B97F4A7C15, 0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3],
    dtype=np.uint64,
)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place on a uint64 array (uint64 arithmetic wraps, as wanted)."""
    h ^= h >> np.uint64(30)
    h *= _C1
    h ^= h >> np.uint64(27)
    h *= _C2
    h ^= h >> np.uint64(31)
    return h


_ALNUM = np.zeros(256, dtype=np.int8)
_ALNUM[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8)] = 1


def word_keys(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit key for every word of every text: (W,) uint64 in reading order, and words per text (T,) int64.

    The words are those of `words()`, found on the bytes with numpy: after
    lowercasing, the runs of the bytes a-z, 0-9 of the UTF-8 text (every byte of
    a non-ASCII character is >= 0x80, so it separates words, as in rouge-score).
    A word's key mixes its length and its bytes, 8 at a time.
    """
    low = [t.lower() for t in texts]
    sizes = np.fromiter((len(t) if t.isascii() else len(t.encode("utf-8")) for t in low), np.int64, len(low))
    b = np.frombuffer("\n".join(low).encode("utf-8"), dtype=np.uint8)  # (B,) texts apart by a non-word byte
    flags = np.zeros(len(b) + 2, dtype=np.int8)  # (B + 2,) 1 on word bytes, a 0 at each end
    flags[1:-1] = _ALNUM[b]
    edges = np.flatnonzero(flags[1:] != flags[:-1])
    starts, ends = edges[0::2], edges[1::2]  # (W,) word i is b[starts[i]:ends[i]]
    text_start = np.zeros(len(texts) + 1, dtype=np.int64)  # (T + 1,) byte offset of each text, then the end
    np.cumsum(sizes + 1, out=text_start[1:])
    per_text = np.diff(np.searchsorted(starts, text_start)).astype(np.int64)
    length = ends - starts
    key = length.astype(np.uint64) * _C1
    # Every 8-byte window of the text as one (unaligned) uint64; x86 and ARM are little-endian.
    padded = np.concatenate([b, np.zeros(8, dtype=np.uint8)])
    windows = np.ndarray(shape=(len(b) + 1,), dtype="<u8", buffer=padded, strides=(1,))
    longest = int(length.max()) if len(length) else 0
    for block in range(0, longest, 8):
        sel = np.flatnonzero(length > block) if block else slice(None)  # words reaching into this block
        cut = np.uint64(64) - np.minimum(length[sel] - block, 8).astype(np.uint64) * np.uint64(8)
        v = (windows[starts[sel] + block] << cut) >> cut  # the word's bytes only (cut < 64)
        key[sel] = _mix(key[sel] ^ v)
    return key, per_text


def gram_hashes(keys: np.ndarray, k: int) -> np.ndarray:
    """64-bit hash of every k-gram of a sequence of word keys: (len(keys) - k + 1,) uint64, empty when shorter."""
    m = len(keys) - k + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    x = np.asarray(keys, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    for j in range(k):
        h += x[j : j + m]
        h *= _MULT[j]
        h ^= h >> np.uint64(29)
    return _mix(h)


def _sorted_unique(a: np.ndarray, counts: bool = False) -> Any:
    """Sorted distinct values (and how often each occurs); np.sort is far faster than np.unique here."""
    s = np.sort(a)
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    at = np.flatnonzero(first)
    return (s[at], np.diff(np.append(at, len(s)))) if counts else s[at]


def _runs(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run of equal values in `a`."""
    first = np.ones(len(a), dtype=bool)
    first[1:] = a[1:] != a[:-1]
    at = np.flatnonzero(first)
    return at, np.diff(np.append(at, len(a)))


def _blocks(starts: np.ndarray, words: int, stories: int = 2**31 - 1) -> Iterator[tuple[int, int]]:
    """Story ranges [s0, s1) of about `words` words and at most `stories` stories each.

    `starts`: (N + 1,) word offset of each story, then the total.
    """
    n = len(starts) - 1
    s0 = 0
    while s0 < n:
        s1 = int(np.searchsorted(starts, starts[s0] + words, side="right")) - 1
        s1 = min(n, s0 + stories, max(s1, s0 + 1))
        yield s0, s1
        s0 = s1


def _block_grams(wkeys: np.ndarray, starts: np.ndarray, s0: int, s1: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the k-grams inside stories s0..s1-1 (none across a boundary) and each one's story - s0."""
    ids = wkeys[starts[s0] : starts[s1]]
    h = gram_hashes(ids, k)  # (m,)
    m = len(h)
    doc = np.repeat(np.arange(s1 - s0, dtype=np.int64), np.diff(starts[s0 : s1 + 1]))  # (len(ids),)
    inside = doc[:m] == doc[k - 1 : k - 1 + m]
    return h[inside], doc[:m][inside]


# --- the corpus index ----------------------------------------------------------------------


@dataclass
class Postings:
    """Posting lists of one k: for each distinct k-gram, the stories holding it and how often."""

    keys: np.ndarray
    """(G,) uint64 sorted distinct k-gram hashes."""
    offsets: np.ndarray
    """(G + 1,) int64: k-gram g's stories are docs[offsets[g]:offsets[g + 1]]."""
    docs: np.ndarray
    """(P,) int32 story ids, ascending within a k-gram."""
    tf: np.ndarray
    """(P,) uint16 count of the k-gram in that story (saturates at 65535)."""


@dataclass
class CorpusIndex:
    """Word k-gram index of a story corpus (see the module docstring)."""

    lengths: np.ndarray
    """(N,) int32 words per story."""
    counts: dict[int, tuple[np.ndarray, np.ndarray]]
    """k -> (sorted distinct hashes (G,) uint64, occurrences in the corpus (G,) uint32)."""
    postings: dict[int, Postings]
    """k -> posting lists, for k in CLOSEST_ORDERS."""
    fingerprint: str = ""
    """What corpus this is (hash of its sources and options); a saved index is reused only on a match."""

    @property
    def n_stories(self) -> int:
        return len(self.lengths)

    @property
    def n_words(self) -> int:
        return int(self.lengths.sum(dtype=np.int64))

    def total(self, k: int) -> int:
        """Number of k-grams in the corpus (with repetition), the denominator of measure 3."""
        return int(np.maximum(self.lengths.astype(np.int64) - (k - 1), 0).sum())

    # -- building --

    @classmethod
    def build(
        cls,
        stories: Iterable[str],
        *,
        orders: Sequence[int] = ORDERS,
        posting_orders: Sequence[int] = CLOSEST_ORDERS,
        batch: int = 20_000,
        fingerprint: str = "",
    ) -> CorpusIndex:
        """Index every story of `stories` (story i gets id i)."""
        parts, lens = [], []
        it = iter(stories)
        while chunk := list(itertools.islice(it, batch)):
            w, n = word_keys(chunk)
            parts.append(w)
            lens.append(n)
        wkeys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)  # (W,) every word of the corpus
        del parts
        lengths = np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64)
        if len(lengths) >= 2**31:
            raise UserError(f"{len(lengths)} stories: the index holds at most 2^31 - 1")
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        counts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        postings: dict[int, Postings] = {}
        # Count-only orders first, so that the corpus's words can go before the last lists are laid out.
        todo = sorted(set(orders) - set(posting_orders)) + sorted(posting_orders)
        for n, k in enumerate(todo):
            keys = _distinct_grams(wkeys, starts, k)
            if k in posting_orders:
                df, occ, parts = _posting_parts(wkeys, starts, keys, k)
                if n == len(todo) - 1:
                    del wkeys
                postings[k] = _place(keys, df, parts)
                del df, parts
            else:
                occ = _gram_counts(wkeys, starts, keys, k)
            if k in orders:
                counts[k] = (keys, _as_uint32(occ))
        return cls(lengths=lengths.astype(np.int32), counts=counts, postings=postings, fingerprint=fingerprint)

    # -- queries --

    def encode(self, text: str) -> np.ndarray:
        """Word keys of a text, (W,) uint64."""
        return word_keys([text])[0]

    def occurrences(self, k: int, hashes: np.ndarray) -> np.ndarray:
        """Corpus occurrences of each k-gram hash, (len(hashes),) int64 (0 for never)."""
        if k not in self.counts:
            raise UserError(f"the index holds no {k}-gram counts (has k = {sorted(self.counts)})")
        keys, occ = self.counts[k]
        return _lookup(keys, hashes, np.asarray(occ, dtype=np.int64))

    def overlaps(self, wkeys: np.ndarray, k: int) -> tuple[np.ndarray, int]:
        """Clipped k-gram overlap of a text (its word keys) with every story, (N,) int64, and its k-gram count."""
        post = self.postings.get(k)
        if post is None:
            raise UserError(f"the index holds no {k}-gram posting lists (has k = {sorted(self.postings)})")
        h = gram_hashes(wkeys, k)
        scores = np.zeros(self.n_stories, dtype=np.int64)
        if len(h) == 0 or len(post.keys) == 0:
            return scores, len(h)
        q, c = _sorted_unique(h, counts=True)  # distinct k-grams of the text and their counts
        g = np.minimum(np.searchsorted(post.keys, q), len(post.keys) - 1)
        hit = post.keys[g] == q
        once, more = g[hit & (c == 1)], np.flatnonzero(hit & (c > 1))
        if len(once):
            # A k-gram the text has once adds 1 to every story that holds it (min(1, tf) = 1).
            docs = np.concatenate([post.docs[post.offsets[i] : post.offsets[i + 1]] for i in once])
            scores += np.bincount(docs, minlength=self.n_stories)
        if len(more):
            # Repeated k-grams add min(count in the text, count in the story): weights, exact in float64.
            spans = [(post.offsets[g[j]], post.offsets[g[j] + 1], c[j]) for j in more]
            docs = np.concatenate([post.docs[lo:hi] for lo, hi, _ in spans])
            clipped = np.concatenate([np.minimum(post.tf[lo:hi], cj) for lo, hi, cj in spans])
            scores += np.rint(np.bincount(docs, weights=clipped, minlength=self.n_stories)).astype(np.int64)
        return scores, len(h)

    def closest(self, text: str, k: int, exclude: int | None = None) -> tuple[int, float, int]:
        """(story id, Rouge-k precision, clipped overlap) of the story that contains most of the text's k-grams.

        Ties go to the lowest story id; -1 when no story shares a k-gram.
        `exclude` leaves one story out (a training story's own source).
        """
        scores, n = self.overlaps(self.encode(text), k)
        if exclude is not None:
            scores[exclude] = -1
        best = int(np.argmax(scores)) if len(scores) else -1
        if best < 0 or scores[best] <= 0:
            return -1, 0.0, 0
        return best, float(scores[best]) / max(n, 1), int(scores[best])

    # -- on disk --

    def save(self, folder: str | os.PathLike) -> None:
        """Write the index as .npy files and meta.json (written last: a folder without it is not an index)."""
        from tinystories.io import atomic_save, atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"lengths": self.lengths}
        for k, (keys, occ) in self.counts.items():
            arrays[f"counts{k}_keys"], arrays[f"counts{k}_n"] = keys, occ
        for k, p in self.postings.items():
            for name in ("keys", "offsets", "docs", "tf"):
                arrays[f"post{k}_{name}"] = getattr(p, name)
        for name, a in arrays.items():
            atomic_save(folder / f"{name}.npy", lambda tmp, a=a: _save_npy(tmp, a))
        meta = {
            "format": INDEX_FORMAT,
            "fingerprint": self.fingerprint,
            "stories": self.n_stories,
            "words": self.n_words,
            "counts": sorted(self.counts),
            "postings": sorted(self.postings),
            "tokenization": "rouge-score default: lowercase, runs of [a-z0-9], no stemming",
        }
        atomic_write_json(folder / "meta.json", meta)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> CorpusIndex:
        """Open a saved index; the big arrays are memory-mapped, read-only."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text("utf-8"))
            if meta.get("format") != INDEX_FORMAT:
                raise UserError(f"{folder} holds an index of another format ({meta.get('format')}); remove it")

            def arr(name: str) -> np.ndarray:
                return np.load(folder / f"{name}.npy", mmap_mode="r")

            counts = {k: (arr(f"counts{k}_keys"), arr(f"counts{k}_n")) for k in meta["counts"]}
            postings = {
                k: Postings(*(arr(f"post{k}_{n}") for n in ("keys", "offsets", "docs", "tf")))
                for k in meta["postings"]
            }
            lengths = np.asarray(arr("lengths"))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{folder} is not a readable diversity index ({e}); remove it to rebuild") from None
        return cls(lengths=lengths, counts=counts, postings=postings, fingerprint=meta["fingerprint"])


def _save_npy(path: str, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(a))


def _as_uint32(a: np.ndarray) -> np.ndarray:
    if len(a) and int(a.max()) >= 2**32:
        return a.astype(np.int64)
    return a.astype(np.uint32)


_BIG_BLOCK = 4_000_000
"""Words per block where only sorting happens (memory is the limit)."""
_SMALL_BLOCK = 250_000
"""Words per block of the posting lists: a block's distinct k-grams stay in cache for the binary searches."""


def _distinct_grams(wkeys: np.ndarray, starts: np.ndarray, k: int) -> np.ndarray:
    """Sorted distinct k-gram hashes of the corpus: per block, then merged whenever the parts outgrow the result."""
    keys = np.zeros(0, dtype=np.uint64)
    parts: list[np.ndarray] = []
    pending = 0
    for s0, s1 in _blocks(starts, _BIG_BLOCK):
        part = _sorted_unique(_block_grams(wkeys, starts, s0, s1, k)[0])
        parts.append(part)
        pending += len(part)
        if pending > max(len(keys), 1 << 24):
            keys, parts, pending = _sorted_unique(np.concatenate([keys, *parts])), [], 0
    return _sorted_unique(np.concatenate([keys, *parts])) if parts else keys


def _gram_counts(wkeys: np.ndarray, starts: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Corpus occurrences of each of `keys` (every k-gram of the corpus is among them), (G,) int64."""
    occ = np.zeros(len(keys), dtype=np.int64)
    for s0, s1 in _blocks(starts, _BIG_BLOCK):
        u, c = _sorted_unique(_block_grams(wkeys, starts, s0, s1, k)[0], counts=True)
        occ[np.searchsorted(keys, u)] += c  # u is distinct, so plain fancy-index += is right
    return occ


def _posting_parts(
    wkeys: np.ndarray, starts: np.ndarray, keys: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]]:
    """Per block of stories, the (k-gram, story, count) triples of `keys` (all the corpus's k-grams, sorted).

    A block's triples come from one sort of (block-local k-gram id, story)
    packed in a uint64. Returns, per k-gram, the number of stories holding it
    (G,) and its corpus occurrences (G,), and the blocks' triples.
    """
    index_dtype = np.int32 if len(keys) < 2**31 else np.int64
    df = np.zeros(len(keys), dtype=np.int64)  # stories holding each k-gram: the list sizes
    occ = np.zeros(len(keys), dtype=np.int64)
    parts = []  # per block: (k-gram index, story - s0 as uint16, count, s0), 8 bytes a triple
    for s0, s1 in _blocks(starts, _SMALL_BLOCK, stories=65536):
        h, doc = _block_grams(wkeys, starts, s0, s1, k)
        u = _sorted_unique(h)
        local = _positions(u, h).astype(np.uint64)  # (m,) block-local k-gram id
        packed = np.sort((local << np.uint64(32)) | doc.astype(np.uint64))
        at, tf = _runs(packed)  # one run per (k-gram, story)
        pairs = packed[at]
        gram = np.searchsorted(keys, u).astype(index_dtype)[(pairs >> np.uint64(32)).astype(np.int64)]
        tf = np.minimum(tf, 65535).astype(np.uint16)
        at, size = _runs(gram)  # gram ascends within a block
        df[gram[at]] += size
        occ[gram[at]] += np.add.reduceat(tf.astype(np.int64), at) if len(at) else 0
        parts.append((gram, (pairs & np.uint64(0xFFFF)).astype(np.uint16), tf, s0))
    return df, occ, parts


def _place(keys: np.ndarray, df: np.ndarray, parts: list) -> Postings:
    """Posting lists from the blocks' triples (`_posting_parts`), emptying `parts` as it goes.

    Each k-gram's list size (`df`) is known, so every triple goes straight to
    its final place; blocks come in story order, so every list is sorted by
    story. A block's memory is freed once it is placed.
    """
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum(df, out=offsets[1:])
    docs = np.empty(int(offsets[-1]), dtype=np.int32)
    tfs = np.empty(int(offsets[-1]), dtype=np.uint16)
    fill = offsets[:-1].copy()  # next free slot of each list
    parts.reverse()
    while parts:
        gram, story, tf, s0 = parts.pop()  # in story order; each block's memory goes as it is placed
        at, size = _runs(gram)
        pos = np.repeat(fill[gram[at]] - at, size) + np.arange(len(gram))  # slot of each triple
        docs[pos] = story.astype(np.int32) + np.int32(s0)
        tfs[pos] = tf
        fill[gram[at]] += size
    return Postings(keys, offsets, docs, tfs)


def _positions(u: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Index in `u` (distinct hashes) of each of `h` (all present in `u`), (len(h),) int32.

    What np.searchsorted(u, h) gives, several times faster for a small `u`: a
    vectorized hash table with linear probing, at most half full (hashes are
    already well mixed, so their high bits pick the slot).
    """
    size = 1 << max(4, (2 * len(u) - 1).bit_length())
    mask = np.uint64(size - 1)
    table = np.full(size, -1, dtype=np.int32)
    todo = np.arange(len(u), dtype=np.int32)
    slot = (u >> np.uint64(20)) & mask
    while len(todo):  # insert: a key that finds its slot taken (or loses a tie for it) tries the next
        free = table[slot] == -1
        table[slot[free]] = todo[free]
        placed = table[slot] == todo
        todo, slot = todo[~placed], (slot[~placed] + np.uint64(1)) & mask
    slot = (h >> np.uint64(20)) & mask
    idx = table[slot]
    wrong = np.flatnonzero(u[idx] != h)
    while len(wrong):  # look up: follow the probe sequence where the slot holds another key
        slot[wrong] = (slot[wrong] + np.uint64(1)) & mask
        idx[wrong] = table[slot[wrong]]
        wrong = wrong[u[idx[wrong]] != h[wrong]]
    return idx


def _lookup(keys: np.ndarray, q: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[i] where keys[i] == q, else 0, for each query hash."""
    if len(keys) == 0 or len(q) == 0:
        return np.zeros(len(q), dtype=np.int64)
    g = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return np.where(keys[g] == q, values[g], 0)


# --- the corpus: sources, fingerprint, index -------------------------------------------------


@dataclass
class Corpus:
    """Where the training stories come from and a way to read them (in the same order) again."""

    info: dict[str, Any]
    """Sources as written to the JSON (paths with sha256, or the dataset folder with its content hash)."""
    fingerprint: str
    """Hash of `info` and the options that change what is indexed."""
    limit: int
    """Read at most this many stories (0 = all)."""
    _read: Any = dataclasses.field(repr=False, default=None)

    def stories(self) -> Iterator[str]:
        it = self._read()
        return itertools.islice(it, self.limit) if self.limit > 0 else it


def open_corpus(data: Sequence[str], split: str = "train", max_stories: int = 0) -> Corpus:
    """The training corpus named by `data`: story files or one dataset folder (its `split`, decoded)."""
    from tinystories.data import stories as story_io
    from tinystories.io import sha256_file

    data = [os.fspath(d) for d in data]
    if not data:
        raise UserError("no training corpus: give --data (story files or a dataset folder)")
    if max_stories < 0:
        raise UserError(f"--max-stories must be >= 0, got {max_stories}")
    if len(data) == 1 and (Path(data[0]) / "meta.json").is_file():
        from tinystories.data.shards import open_dataset

        ds = open_dataset(data[0])
        if split not in ds.splits:
            raise UserError(f"dataset {data[0]} has no {split!r} split (has: {', '.join(ds.splits)})")
        sp = ds.splits[split]
        if sp.n_documents == 0:
            raise UserError(f"the {split!r} split of {data[0]} has no documents")

        def read() -> Iterator[str]:
            tok = ds.tokenizer()
            for i in range(sp.n_documents):
                yield tok.decode(sp.document(i)[1:].tolist())  # stored as [eot] + tokens

        info: dict[str, Any] = {"dataset": data[0], "split": split, "content_hash": ds.content_hash}
    else:
        sources = story_io.resolve(data)
        info = {
            "files": [
                {"path": s.path, "sha256": sha256_file(s.path) if s.format != "hf" else None} for s in sources
            ]
        }

        def read() -> Iterator[str]:
            return story_io.iter_stories(data)

    # What is indexed depends on the bytes, not on where they lie: files count by hash (hf sources by name).
    what = [info.get("content_hash"), info.get("split")] if "dataset" in info else [
        f["sha256"] or f["path"] for f in info["files"]
    ]
    key = json.dumps({"sources": what, "max_stories": max_stories, "format": INDEX_FORMAT})
    return Corpus(info, hashlib.sha256(key.encode()).hexdigest()[:32], max_stories, read)


def corpus_index(corpus: Corpus, folder: str | os.PathLike | None = None) -> tuple[CorpusIndex, dict[str, Any]]:
    """The corpus's index: loaded from `folder` when it holds this corpus's, else built (and saved there)."""
    t0 = time.perf_counter()
    if folder is not None and (Path(folder) / "meta.json").is_file():
        index = CorpusIndex.load(folder)
        if index.fingerprint != corpus.fingerprint:
            raise UserError(f"{folder} holds the index of another corpus; remove it or choose another --index folder")
        return index, {"folder": os.fspath(folder), "reused": True, "load_s": round(time.perf_counter() - t0, 3)}
    index = CorpusIndex.build(corpus.stories(), fingerprint=corpus.fingerprint)
    info: dict[str, Any] = {"folder": None if folder is None else os.fspath(folder), "reused": False,
                            "build_s": round(time.perf_counter() - t0, 3)}
    if folder is not None:
        index.save(folder)
    return index, info


# --- cutting stories -----------------------------------------------------------------------------


def cut_story(story: str, share: float) -> tuple[str, str]:
    """(beginning, rest): the first round(share x words) whitespace-separated words, and what follows."""
    spans = [m.end() for m in re.finditer(r"\S+", story)]
    if not spans:
        return "", ""
    end = spans[max(1, min(len(spans) - 1, round(share * len(spans)))) - 1]
    return story[:end], story[end:].strip()


def pick_stories(corpus: Corpus, n_stories: int, n: int, seed: int) -> list[tuple[int, str]]:
    """Up to 4n (story id, text) candidates in a seeded random order; the caller keeps the first n that fit."""
    rng = np.random.default_rng(seed)
    order = rng.choice(n_stories, size=min(n_stories, 4 * n), replace=False)
    wanted = {int(i) for i in order}
    found: dict[int, str] = {}
    for i, story in enumerate(corpus.stories()):
        if i in wanted:
            found[i] = story
            if len(found) == len(wanted):
                break
    return [(int(i), found[int(i)]) for i in order if int(i) in found]


# --- the four measures ---------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return {"n": 0}
    q = np.quantile(a, [0.1, 0.5, 0.9])
    return {"n": len(a), "mean": float(a.mean()), "p10": float(q[0]), "median": float(q[1]),
            "p90": float(q[2]), "max": float(a.max())}


def histogram(values: Sequence[float], lo: float, hi: float, bins: int) -> dict[str, Any]:
    """Counts of `values` in `bins` equal bins over [lo, hi] (the last bin includes hi)."""
    counts, edges = np.histogram(np.clip(np.asarray(values, dtype=np.float64), lo, hi), bins=bins, range=(lo, hi))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def kgram_frequencies(index: CorpusIndex, texts: Sequence[str], k: int,
                      leave_out: Sequence[str] = ()) -> np.ndarray:
    """log10 corpus frequency of each distinct k-gram of `texts` (NEVER where it does not occur), (G,).

    `leave_out`: stories whose k-grams are taken out of the counts first (the
    reference measures training text against the rest of the corpus).
    """
    hashes = [gram_hashes(index.encode(t), k) for t in texts]
    if not any(len(h) for h in hashes):
        return np.zeros(0)
    distinct = np.unique(np.concatenate(hashes))
    occ = index.occurrences(k, distinct)
    if leave_out:
        own, n_own = np.unique(np.concatenate([gram_hashes(index.encode(t), k) for t in leave_out]),
                               return_counts=True)
        occ = occ - _lookup(own, distinct, n_own)
        total = index.total(k) - sum(max(0, len(words(t)) - k + 1) for t in leave_out)
    else:
        total = index.total(k)
    with np.errstate(divide="ignore"):
        logf = np.where(occ > 0, np.log10(np.maximum(occ, 1) / max(total, 1)), NEVER)
    return np.maximum(logf, NEVER)


def _kgram_block(logf: np.ndarray) -> dict[str, Any]:
    never = int((logf <= NEVER).sum())
    return {
        "distinct": len(logf),
        "never": never,
        "never_share": never / len(logf) if len(logf) else None,
        "median_log10": float(np.median(logf)) if len(logf) else None,
        "histogram": histogram(logf, NEVER, 0.0, 20),
    }


def measure(
    index: CorpusIndex,
    completions: Sequence[str],
    originals: Sequence[str],
    sources: Sequence[int],
    source_texts: Sequence[str],
    bins: int = 40,
) -> dict[str, Any]:
    """The four measures for completions of cut corpus stories, beside the same on the true continuations.

    `originals[i]` is the true rest of story `sources[i]` (whose whole text is
    `source_texts[i]`), which `completions[i]` continues.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    s = [rouge_n(c, o, 2).precision for c, o in zip(completions, originals)]
    r, r_with = most_similar(completions, 2)
    r_ref, _ = most_similar(originals, 2)
    timings["rouge_s"] = time.perf_counter() - t

    t = time.perf_counter()
    kgrams: dict[str, Any] = {}
    for k in ORDERS:
        if k not in index.counts:
            continue
        kgrams[str(k)] = {
            **_kgram_block(kgram_frequencies(index, completions, k)),
            "reference": _kgram_block(kgram_frequencies(index, originals, k, leave_out=source_texts)),
        }
    timings["kgrams_s"] = time.perf_counter() - t

    t = time.perf_counter()
    closest: dict[int, list[tuple[int, float, int]]] = {}
    closest_ref: dict[int, list[tuple[int, float, int]]] = {}
    for k in CLOSEST_ORDERS:
        if k in index.postings:
            closest[k] = [index.closest(c, k) for c in completions]
    timings["closest_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for k in closest:
        closest_ref[k] = [index.closest(o, k, exclude=src) for o, src in zip(originals, sources)]
    timings["closest_reference_s"] = time.perf_counter() - t

    def block(values: Sequence[float], ref: Sequence[float] | None = None) -> dict[str, Any]:
        out = {**_summary(values), "histogram": histogram(values, 0.0, 1.0, bins)}
        if ref is not None:
            out["reference"] = {**_summary(ref), "histogram": histogram(ref, 0.0, 1.0, bins)}
        return out

    items = []
    for i, src in enumerate(sources):
        item: dict[str, Any] = {
            "story": src,
            "completion_vs_original": s[i],
            "most_similar_generation": {"index": r_with[i], "rouge2_f": r[i]},
            "reference_most_similar": r_ref[i],
        }
        for k, found in closest.items():
            story, p, _ = found[i]
            item[f"closest_rouge{k}"] = {"story": story, "precision": p, "is_source": story == src}
            item[f"reference_closest_rouge{k}"] = {"story": closest_ref[k][i][0], "precision": closest_ref[k][i][1]}
        items.append(item)

    return {
        "completion_vs_original": {
            "measure": "s_i: Rouge-2 precision of completion i against the true continuation (paper Fig. 14)",
            **block(s),
        },
        "between_generations": {
            "measure": "r_i: highest Rouge-2 F-measure of completion i with any other completion (paper Fig. 15); "
            "reference: the same among the true continuations",
            **block(r, r_ref),
        },
        "kgrams_in_corpus": {
            "measure": "log10(occurrences among the corpus's k-grams / number of corpus k-grams) of each distinct "
            f"k-gram of the completions, {NEVER:g} = never (paper Fig. 16); reference: the true continuations "
            "against the corpus without the picked stories",
            "total": {str(k): index.total(k) for k in ORDERS if k in index.counts},
            **kgrams,
        },
        "closest_training_story": {
            "measure": "h_i: highest Rouge-k precision of completion i against any corpus story, k = 2, 3 "
            "(paper Fig. 17); reference: each true continuation against every story but its own",
            **{
                f"rouge{k}": {
                    **block([p for _, p, _ in closest[k]], [p for _, p, _ in closest_ref[k]]),
                    "closest_is_source": sum(it[f"closest_rouge{k}"]["is_source"] for it in items),
                }
                for k in closest
            },
        },
        "items": items,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


# --- the histograms as a picture ------------------------------------------------------------------


def plot(result: dict[str, Any], path: str | os.PathLike, title: str = "") -> bool:
    """Draw the paper's Figures 14-17 from `result` into a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from tinystories.io import atomic_save

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))

    def bars(ax: Any, hist: dict[str, Any], label: str, color: str, alpha: float = 0.8) -> None:
        edges = np.asarray(hist["edges"])
        ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color=color, alpha=alpha,
               label=label, edgecolor="none")

    top = [
        (result["completion_vs_original"], "Rouge-2 precision vs. original continuation (Fig. 14)"),
        (result["between_generations"], "max Rouge-2 F vs. other completions (Fig. 15)"),
    ]
    closest = result["closest_training_story"]
    top += [(closest[f"rouge{k}"], f"max Rouge-{k} precision vs. any training story (Fig. 17)")
            for k in CLOSEST_ORDERS if f"rouge{k}" in closest]
    for ax, (block, name) in zip(axes[0], top):
        bars(ax, block["histogram"], "model", "tab:blue")
        if "reference" in block:
            bars(ax, block["reference"]["histogram"], "training text", "tab:orange", 0.5)
            ax.legend(fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylabel("stories")
    for ax, k in zip(axes[1], ORDERS):
        block = result["kgrams_in_corpus"].get(str(k))
        if block is None:
            ax.axis("off")
            continue
        bars(ax, block["histogram"], "model", "tab:blue")
        bars(ax, block["reference"]["histogram"], "training text", "tab:orange", 0.5)
        ax.set_title(f"{k}-grams: log10 corpus frequency (Fig. 16; {NEVER:g} = never)", fontsize=9)
        ax.set_xlim(NEVER, 0)
        ax.set_ylabel("distinct k-grams")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
    return True


# --- the command ----------------------------------------------------------------------------------


def _check(cfg: DiversityConfig) -> None:
    if not cfg.run:
        raise UserError("--run is required: the run folder whose model completes the stories")
    if cfg.n < 2:
        raise UserError(f"--n must be >= 2 (measure 2 compares completions with each other), got {cfg.n}")
    if not 0.0 < cfg.cut < 1.0:
        raise UserError(f"--cut must be between 0 and 1, got {cfg.cut}")
    if cfg.batch < 1:
        raise UserError(f"--batch must be >= 1, got {cfg.batch}")
    if cfg.bins < 1:
        raise UserError(f"--bins must be >= 1, got {cfg.bins}")
    if cfg.min_words < 4:
        raise UserError(f"--min-words must be >= 4, got {cfg.min_words}")


def evaluate_diversity(cfg: DiversityConfig) -> dict[str, Any]:
    """Cut n training stories, complete them with the run's model, and measure; writes eval/diversity.json."""
    import torch

    from tinystories.io import atomic_write_json
    from tinystories.rundir import config_dict, load_run, with_device
    from tinystories.sample import SampleParams, complete, prompt_ids

    cfg = with_device(cfg)
    _check(cfg)
    params = SampleParams(cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens, seed=cfg.seed)
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    model, tok = loaded.model, loaded.tokenizer
    data = list(cfg.data)
    if not data:
        default = loaded.config.data.get("path")
        if not default:
            raise UserError(f"no --data given and run {cfg.run} names no dataset")
        data = [str(default)]
    corpus = open_corpus(data, cfg.split, cfg.max_stories)
    index, index_info = corpus_index(corpus, cfg.index)
    if index.n_stories < 2:
        raise UserError("the corpus needs at least 2 stories")

    # Stories to cut: seeded random order; the first n with enough words whose beginning leaves room to generate.
    room = model.config.max_seq_len - 16
    picked = []
    for i, story in pick_stories(corpus, index.n_stories, cfg.n, cfg.seed):
        if len(story.split()) < cfg.min_words:
            continue
        prompt, rest = cut_story(story, cfg.cut)
        ids = prompt_ids(tok, prompt)
        if len(ids) <= room and len(words(rest)) >= 2:
            picked.append((i, story, prompt, rest, ids))
        if len(picked) == cfg.n:
            break
    if len(picked) < 2:
        raise UserError(f"found {len(picked)} corpus stories of at least {cfg.min_words} words whose first "
                        f"{cfg.cut:.0%} fits the model's context; need at least 2")

    t = time.perf_counter()
    with torch.inference_mode():
        done = complete(model, [p[4] for p in picked], params, eot_id=tok.eot_id, max_batch=cfg.batch)
    generate_s = time.perf_counter() - t
    completions = []
    for p, c in zip(picked, done):
        full = tok.decode(p[4] + c.tokens)
        completions.append(full[len(tok.decode(p[4])) :])

    result_m = measure(index, completions, [p[3] for p in picked], [p[0] for p in picked],
                       [p[1] for p in picked], cfg.bins)
    for item, p, text, c in zip(result_m["items"], picked, completions, done):
        item.update({"prompt": p[2], "original": p[3], "completion": text, "finish_reason": c.finish_reason})
    result = {
        "run": os.fspath(cfg.run),
        "step": loaded.step,
        "checkpoint": os.fspath(loaded.path),
        "model": config_dict(model.config),
        "corpus": {**corpus.info, "max_stories": cfg.max_stories, "fingerprint": corpus.fingerprint,
                   "stories": index.n_stories, "words": index.n_words},
        "sampling": {
            "stories": len(picked), "asked": cfg.n, "cut": cfg.cut, "min_words": cfg.min_words,
            "pick_seed": cfg.seed, "completion_seeds": f"{cfg.seed} + i for completion i",
            **dataclasses.asdict(params),
        },
        "tokenization": "rouge-score's default (lowercase, runs of [a-z0-9], no stemming); clipped n-gram counts",
        "index": index_info,
        "timings": {"generate_s": round(generate_s, 3), **result_m.pop("timings")},
        **result_m,
    }
    out = Path(cfg.run) / "eval"
    if cfg.write:
        png = out / "diversity.png"
        drawn = cfg.plot and plot(result, png, f"{cfg.run} step {loaded.step}")
        result["plot"] = os.fspath(png) if drawn else None
        atomic_write_json(out / "diversity.json", result)
    return _brief(result)


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    # What the command prints: the headline of each measure (the JSON has the histograms and items).
    def head(block: dict[str, Any]) -> dict[str, Any]:
        out = {k: round(block[k], 4) for k in ("mean", "median", "p90", "max") if k in block}
        if "reference" in block:
            out["reference_mean"] = round(block["reference"]["mean"], 4)
        return out

    kg = result["kgrams_in_corpus"]
    return {
        "run": result["run"],
        "step": result["step"],
        "stories": result["sampling"]["stories"],
        "corpus_stories": result["corpus"]["stories"],
        "completion_vs_original_rouge2_p": head(result["completion_vs_original"]),
        "between_generations_rouge2_f": head(result["between_generations"]),
        "kgrams_never_in_corpus": {k: round(v["never_share"], 4) for k, v in kg.items()
                                   if isinstance(v, dict) and v.get("never_share") is not None},
        "closest_training_story": {k: head(v) for k, v in result["closest_training_story"].items()
                                   if isinstance(v, dict)},
        "index": result["index"],
    }
