"""TinyStories-Instruct formatting and parsing."""

from __future__ import annotations

import collections

import pytest

from tinystories.data.instruct import FIELDS, format_instruct, parse_instruct, sentences
from tinystories.errors import UserError

STORY = (
    "Once upon a time, there was a girl named Lily. She loved to decorate her room.\n"
    '"Mommy, the thunder is so loud!" she said. Her mom hugged her. The end.'
)
KW = {
    "features": ["Dialogue", "BadEnding"],
    "words": ["decorate", "thunder", "ancient"],
    "summary": "Lily decorates her room, but thunder ruins it.",
}


def test_sentences():
    assert sentences(STORY) == [
        "Once upon a time, there was a girl named Lily.",
        "She loved to decorate her room.",
        '"Mommy, the thunder is so loud!" she said.',
        "Her mom hugged her.",
        "The end.",
    ]


def test_released_layout():
    text = format_instruct(
        STORY, fields=["Summary", "Features", "Random sentence", "Words"], seed=1, i=2, **KW
    )
    lines = text.split("\n")
    assert lines[0] == "Summary: Lily decorates her room, but thunder ruins it."
    assert lines[1] == "Features: Dialogue, BadEnding"
    assert lines[2].startswith("Random sentence: ")
    assert lines[3] == "Words: decorate, thunder, ancient"
    assert lines[4] == "Story: Once upon a time, there was a girl named Lily. She loved to decorate her room."


def test_round_trip_any_order():
    for i in range(300):
        text = format_instruct(STORY, seed=3, i=i, **KW)
        rec = parse_instruct(text)
        assert rec.story == STORY
        for f in rec.order:
            assert f in FIELDS
        if "Features" in rec.order:
            assert rec.features == KW["features"]
        if "Words" in rec.order:
            assert rec.words == KW["words"]
        if "Summary" in rec.order:
            assert rec.summary == KW["summary"]
        if "Random sentence" in rec.order:
            assert rec.random_sentence in sentences(STORY)[1:]
        assert format_instruct(STORY, seed=3, i=i, **KW) == text  # deterministic in (seed, i)
    orders = collections.Counter(
        tuple(parse_instruct(format_instruct(STORY, seed=0, i=i, **KW)).order) for i in range(500)
    )
    assert len(orders) > 30 and () in orders


def test_random_sentence_never_first():
    for i in range(200):
        rec = parse_instruct(format_instruct(STORY, fields=["Random sentence"], seed=0, i=i))
        assert rec.random_sentence and rec.random_sentence != sentences(STORY)[0]


def test_ood_never_words_with_summary():
    seen = set()
    for i in range(500):
        order = parse_instruct(format_instruct(STORY, seed=2, i=i, ood=True, **KW)).order
        assert not ({"Words", "Summary"} <= set(order))
        seen.update(order)
    assert seen == set(FIELDS)
    with pytest.raises(UserError, match="OOD"):
        format_instruct(STORY, fields=["Words", "Summary"], ood=True, **KW)


def test_parse_fields_after_story_and_spacing():
    rec = parse_instruct(
        "Words: call, leak, foolish\nFeatures : Dialogue\nStory: Tom ran.\nHe fell.\nSummary: Tom falls."
    )
    assert rec.words == ["call", "leak", "foolish"] and rec.features == ["Dialogue"]
    assert rec.story == "Tom ran.\nHe fell." and rec.summary == "Tom falls."
    with pytest.raises(UserError, match="Story"):
        parse_instruct("Words: a, b, c")
