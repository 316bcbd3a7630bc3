"""Stories as the model sees them, aligned with their words, sentences and parts of speech.

Interpretability speaks about words ("the head attends to banana", "the neuron
fires on adjectives") while the model sees tokens, which with a small
vocabulary are often pieces of words. A `Story` keeps both: the token ids the
model reads (`[eot] + tokens`, as datasets store a story), the character span
of every token in the decoded text, and the word each token belongs to.

Word classes come from the lexicon (verbs, nouns, adjectives, every inflected
form) plus a few closed classes written out here (pronouns, determiners,
prepositions, ...), and `name` for a capitalised word the lexicon does not
know. A word the lexicon lists under several parts of speech is resolved by
its neighbours (after a determiner it is a noun, before a noun an adjective,
after a pronoun or "to" a verb).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinystories.data.stories import iter_records
from tinystories.data.tokenizer import load_tokenizer
from tinystories.errors import UserError
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.procedural import story_record

WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
SENTENCE_END = re.compile(r"[.!?]+[\"'”’]*(?=\s|$)|\n+")

PRONOUNS = {"i", "he", "she", "it", "they", "we", "you", "me", "him", "them", "us"}
DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "his", "her", "my", "your", "their", "our",
               "its", "some", "every", "all", "no", "any", "each", "many", "much"}
PREPOSITIONS = {"in", "on", "at", "to", "with", "for", "of", "from", "up", "down", "into", "under", "over", "by",
                "about", "after", "before", "behind", "near", "around", "through", "off", "out", "inside", "outside"}
CONJUNCTIONS = {"and", "but", "or", "so", "because", "when", "if", "then", "while", "than", "as"}
AUXILIARIES = {"was", "were", "is", "are", "am", "be", "been", "being", "had", "has", "have", "did", "do", "does",
               "could", "would", "can", "will", "should", "must", "may", "might", "shall", "not", "n't"}

CLASSES = ("noun", "verb", "adjective", "name", "pronoun", "determiner", "preposition", "conjunction",
           "auxiliary", "punctuation", "other")
"""Word classes, in the order the report lists them; `punctuation` is a token outside any word."""


@dataclass
class Story:
    """One story, tokenized as the model reads it, with its words."""

    text: str
    """The story as the tokenizer decodes it (what the token spans index)."""
    ids: list[int]
    """Model input: [eot] + tokens, cut to the model's context."""
    spans: list[tuple[int, int]]
    """Character span of each position in `text`; (0, 0) for the leading end-of-text."""
    words: list[tuple[int, int]]
    """Character spans of the words of `text`."""
    word_of: list[int]
    """Per position, the index of the word it overlaps (-1: end-of-text, spaces, punctuation)."""
    annotations: dict[str, Any] | None = None
    """Procedural annotations (characters, protagonist, ...) when the story came with them."""
    source_text: str = ""
    """The text as read; annotation offsets refer to it."""
    classes: list[str] = field(default_factory=list)
    """Per word, its class (one of CLASSES)."""

    def __len__(self) -> int:
        return len(self.ids)

    def token_text(self, pos: int) -> str:
        a, b = self.spans[pos]
        return self.text[a:b] if b > a else ("<eot>" if pos == 0 else "")

    def word_text(self, pos: int) -> str:
        """The word under position `pos` (lower case), or the token's own text when it is in no word."""
        w = self.word_of[pos]
        if w < 0:
            tok = self.token_text(pos)
            # Whitespace-only tokens get a visible name ("\\n", "space") so labels can show them.
            return tok.strip() or ("space" if tok.strip(" ") == "" else repr(tok)[1:-1])
        a, b = self.words[w]
        return self.text[a:b].lower()

    def class_of(self, pos: int) -> str:
        w = self.word_of[pos]
        return "punctuation" if w < 0 else self.classes[w]

    def sentence(self, pos: int) -> tuple[str, int, int]:
        """(sentence, start, end) of the sentence that holds position `pos`, and the token's span in it."""
        a, b = self.spans[pos]
        start = 0
        for m in SENTENCE_END.finditer(self.text):
            if m.end() > a:
                end = m.end()
                break
            start = m.end()
        else:
            end = len(self.text)
        raw = self.text[start:end]
        lead = len(raw) - len(raw.lstrip())
        sent = raw.strip()
        return sent, max(0, a - start - lead), max(0, min(len(sent), b - start - lead))


def token_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of `ids` and each token's character span in it (by decoding growing prefixes).

    Decoding prefixes is tokenizer-agnostic (byte-level BPE, SentencePiece): a
    token's text is whatever the decoded prefix gained when it was added.
    """
    spans, prev = [], ""
    for k in range(1, len(ids) + 1):
        cur = tokenizer.decode(list(ids[:k]))
        common = next((n for n, (a, b) in enumerate(zip(prev, cur)) if a != b), min(len(prev), len(cur)))
        # A token that completes a multi-byte character rewrites the previous replacement char.
        spans.append((min(len(prev), common), len(cur)))
        prev = cur
    return prev, spans


def _classify(words: list[str], capital_start: list[bool], lexicon: Any, names: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Class of each word in a story, resolving lexicon ambiguity by the neighbours.

    Names: capitalised words the lexicon does not know, seen somewhere in the
    story where capitals are not explained by a sentence start (so "Lily" is a
    name in "Lily ran." too, when the story also says "... saw Lily"), plus `names`.
    """
    out: list[str] = []
    lex_pos = [lexicon.pos_of(w) for w in words]
    names = set(names) | {w for w, start, p in zip(words, capital_start, lex_pos)
                          if w[:1].isupper() and not start and not p and w.lower() not in PRONOUNS}
    for i, w in enumerate(words):
        low = w.lower()
        prev = words[i - 1].lower() if i else ""
        nxt = lex_pos[i + 1] if i + 1 < len(words) else set()
        if low in PRONOUNS:
            out.append("pronoun")
        elif low in DETERMINERS:
            out.append("determiner")
        elif low in PREPOSITIONS:
            out.append("preposition")
        elif low in CONJUNCTIONS:
            out.append("conjunction")
        elif low in AUXILIARIES or low.endswith("n't"):
            out.append("auxiliary")
        elif w in names:
            out.append("name")
        elif not lex_pos[i]:
            out.append("other")
        elif len(lex_pos[i]) == 1:
            out.append(next(iter(lex_pos[i])))
        elif "adjective" in lex_pos[i] and "noun" in nxt:
            out.append("adjective")
        elif prev in DETERMINERS and "noun" in lex_pos[i]:
            out.append("noun")
        elif (prev in PRONOUNS or prev == "to") and "verb" in lex_pos[i]:
            out.append("verb")
        else:
            out.append(next(p for p in ("noun", "verb", "adjective") if p in lex_pos[i]))
    return out


