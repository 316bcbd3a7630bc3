"""The coherence checker catches each kind of violation, and the engine's stories have none."""

from __future__ import annotations

import pytest

from tinystories.data.instruct import sentences
from tinystories.synth.coherence import (
    RULES,
    check_coherence,
    name_consistency,
    names_in,
    one_name_for_two,
    story_names,
)
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.procedural import story_record
from tinystories.synth.world import BOY_NAMES, GIRL_NAMES

EMMA = [
    {"name": "Emma", "kind": "girl", "gender": "female", "role": "protagonist"},
    {"name": "Max", "kind": "dog", "gender": "male", "role": "friend"},
    {"name": "Mom", "kind": "mom", "gender": "female", "role": "parent"},
]


def _story(lines: list[tuple[str, str]], chars=EMMA, obj: str = "clock") -> tuple[str, dict]:
    """A story from (sentence, event) pairs, annotated as the engine annotates."""
    text = " ".join(s for s, _ in lines)
    ann = {
        "characters": chars,
        "protagonist": chars[0]["name"],
        "objects": [{"name": obj, "facts": {}}],
        "sentence_events": [e for _, e in lines],
    }
    assert len(sentences(text)) == len(lines), text
    return text, ann


GOOD = [
    ("Once upon a time, there was a little girl named Emma.", "intro"),
    ("Emma had a good friend, a dog named Max.", "friend"),
    ("One day, Emma played with her clock in the park.", "goal:reach"),
    ("Oh no, the clock was stuck high up on the tall pole!", "obstacle"),
    ("Then Emma had an idea.", "help:idea"),
    ("She went to get a ladder to reach the clock.", "idea"),
    ("With the ladder, the clock came down at last.", "resolve"),
    ("Max wagged his tail, and Emma was very happy.", "end:happy"),
]


def _rules(lines, **kw) -> set[str]:
    return {v.rule for v in check_coherence(*_story(lines, **kw))}


def test_a_coherent_story_passes():
    assert check_coherence(*_story(GOOD)) == []


def test_the_quoted_idea_story_is_caught():
    # "Oh no, the clock was stuck high up on the tall pole! Then Emma had an idea. They could not
    # reach it, and the clock stayed up there forever. The girl waved. The girl's name was Emma."
    lines = [*GOOD[:5], ("They could not reach it, and the clock stayed up there forever.", "fail"), ("The girl waved.", "recap"), ("The girl's name was Emma.", "recap")]
    found = check_coherence(*_story(lines))
    assert {(v.rule, v.sentence) for v in found} == {("idea", 4), ("introduction", 7)}


def test_the_quoted_sorry_story_is_caught():
    # "They said sorry to each other and played together. Tim came to help her. Then a bird flew
    # down and pushed the pie off the high fence!"
    chars = [
        {"name": "Lily", "kind": "girl", "gender": "female", "role": "protagonist"},
        {"name": "Tim", "kind": "boy", "gender": "male", "role": "friend"},
    ]
    lines = [
        ("Once upon a time, there was a girl named Lily.", "intro"),
        ("Lily had a good friend, a boy named Tim.", "friend"),
        ("Tim wanted the pie for himself, and Lily wanted it too.", "conflict:obj"),
        ("One day, Lily took her pie to the park.", "goal:reach"),
        ("The pie got stuck on the high fence.", "obstacle"),
        ("They said sorry to each other and played together.", "reconcile"),
        ("Tim came to help her.", "help:friend"),
        ("Then a bird flew down and pushed the pie off the high fence!", "twist:solves"),
    ]
    found = check_coherence(*_story(lines, chars=chars, obj="pie"))
    assert [(v.rule, v.sentence) for v in found] == [("early_closure", 5)]


@pytest.mark.parametrize(
    ("rule", "edit"),
    [
        # help before the problem
        ("order", lambda L: [*L[:2], ("Max came to help her.", "help:friend"), *L[2:4], *L[6:]]),
        # the outcome before any help
        ("order", lambda L: [*L[:4], L[6], L[4], L[5], L[7]]),
        # the problem is never resolved
        ("order", lambda L: L[:6] + L[7:]),
        # a lesson while the clock is still stuck
        ("early_closure", lambda L: [*L[:4], ("Emma learned to be careful.", "moral"), *L[4:]]),
        # the idea never said what it was
        ("idea", lambda L: [*L[:5], ("Then a bird pushed the clock off the pole!", "twist:solves"), *L[7:]]),
        # the stuck clock used as if it were in her hands
        ("object_state", lambda L: [*L[:4], ("Emma wound her clock and smiled.", "play"), *L[4:]]),
        # Max acts before he is introduced
        ("introduction", lambda L: [L[0], ("Max ran to the park.", "play"), ("Max was a dog who lived close by.", "friend"), *L[2:]]),
        # Max introduced a second time
        ("introduction", lambda L: [*L, ("The dog's name was Max.", "recap")]),
        # a name that belongs to nobody in the story
        ("stranger", lambda L: [*L[:7], ("Jenny wagged her tail, and Emma was very happy.", "end:happy")]),
        # "a boy named Emma"
        ("pronoun", lambda L: [("Once upon a time, there was a little boy named Emma.", "intro"), *L[1:]]),
        # "he" with no male character in focus
        ("pronoun", lambda L: [*L[:5], ("He went to get a ladder to reach the clock.", "idea"), *L[6:]]),
        # Emma's own sentence gives her "his"
        ("pronoun", lambda L: [*L[:2], ("Emma played with his clock in the park.", "goal:reach"), *L[3:]]),
        # the friend is named before the protagonist
        ("protagonist", lambda L: [("Max was a dog who lived close by.", "friend"), L[0], *L[2:]]),
    ],
)
def test_each_kind_of_violation_is_caught(rule, edit):
    assert rule in RULES
    assert rule in _rules(edit(list(GOOD)))


