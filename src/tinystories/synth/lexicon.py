"""The child vocabulary: verbs, nouns and adjectives with inflections and classes.

`words/lexicon.tsv` has one word per row: `word  pos  forms  class`, e.g.
`decorate  verb  decorates,decorated,decorating  transitive`. Forms are the
3rd-person singular, past and -ing form for verbs, the plural for nouns and the
comparative/superlative for adjectives (empty where only "more X" is natural).

The same table serves the story prompts (sampling item i's three words), the
check that a story used its words in some form (`forms_of`), the procedural
engine (classes decide where a word can go) and part-of-speech labels for
interpretability (`pos_of`).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tinystories.errors import UserError

POS = ("verb", "noun", "adjective")
DEFAULT_PATH = Path(__file__).parent / "words" / "lexicon.tsv"

# The paper's story features and the phrase each one adds to the prompt.
FEATURES: dict[str, str] = {
    "Dialogue": "the story should contain at least one dialogue",
    "BadEnding": "the story has a bad ending",
    "MoralValue": "the story has a moral value",
    "Twist": "something unexpected happens / there is a plot twist",
    "Foreshadowing": "the narrative uses foreshadowing or setup and payoff",
    "Conflict": "the story has some form of conflict in it",
}
# The paper does not say how the subset was drawn; each feature independently
# with this probability gives every subset size, the empty one included (~5%).
FEATURE_P = 0.4


@dataclass(frozen=True)
class Entry:
    """One lexicon row."""

    word: str
    pos: str
    forms: tuple[str, ...]
    cls: str


@dataclass
class Lexicon:
    """Entries by part of speech, with lookups by word form."""

    entries: dict[str, list[Entry]]
    _index: dict[tuple[str, str], Entry] = field(default_factory=dict, repr=False)
    _form_pos: dict[str, set[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for pos, items in self.entries.items():
            for e in items:
                self._index[(pos, e.word)] = e
                for form in (e.word, *e.forms):
                    self._form_pos.setdefault(form.lower(), set()).add(pos)

    def words(self, pos: str) -> list[str]:
        """All base words of one part of speech, in file order."""
        return [e.word for e in self.entries.get(pos, [])]

    def entry(self, word: str, pos: str) -> Entry:
        """The row of `word` as `pos`; KeyError if absent."""
        return self._index[(pos, word)]

    def get(self, word: str, pos: str) -> Entry | None:
        return self._index.get((pos, word))

    def by_class(self, pos: str, cls: str) -> list[Entry]:
        return [e for e in self.entries.get(pos, []) if e.cls == cls]

    def forms_of(self, word: str, pos: str | None = None) -> set[str]:
        """The word and its inflections (for one POS, or all POS it has); unknown words map to themselves."""
        out = {word}
        for p in (pos,) if pos else POS:
            e = self._index.get((p, word))
            if e:
                out.update(e.forms)
        return out

    def pos_of(self, token: str) -> set[str]:
        """Parts of speech a token (any inflected form, any case, surrounding punctuation ignored) can have."""
        t = token.strip().strip(".,!?;:\"'()").lower()
        return set(self._form_pos.get(t, ()))

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())


def _fail(where: str, msg: str) -> UserError:
    return UserError(f"{where}: {msg}")


def parse_rows(lines: Iterable[str], source: str = "<lexicon>") -> Lexicon:
    """Parse and validate TSV lines (a header line `word pos forms class` first)."""
    entries: dict[str, list[Entry]] = {p: [] for p in POS}
    seen: set[tuple[str, str]] = set()
    lines = iter(lines)
    header = next(lines, "").rstrip("\n").split("\t")
    if [h.strip() for h in header] != ["word", "pos", "forms", "class"]:
        raise _fail(f"{source}:1", "expected the header line 'word<TAB>pos<TAB>forms<TAB>class'")
    for n, line in enumerate(lines, start=2):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        where = f"{source}:{n}"
        if len(cols) != 4:
            raise _fail(where, f"expected 4 tab-separated columns, got {len(cols)}: {line!r}")
        word, pos, forms_s, cls = (c.strip() for c in cols)
        if not word or " " in word:
            raise _fail(where, f"bad word {word!r} (one word, no spaces)")
        if pos not in POS:
            raise _fail(where, f"unknown part of speech {pos!r} (use verb, noun or adjective)")
        forms = tuple(f.strip() for f in forms_s.split(",") if f.strip())
        if pos == "verb" and len(forms) != 3:
            raise _fail(where, f"verb {word!r} needs 3 forms (3sg,past,-ing), got {forms_s!r}")
        if pos == "noun" and len(forms) != 1:
            raise _fail(where, f"noun {word!r} needs its plural form, got {forms_s!r}")
        if pos == "adjective" and len(forms) not in (0, 2):
            raise _fail(
                where, f"adjective {word!r} needs comparative,superlative or nothing, got {forms_s!r}"
            )
        if not cls:
            raise _fail(where, f"{word!r} has no class")
        if (pos, word) in seen:
            raise _fail(where, f"duplicate {pos} {word!r}")
        seen.add((pos, word))
        entries[pos].append(Entry(word, pos, forms, cls))
    return Lexicon(entries)


def _regular_forms(word: str, pos: str) -> tuple[str, ...]:
    # Plain spelling rules for users' bare word lists; the shipped TSV has checked forms.
    vowels = "aeiou"
    if pos == "noun":
        if word.endswith(("s", "x", "z", "ch", "sh")):
            return (word + "es",)
        if word.endswith("y") and word[-2:-1] not in vowels:
            return (word[:-1] + "ies",)
        return (word + "s",)
    if pos == "verb":
        if word.endswith(("s", "x", "z", "ch", "sh")):
            s = word + "es"
        elif word.endswith("y") and word[-2:-1] not in vowels:
            s = word[:-1] + "ies"
        else:
            s = word + "s"
        if word.endswith("e"):
            return (s, word + "d", word[:-1] + "ing")
        if word.endswith("y") and word[-2:-1] not in vowels:
            return (s, word[:-1] + "ied", word + "ing")
        return (s, word + "ed", word + "ing")
    return ()


def from_word_lists(verbs: str | Path, nouns: str | Path, adjectives: str | Path) -> Lexicon:
    """A lexicon from three plain files, one word per line (regular inflections, class 'other')."""
    lines = ["word\tpos\tforms\tclass"]
    for pos, path in (("verb", verbs), ("noun", nouns), ("adjective", adjectives)):
        p = Path(path)
        if not p.is_file():
            raise UserError(f"word list not found: {p}")
        for w in p.read_text(encoding="utf-8").split("\n"):
            w = w.strip()
            if w and not w.startswith("#"):
                lines.append(f"{w}\t{pos}\t{','.join(_regular_forms(w, pos))}\tother")
    return parse_rows(lines, source=f"{verbs}, {nouns}, {adjectives}")


@functools.cache
def _load_cached(path: str) -> Lexicon:
    with open(path, encoding="utf-8") as f:
        return parse_rows(f, source=path)


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """Load and validate a lexicon TSV (the shipped one by default); cached per path."""
    p = Path(path) if path else DEFAULT_PATH
    if not p.is_file():
        raise UserError(f"lexicon not found: {p}")
    return _load_cached(str(p.resolve()))


# --- deterministic sampling of item i -----------------------------------------


def item_rng(seed: int, i: int, salt: str = "") -> random.Random:
    """A generator for item `i` of a job that depends only on (seed, i, salt).

    Uses sha256, not Python's `hash`, which is salted per process.
    """
    digest = hashlib.sha256(f"{salt}|{seed}|{i}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def sample_features(rng: random.Random) -> list[str]:
    """A random subset of the six features, in the canonical order."""
    return [f for f in FEATURES if rng.random() < FEATURE_P]


def sample_item(seed: int, i: int, lexicon: Lexicon | None = None) -> tuple[list[str], list[str]]:
    """Item i's words [verb, noun, adjective] and features, from (seed, i) alone."""
    lex = lexicon or load_lexicon()
    rng = item_rng(seed, i, "words")
    words = [rng.choice(lex.entries[pos]).word for pos in POS]
    return words, sample_features(rng)