def prepare(records: Iterable[dict[str, Any]], tokenizer: Any, max_len: int, lexicon: Any = None) -> list[Story]:
    """Tokenize story records ({"story", optional "annotations"}) into aligned `Story`s of at most max_len positions."""

    lexicon = lexicon or load_lexicon()
    out = []
    for rec in records:
        source = rec["story"]
        tokens = tokenizer.encode(source)[: max_len - 1]
        if not tokens:
            continue
        text, spans = token_spans(tokenizer, tokens)
        ids = [tokenizer.eot_id, *tokens]
        spans = [(0, 0), *spans]
        words = [(m.start(), m.end()) for m in WORD_RE.finditer(text)]
        word_of = _word_index(spans, words)
        starts = _sentence_starts(text, words)
        ann = rec.get("annotations") or {}
        known = {c["name"] for c in ann.get("characters", []) if isinstance(c, dict) and c.get("name")}
        classes = _classify([text[a:b] for a, b in words], starts, lexicon, known)
        out.append(Story(text=text, ids=ids, spans=spans, words=words, word_of=word_of,
                         annotations=rec.get("annotations"), source_text=source, classes=classes))
    return out


def _word_index(spans: list[tuple[int, int]], words: list[tuple[int, int]]) -> list[int]:
    out, w = [], 0
    for a, b in spans:
        while w < len(words) and words[w][1] <= a:
            w += 1
        # The token belongs to the word it overlaps (leading spaces and punctuation excluded).
        out.append(w if w < len(words) and b > a and words[w][0] < b and words[w][1] > a else -1)
    return out


def _sentence_starts(text: str, words: list[tuple[int, int]]) -> list[bool]:
    ends = {m.end() for m in SENTENCE_END.finditer(text)}
    out, prev_end = [], 0
    for a, b in words:
        gap = text[prev_end:a]
        # A word starts a sentence at the beginning, after end punctuation, or after an opening quote.
        out.append(prev_end == 0 or any(prev_end <= e <= a for e in ends) or bool(re.search(r"[\"“:]\s*$", gap)))
        prev_end = b
    return out


def mention_positions(story: Story, name: str, source_offset: int) -> list[int]:
    """Positions of the tokens of the mention of `name` that starts at `source_offset` of the source text."""
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    # The k-th occurrence in the source text is the k-th in the decoded text (they differ in spaces at most).
    k = sum(1 for m in pattern.finditer(story.source_text) if m.start() < source_offset)
    found = list(pattern.finditer(story.text))
    if k >= len(found):
        return []
    a, b = found[k].span()
    return [p for p, (s, e) in enumerate(story.spans) if p > 0 and e > s and s < b and e > a]


def procedural_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n annotated stories from the offline procedural engine (deterministic in seed)."""

    lex = load_lexicon()
    return [story_record(seed, i, lex) for i in range(n)]


def load_records(data: Sequence[str], run_config: Any, n: int, seed: int = 0) -> tuple[list[dict[str, Any]], str]:
    """Up to n story records and a description of where they came from.

    `data`: story files (any format `tinystories.data.stories` reads) or one
    dataset folder; empty = the run's dataset (its val split, else train), or,
    for a run without one (an imported checkpoint), procedural stories.
    """

    data = [os.fspath(d) for d in data]
    if not data:
        path = (run_config.data or {}).get("path") if run_config is not None else None
        if path and (Path(path) / "meta.json").is_file():
            data = [str(path)]
        else:
            return procedural_records(n, seed), f"{n} procedural stories (seed {seed})"
    if len(data) == 1 and (Path(data[0]) / "meta.json").is_file():
        return _dataset_records(Path(data[0]), n), f"dataset {data[0]}"
    records = []
    for rec in iter_records(data):
        records.append(rec)
        if len(records) >= n:
            break
    if not records:
        raise UserError(f"no stories found in {', '.join(data)}")
    return records, ", ".join(data)


def _dataset_records(folder: Path, n: int) -> list[dict[str, Any]]:
    """Stories of a dataset folder's val split (train if it has none), decoded back to text."""



    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    split = "val" if meta.get("splits", {}).get("val", {}).get("documents") else "train"
    index = np.load(folder / f"{split}_index.npy")
    shards = sorted(folder.glob(f"{split}_*.bin"))
    stream = np.concatenate([np.fromfile(s, dtype=meta.get("dtype", "uint16")) for s in shards])
    tok = load_tokenizer(str(folder))
    out = []
    for i in range(min(n, len(index) - 1)):
        doc = stream[index[i] : index[i + 1]].tolist()
        out.append({"story": tok.decode([t for t in doc if t != tok.eot_id])})
    return out
