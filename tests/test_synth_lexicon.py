"""The shipped lexicon, its validation, lookups and the deterministic sampling of item i."""

from __future__ import annotations

import collections

import pytest

from tinystories.errors import UserError
from tinystories.synth.lexicon import (
    FEATURES,
    from_word_lists,
    item_rng,
    load_lexicon,
    parse_rows,
    sample_item,
)
from tinystories.synth.prompts import story_prompt

HEADER = "word\tpos\tforms\tclass"


def test_shipped_lexicon_sizes_and_forms():
    lex = load_lexicon()
    for pos in ("verb", "noun", "adjective"):
        assert 400 <= len(lex.entries[pos]) <= 700, pos
    assert lex.entry("decorate", "verb").forms == ("decorates", "decorated", "decorating")
    assert lex.entry("mouse", "noun").forms == ("mice",)
    assert lex.entry("mouse", "noun").cls == "animal"
    assert lex.entry("run", "verb").forms == ("runs", "ran", "running")
    assert lex.entry("big", "adjective").forms == ("bigger", "biggest")
    assert lex.entry("beautiful", "adjective").forms == ()
    assert lex.entry("red", "adjective").cls == "color"


def test_lookups():
    lex = load_lexicon()
    assert lex.forms_of("mouse", "noun") == {"mouse", "mice"}
    assert {"ran", "running"} <= lex.forms_of("run")
    assert lex.pos_of("Mice,") == {"noun"}
    assert lex.pos_of("decorated") == {"verb"}
    assert lex.pos_of("happier") == {"adjective"}
    assert "verb" in lex.pos_of("kicks")
    assert lex.pos_of("the") == set()


def test_duplicate_is_caught():
    rows = [HEADER, "run\tverb\truns,ran,running\tintransitive", "run\tverb\truns,ran,running\tintransitive"]
    with pytest.raises(UserError, match=r"x.tsv:3: duplicate verb 'run'"):
        parse_rows(rows, source="x.tsv")


@pytest.mark.parametrize(
    "row, message",
    [
        ("jump\tverb\tjumps,jumped\tmotion", "needs 3 forms"),
        ("cat\tnoun\t\tanimal", "needs its plural"),
        ("cat\tthing\tcats\tanimal", "unknown part of speech"),
        ("cat\tnoun\tcats", "expected 4 tab-separated columns"),
        ("red\tadjective\tredder\tcolor", "comparative,superlative"),
        ("ice cream\tnoun\tice creams\tfood", "bad word"),
        ("cat\tnoun\tcats\t", "has no class"),
    ],
)
def test_bad_rows_are_caught(row, message):
    with pytest.raises(UserError, match=message):
        parse_rows([HEADER, row], source="x.tsv")


def test_header_required():
    with pytest.raises(UserError, match="header"):
        parse_rows(["cat\tnoun\tcats\tanimal"])


def test_user_word_lists(tmp_path):
    (tmp_path / "v.txt").write_text("jump\ncarry\nbake\n")
    (tmp_path / "n.txt").write_text("box\npuppy\ncat\n")
    (tmp_path / "a.txt").write_text("red\n")
    lex = from_word_lists(tmp_path / "v.txt", tmp_path / "n.txt", tmp_path / "a.txt")
    assert lex.entry("carry", "verb").forms == ("carries", "carried", "carrying")
    assert lex.entry("bake", "verb").forms == ("bakes", "baked", "baking")
    assert lex.entry("box", "noun").forms == ("boxes",)
    assert lex.entry("puppy", "noun").forms == ("puppies",)
    with pytest.raises(UserError, match="not found"):
        from_word_lists(tmp_path / "nope.txt", tmp_path / "n.txt", tmp_path / "a.txt")


def test_sampling_is_deterministic_and_spread():
    assert sample_item(3, 17) == sample_item(3, 17)
    assert item_rng(3, 17).random() == item_rng(3, 17).random()
    items = [sample_item(0, i) for i in range(2000)]
    assert len({tuple(w) for w, _ in items}) == 2000
    lex = load_lexicon()
    for words, feats in items[:200]:
        assert lex.get(words[0], "verb") and lex.get(words[1], "noun") and lex.get(words[2], "adjective")
        assert set(feats) <= set(FEATURES)
    counts = collections.Counter(f for _, feats in items for f in feats)
    for f in FEATURES:  # each feature about 40% of the time
        assert 0.3 < counts[f] / len(items) < 0.5
    assert any(not feats for _, feats in items)


def test_paper_prompt_exactly():
    expected = (
        "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year old child would "
        'likely understand. The story should use the verb "decorate", the noun "thunder" and the adjective '
        '"ancient". The story should have the following features: the story should contain at least one '
        "dialogue, the story has a bad ending. Remember to only use simple words!"
    )
    assert story_prompt(["decorate", "thunder", "ancient"], ["Dialogue", "BadEnding"]) == expected
    plain = story_prompt(["hang", "foot", "cute"], [])
    assert "features" not in plain and plain.endswith('adjective "cute". Remember to only use simple words!')
    with pytest.raises(UserError, match="unknown story feature"):
        story_prompt(["a", "b", "c"], ["Funny"])
    assert story_prompt(["a", "b", "c"], [], template="{noun}-{verb}-{adjective}{features}") == "b-a-c"
