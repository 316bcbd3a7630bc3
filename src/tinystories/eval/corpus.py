"""The training corpus of `eval diversity`: where its stories come from, and an index of its k-grams.

Measures 3 and 4 of `eval diversity` look at every training story, so they go
through a `CorpusIndex`: each word gets a 64-bit key, each k-gram a 64-bit hash
of its words' keys; per k a sorted table of distinct hashes with their corpus
counts (measure 3 is a binary search per k-gram), and for k = 2, 3 posting
lists (story id, count in that story) per distinct k-gram. Measure 4 adds, for
each story, the clipped overlap min(count in T_i, count in S_j) over the
posting lists of T_i's k-grams (one `np.bincount` over the stories), which is
the exact Rouge-k overlap of T_i with every story at once; the best one is
taken. Hash collisions (of words or k-grams) are the only approximation: with
10^8 distinct k-grams the chance that any two share a hash is about 3 in
10,000, and a completion's k-gram meets a wrong count with a chance near 10^-7.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinystories.data import stories as story_io
from tinystories.data.shards import is_dataset, open_dataset
from tinystories.errors import UserError
from tinystories.io import atomic_save, atomic_write_json, sha256_file

ORDERS = (2, 3, 4, 5)
"""k of the k-gram frequencies (measure 3)."""
CLOSEST_ORDERS = (2, 3)
"""k of the nearest-story precision (measure 4); these orders get posting lists."""
INDEX_FORMAT = 1


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
            w, per_text = word_keys(chunk)
            parts.append(w)
            lens.append(per_text)
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
                df, occ, pieces = _posting_parts(wkeys, starts, keys, k)
                if n == len(todo) - 1:
                    del wkeys
                postings[k] = _place(keys, df, pieces)
                del df, pieces
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
        return lookup(keys, hashes, np.asarray(occ, dtype=np.int64))

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
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"lengths": self.lengths}
        for k, (keys, occ) in self.counts.items():
            arrays[f"counts{k}_keys"], arrays[f"counts{k}_n"] = keys, occ
        for k, p in self.postings.items():
            for name in ("keys", "offsets", "docs", "tf"):
                arrays[f"post{k}_{name}"] = getattr(p, name)
        for name, a in arrays.items():
            atomic_save(folder / f"{name}.npy", functools.partial(_save_npy, a=a))
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


def lookup(keys: np.ndarray, q: np.ndarray, values: np.ndarray) -> np.ndarray:
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
    data = [os.fspath(d) for d in data]
    if not data:
        raise UserError("no training corpus: give --data (story files or a dataset folder)")
    if max_stories < 0:
        raise UserError(f"--max-stories must be >= 0, got {max_stories}")
    if len(data) == 1 and is_dataset(data[0]):
        ds = open_dataset(data[0])
        ds.split(split, nonempty=True)

        def read() -> Iterator[str]:
            return ds.stories(split)

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