def test_the_quoted_model_sample_has_strangers_and_a_wrong_kind():
    text = (
        "Once upon a time, in a little town, there lived a little boy named Sara. Kate had a good friend, a boy "
        'named Ruby. Billy loved to tug things. One day, Jane was playing with his cup. "I love my cup so much," '
        "said Kevin."
    )
    chars = [{"name": "Sara", "kind": "boy", "gender": "female", "role": "protagonist"}]
    known = [*GIRL_NAMES, *BOY_NAMES, "Kate", "Ruby", "Kevin"]  # the engine that wrote it knew these too
    rules = [v.rule for v in check_coherence(text, {"characters": chars, "protagonist": "Sara"}, known)]
    assert rules.count("stranger") == 5 and "pronoun" in rules
    assert names_in(text, known) == ["Sara", "Kate", "Ruby", "Billy", "Jane", "Kevin"]


def test_engine_stories_are_coherent():
    lex = load_lexicon()
    for i in range(1500):
        r = story_record(3, i, lex)
        assert check_coherence(r["story"], r["annotations"]) == [], r["story"]


@pytest.mark.slow
def test_ten_thousand_engine_stories_are_coherent():
    lex = load_lexicon()
    bad = [i for i in range(10_000) if check_coherence(*(lambda r: (r["story"], r["annotations"]))(story_record(0, i, lex)))]
    assert bad == []


def test_name_consistency_counts_names_and_the_kept_protagonist():
    known = [*GIRL_NAMES, *BOY_NAMES, "Kate", "Kevin"]
    kept = "Once upon a time, there was a girl named Lily. Lily met Tom. Tom waved. Lily smiled at Tom, and Lily ran home."
    lost = "There was a boy named Sara. Kate had a friend. Billy loved to tug things. Jane was playing with Kevin."
    nobody = "Once upon a time, there was a dog. The dog met a cat called Whiskers. Whiskers and the dog played."
    r = name_consistency([kept, lost, nobody], known)
    assert [p["distinct_names"] for p in r["per_sample"]] == [2, 5, 1]  # "Whiskers": a name mid-sentence
    assert [(p["protagonist"], p["kept"]) for p in r["per_sample"]] == [("Lily", True), ("Sara", False), (None, False)]
    assert r["median_distinct_names"] == 2.0 and r["protagonist_kept_share"] == 0.5 and r["n_samples"] == 3
    # Names said once: none in the first (Lily 3 times, Tom 3), all five in the second, none in the third.
    assert [p["said_once"] for p in r["per_sample"]] == [[], ["Sara", "Kate", "Billy", "Jane", "Kevin"], []]
    assert r["said_once_share"] == 1 / 3
    assert story_names(lost, known) == ["Sara", "Kate", "Billy", "Jane", "Kevin"]
    assert [p["one_name_for_two"] for p in r["per_sample"]] == [[], [], []]


def test_one_name_for_two_characters():
    known = [*GIRL_NAMES, *BOY_NAMES]
    # The demo model's mistakes: the hero's name given to the friend, to the toys line's second
    # owner, to both sides of "and", and as the object of the hero's own verb.
    again = "Once upon a time, there was a boy named Jimmy. Jimmy had a friend, a cat named Jimmy. They played."
    toys = "One day, Tom went out. Tom had a friend named Sue. Tom had a blue doll, and Tom had a purple teddy."
    pair = "Lily had a friend named Ben. Lily and Lily made a plan to go to the park. Ben came too."
    verb = "One day, Tom saw Tom climb a tree and wanted to try too. Tom had a friend named Sue. Sue waved."
    # Right uses of a name twice in one sentence, and a story with two characters.
    fine = ("Tom told Sue a joke and Tom laughed. Tom saw that Sue had been holding on the whole time, and Tom "
            "smiled. Sue's doll was red, and Sue loved it. Tom had a ball, and Sue had a kite.")
    r = name_consistency([again, toys, pair, verb, fine], known)
    found = [p["one_name_for_two"] for p in r["per_sample"]]
    assert found == [["Jimmy"], ["Tom"], ["Lily"], ["Tom"], []]
    assert r["one_name_for_two_share"] == 4 / 5
    assert one_name_for_two(again, ["Jimmy"]) == ["Jimmy"] and one_name_for_two(fine, ["Tom", "Sue"]) == []


def test_engine_stories_never_give_one_name_to_two_characters():
    lex = load_lexicon()
    stories = [story_record(5, i, lex)["story"] for i in range(1000)]
    assert name_consistency(stories, [*GIRL_NAMES, *BOY_NAMES])["one_name_for_two_share"] == 0.0
