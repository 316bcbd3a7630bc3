"""Story checks (words in any inflected form, length, refusals, English) and near-duplicate detection."""

from __future__ import annotations

import random

import pytest

from tinystories.synth.checks import CheckConfig, check_story, near_duplicates
from tinystories.synth.lexicon import load_lexicon

LEX = load_lexicon()
BODY = (
    "Once upon a time, there was a little girl named Lily. She lived in a small house with her mom and dad. "
    "One day, she went to the park with her friend Tom. They played on the swings and ran in the grass. "
    "Then it was time to go home, and they said goodbye. Lily was happy and went to bed with a big smile."
)


def test_inflected_forms_count():
    lex_words = ["decorate", "mouse", "big"]
    story = BODY + " Lily decorated the tree, and two mice watched from a bigger box."
    assert check_story(story, lex_words, LEX) is None
    story2 = BODY + " Lily decorates the tree and a mouse sat by the big box."
    assert check_story(story2, lex_words, LEX) is None
    reason = check_story(BODY + " A mouse sat by the big box.", lex_words, LEX)
    assert reason == "missing words: decorate"
    assert (
        check_story(
            BODY + " A mouse sat by the big box.", lex_words, LEX, cfg=CheckConfig(require_words=False)
        )
        is None
    )
    # a form only counts as a whole word: "decor" or "mousetrap" are not the words
    assert check_story(BODY + " The decor had a mousetrap that was big.", lex_words, LEX) == (
        "missing words: decorate, mouse"
    )


def test_possessives_use_the_word():
    # "the horse's name" uses "horse"; "the mice's hole" uses "mice", a form of "mouse" (BODY has ran, big)
    assert check_story(BODY + " The horse's name was Buddy.", ["run", "horse", "big"], LEX) is None
    assert check_story(BODY + " The mice's hole was small.", ["run", "mouse", "big"], LEX) is None
    assert check_story(BODY + " The stable was small.", ["run", "horse", "big"], LEX) == "missing words: horse"


def test_hyphenated_words():
    words = ["run", "dog", "grown-up"]
    assert check_story(BODY + " A grown-up dog saw them run.", words, LEX) is None
    assert check_story(BODY + " A grown up dog saw them run.", words, LEX) is None
    assert check_story(BODY + " The dog saw them run and grew up.", words, LEX) == "missing words: grown-up"


def test_refusals_meta_length_language_truncation():
    words = ["go", "park", "happy"]
    assert check_story(BODY, words, LEX) is None
    assert check_story("Sure! Here is a story:\n\n" + BODY, words, LEX) == "refusal or meta-answer"
    assert check_story("Here's a short story for you. " + BODY, words, LEX) == "refusal or meta-answer"
    assert check_story("I'm sorry, but I can't write that.", words, LEX) == "refusal or meta-answer"
    assert check_story("As an AI language model, " + BODY, words, LEX) == "refusal or meta-answer"
    assert check_story("Lily went to the park. She was happy.", words, LEX).startswith("too short")
    assert check_story(BODY * 20, words, LEX, cfg=CheckConfig(max_words=500)).startswith("too long")
    assert check_story(BODY, words, LEX, finish_reason="length").startswith("truncated")
    german = (
        "Es war einmal ein kleines Mädchen namens Lily. Sie ging jeden Tag in den Park und spielte mit "
        "ihrem Hund. Eines Tages fand sie einen großen Ball unter einem Baum und lief glücklich nach Hause. "
        "Ihre Mutter lächelte und gab ihr einen warmen Kuchen, und sie aßen zusammen am Tisch. go park happy"
    )
    assert check_story(german, words, LEX) == "not English"


def _story(rng: random.Random) -> str:
    nouns = [e.word for e in LEX.entries["noun"]]
    verbs = [e.word for e in LEX.entries["verb"]]
    return " ".join(
        f"the {rng.choice(nouns)} wanted to {rng.choice(verbs)} with a {rng.choice(nouns)}."
        for _ in range(30)
    )


def test_near_duplicates():
    rng = random.Random(0)
    stories = [_story(rng) for _ in range(200)]
    words = stories[5].split()
    words[40] = "banana"  # one word changed: still a near-duplicate
    stories.append(" ".join(words))
    stories.append(stories[17])  # an exact copy
    found = near_duplicates(stories)
    pairs = {(i, j) for i, j, _ in found}
    assert pairs == {(5, 200), (17, 201)}
    sims = {(i, j): s for i, j, s in found}
    assert sims[(17, 201)] == 1.0 and 0.8 <= sims[(5, 200)] < 1.0
    assert near_duplicates(stories, threshold=0.999) == [(17, 201, 1.0)]


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_unrelated_stories_are_not_duplicates(threshold):
    rng = random.Random(1)
    assert near_duplicates([_story(rng) for _ in range(100)], threshold=threshold) == []
