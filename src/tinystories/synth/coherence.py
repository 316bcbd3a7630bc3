"""A coherence checker for stories: reads the text (and, where given, the engine's annotations).

It is deliberately independent of the story planner (`procedural.py`): it knows
nothing of templates or plot choices, only what a careful reader checks:

- `order`: a problem comes before the help, and the help before the outcome
  (needs the per-sentence `sentence_events` of the annotations);
- `idea`: "X had an idea" is followed by what the idea was, not by a failure;
- `early_closure`: nobody makes up, celebrates or learns a lesson while the
  problem is still open;
- `object_state`: a broken, lost or stuck thing is not used as if it were
  fine until the text says it was fixed, found or brought down;
- `introduction`: a character is introduced ("a girl named Lily", "Lily was a
  little girl", "The dog's name was Rex") at its first mention, and only once;
- `stranger`: no name from the known name list appears that is not one of the
  story's characters;
- `pronoun`: "a boy named X" fits X's gender, and a narrative pronoun has a
  character of its gender in the sentence, the one before, or the protagonist;
- `protagonist`: the protagonist is the first character named, and is named again.

`check_coherence(story, annotations)` returns the violations (empty for a
coherent story). `names_in(text, names)` lists the known names a text uses, in
order of first appearance (the name-consistency measure of model samples).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tinystories.data.instruct import sentences
from tinystories.synth.world import BOY_NAMES, GIRL_NAMES

RULES = ("order", "idea", "early_closure", "object_state", "introduction", "stranger", "pronoun", "protagonist")

FEMALE = {"she", "her", "herself", "hers"}
MALE = {"he", "him", "his", "himself"}
PARENT_WORDS = {
    "mom": "female", "mommy": "female", "mother": "female", "grandma": "female", "grandmother": "female",
    "dad": "male", "daddy": "male", "father": "male", "grandpa": "male", "grandfather": "male",
}
PROBLEM = ("obstacle", "obstacle:payoff")
OUTCOME = ("resolve", "twist:solves", "fail")
CLOSING_EVENTS = ("reconcile", "end:happy", "end:sad", "moral", "snack", "activity")
CLOSING_TEXT = re.compile(
    r"\b(said sorry|played together|agreed to share|take turns|best day|happy heart|was very happy|"
    r"learned that|learned to|the lesson)\b",
    re.IGNORECASE,
)
IDEA_TEXT = re.compile(r"\bhad an idea\b|\bidea popped\b|\bthought very hard\b|\band thought\b", re.IGNORECASE)
NEGATIVE = re.compile(r"\b(not|never|no|cannot|nobody)\b|n't\b", re.IGNORECASE)
RECOVERED = re.compile(
    r"\b(fixed|as good as new|clicked back|something new|found|there it was|came down|at last|finally|"
    r"pulled the [\w-]+ down|took the [\w-]+ down|get the [\w-]+ down|off the|all along|the whole time|fell out of)\b",
    re.IGNORECASE,
)
BROKEN = re.compile(r"\b(broke|broken|cracked|came off|into two pieces|crack went)\b", re.IGNORECASE)
LOST = re.compile(
    r"\b(gone|missing|not there|could not find|couldn't find|never found|far away|forever|flown away|its nest|"
    r"fallen out|slipped out|stuck|up high|carried it up|there was no)\b",
    re.IGNORECASE,
)
# Sentences that speak of a thing's trouble without using it.
ABOUT_TROUBLE = re.compile(
    r"\b(miss|fix|glue|tape|look|looked|search|searched|seen|reach|find|where|tried|wish|get)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Violation:
    """One thing a reader would object to."""

    rule: str
    """Which rule (one of RULES)."""
    sentence: int
    """Index of the offending sentence (as `tinystories.data.instruct.sentences` splits the story)."""
    message: str
    """What is wrong, for a person."""


def _narration(s: str) -> str:
    """The sentence without its quoted speech."""
    return re.sub(r'"[^"]*"?', " ", s)


def _named(name: str, s: str, parent: bool = False) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", s, re.IGNORECASE if parent else 0) is not None


def _is_intro(name: str, s: str) -> bool:
    n = re.escape(name)
    return re.search(
        rf"\b(named|called) {n}\b|\bname was {n}\b|(^|, |\band ){n} was (a|an)\b|\b{n}, (a|an)\b|"
        rf"^{n} and \w+, (a|an)\b",
        s,
    ) is not None


def names_in(text: str, names: Iterable[str]) -> list[str]:
    """Known names the text uses as names (capitalised, whole word), in order of first appearance."""
    known = set(names)
    seen: dict[str, int] = {}
    for m in re.finditer(r"\b[A-Z][a-z]+\b", text):
        if m.group() in known and m.group() not in seen:
            seen[m.group()] = m.start()
    return sorted(seen, key=seen.__getitem__)


def check_coherence(
    story: str, annotations: dict[str, Any], known_names: Sequence[str] | None = None
) -> list[Violation]:
    """The coherence violations of one story; `known_names` defaults to the engine world's name lists."""
    if known_names is None:
        known_names = GIRL_NAMES + BOY_NAMES
    sents = sentences(story)
    out: list[Violation] = []
    labels = annotations.get("sentence_events")
    if labels is not None and len(labels) != len(sents):
        out.append(Violation("order", 0, f"{len(labels)} sentence events for {len(sents)} sentences"))
        labels = None
    if labels is not None:
        out += _plot_order(sents, labels)
    out += _ideas(sents, labels)
    out += _object_state(sents, annotations)
    out += _characters(sents, annotations, known_names)
    return sorted(out, key=lambda v: (v.sentence, v.rule))


def _first(labels: Sequence[str], names: tuple[str, ...], prefix: str = "") -> int | None:
    for i, label in enumerate(labels):
        if label in names or (prefix and label.startswith(prefix)):
            return i
    return None


def _plot_order(sents: list[str], labels: Sequence[str]) -> list[Violation]:
    out = []
    problem, help_, outcome = _first(labels, PROBLEM), _first(labels, (), "help:"), _first(labels, OUTCOME)
    if help_ is not None and (problem is None or problem > help_):
        out.append(Violation("order", help_, "help comes before there is any problem"))
    if outcome is not None and (help_ is None or help_ > outcome):
        out.append(Violation("order", outcome, "the problem is resolved (or fails) before any help"))
    if problem is not None and outcome is None:
        out.append(Violation("order", problem, "the problem is never resolved"))
    if "resolve" in labels and "fail" in labels:
        out.append(Violation("order", labels.index("fail"), "the problem is both solved and not"))
    if problem is not None:
        end = outcome if outcome is not None else len(sents)
        for i in range(problem + 1, end):
            if labels[i] in CLOSING_EVENTS or CLOSING_TEXT.search(sents[i]):
                out.append(Violation("early_closure", i, f"a happy or closing event while the problem is open: {sents[i]!r}"))
    return out


def _ideas(sents: list[str], labels: Sequence[str] | None) -> list[Violation]:
    out = []
    for i, s in enumerate(sents):
        is_idea = (labels is not None and labels[i] == "help:idea") or IDEA_TEXT.search(_narration(s))
        if not is_idea:
            continue
        j = i + 1
        while j < len(sents) and '"' in sents[j]:
            j += 1  # spoken lines ("I know what to do!" said Tim.) may come in between
        nxt = sents[j] if j < len(sents) else ""
        if not nxt or (labels is not None and labels[j] != "idea") or NEGATIVE.search(_narration(nxt)):
            out.append(Violation("idea", i, f"an idea not followed by what it was: next is {nxt!r}"))
    return out


def _object_state(sents: list[str], annotations: dict[str, Any]) -> list[Violation]:
    out = []
    for obj in annotations.get("objects", []):
        name = obj["name"]
        state = "fine"
        for i, s in enumerate(sents):
            # "the ball", "her red ball"; "a ball" is another one.
            if not re.search(rf"\b(the|his|her|my|their|your)( \w+)? {re.escape(name)}\b", s, re.IGNORECASE):
                continue
            if RECOVERED.search(s):
                state = "fine"
            elif BROKEN.search(s) and not re.search(rf"broken( \w+)? {re.escape(name)}", s):  # not "a broken toy"
                state = "broken"
            elif LOST.search(s):
                state = "lost"
            elif state != "fine" and not ABOUT_TROUBLE.search(s):
                out.append(Violation("object_state", i, f"the {name} is {state} but used as if it were fine: {s!r}"))
    return out


def _characters(sents: list[str], annotations: dict[str, Any], known_names: Sequence[str]) -> list[Violation]:
    out = []
    chars = annotations.get("characters", [])
    gender = {c["name"]: c["gender"] for c in chars}
    parents = {c["name"] for c in chars if c.get("role") == "parent"}
    people = [c["name"] for c in chars if c["name"] not in parents]
    hero = annotations.get("protagonist")

    # Introductions: at the first mention, and only there.
    for name in people:
        first = next((i for i, s in enumerate(sents) if _named(name, s)), None)
        if first is None:
            continue
        if not _is_intro(name, sents[first]):
            out.append(Violation("introduction", first, f"{name} acts before being introduced: {sents[first]!r}"))
        for i in range(first + 1, len(sents)):
            if re.search(rf"\b(named|called) {name}\b|\bname was {name}\b", sents[i]):
                out.append(Violation("introduction", i, f"{name} is introduced again: {sents[i]!r}"))

    # Names that belong to nobody in the story.
    story_names = set(gender)
    for i, s in enumerate(sents):
        for n in names_in(s, known_names):
            if n not in story_names:
                out.append(Violation("stranger", i, f"{n} is not a character of this story: {s!r}"))

    # "a boy named Sara", "The girl's name was Tom".
    for i, s in enumerate(sents):
        for m in re.finditer(r"\b(girl|boy)(?: (?:named|called)|'s name was|, and (?:her|his) name was) ([A-Z]\w+)", s):
            want = "female" if m.group(1) == "girl" else "male"
            if m.group(2) in gender and gender[m.group(2)] != want:
                out.append(Violation("pronoun", i, f"{m.group(2)} is called a {m.group(1)}: {s!r}"))

    # Narrative pronouns need a character of their gender in focus.
    hero_gender = gender.get(hero) if hero else None
    prev_genders: set[str] = set()
    for i, s in enumerate(sents):
        text = _narration(s)
        here = {g for n, g in gender.items() if _named(n, text, n in parents)}
        here |= {g for w, g in PARENT_WORDS.items() if re.search(rf"\b{w}\b", text, re.IGNORECASE)}
        focus = here | prev_genders | ({hero_gender} if hero_gender else set())
        words = set(re.findall(r"[a-z]+", text.lower()))
        for g, pron in (("female", FEMALE), ("male", MALE)):
            if words & pron and g not in focus:
                out.append(Violation("pronoun", i, f"a {g} pronoun with no {g} character in focus: {s!r}"))
        # A sentence that starts with a character's name: its pronouns, before anyone else is
        # named, are that character's.
        for n in people:
            if text.startswith(n + " ") and n in gender:
                prefix = text
                for o in [*gender, *PARENT_WORDS]:
                    if o != n:
                        named = re.search(rf"\b{o}\b", prefix, re.IGNORECASE)
                        if named:
                            prefix = prefix[: named.start()]
                other = MALE if gender[n] == "female" else FEMALE
                if n != hero:  # "Tim came to help her": an object pronoun may be someone else
                    other = {"he", "himself"} if gender[n] == "female" else {"she", "herself"}
                if set(re.findall(r"[a-z]+", prefix.lower())) & other:
                    out.append(Violation("pronoun", i, f"{n} gets the wrong pronoun: {s!r}"))
        prev_genders = here

    # The protagonist comes first and keeps the name.
    if hero:
        firsts = sorted(
            (next((i for i, s in enumerate(sents) if _named(n, s)), len(sents)), n) for n in people
        )
        if firsts and firsts[0][1] != hero and firsts[0][0] < len(sents):
            # Both may be introduced in one sentence: the protagonist must then be named first.
            s = sents[firsts[0][0]]
            if not (_named(hero, s) and s.index(hero) < s.index(firsts[0][1])):
                out.append(Violation("protagonist", firsts[0][0], f"{firsts[0][1]} is named before the protagonist {hero}"))
        if sum(len(re.findall(rf"\b{re.escape(hero)}\b", s)) for s in sents) < 2:
            out.append(Violation("protagonist", 0, f"the protagonist {hero} is named only once or never"))
    return out


# --- name consistency of generated (or real) stories ------------------------------------------

# Capitalised words that are not character names, even in the middle of a sentence.
NOT_NAMES = frozenset(
    ["I", "Mom", "Dad", "Mommy", "Daddy", "Mama", "Papa", "Grandma", "Grandpa", "Granny", "Mother", "Father", "Mr", "Mrs", "Miss", "Ms", "Dr", "Sir", "Santa", "God", "Christmas", "Halloween", "Easter", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "The", "A", "An", "And", "But", "Then", "So", "One", "Once", "They", "He", "She", "It", "We", "You", "His", "Her", "Their", "My", "Our", "Oh", "Yes", "No", "Hello", "Hi", "Wow", "Please", "Thank"]
)


def story_names(text: str, known: Iterable[str]) -> list[str]:
    """The character names of a story in order of first appearance.

    A name is a word of `known` (the engine's name list), or any capitalised word that also
    occurs in the middle of a sentence (so real stories' names outside the list count too).
    """
    known = set(known)
    mid = {m.group(1) for m in re.finditer(r"(?<=[a-z,] )([A-Z][a-z]+)\b", text)} - NOT_NAMES
    first: dict[str, int] = {}
    for m in re.finditer(r"\b[A-Z][a-z]+\b", text):
        w = m.group()
        if (w in known or w in mid) and w not in NOT_NAMES and w not in first:
            first[w] = m.start()
    return sorted(first, key=first.__getitem__)


def protagonist_kept(text: str, names: Sequence[str]) -> tuple[str | None, bool]:
    """(protagonist, kept): the first name of the first sentence, and whether the story keeps it.

    Kept: the name comes back in the second half of the story and no other name is used more
    often. A story whose first sentence names nobody has no protagonist (None, False).
    """
    sents = sentences(text)
    first = [n for n in names if sents and _named(n, sents[0])]
    if not first:
        return None, False
    hero = min(first, key=lambda n: sents[0].index(n))
    counts = {n: len(re.findall(rf"\b{re.escape(n)}\b", text)) for n in names}
    back = re.search(rf"\b{re.escape(hero)}\b", text[len(text) // 2 :]) is not None
    return hero, back and counts[hero] >= max(counts.values())


# Narrow forms only: "Tom told Sue a joke and Tom laughed" or "Tom saw that Sue had it, and Tom
# smiled" are right, so a name twice in a sentence is not enough.
_OBJECT_VERBS = "saw|heard|asked|told|helped|hugged|thanked|called|watched|followed|met"


def one_name_for_two(text: str, names: Sequence[str]) -> list[str]:
    """The names a story gives to two characters: a name introduced again after it was already used
    ("Tom had a best friend named Tom"), or one that stands for two people in one sentence ("Tom
    had a blue doll, and Tom had a purple teddy", "Tom saw Tom climb a tree")."""
    out = []
    for n in names:
        w = re.escape(n)
        first = re.search(rf"\b{w}\b", text)
        again = re.search(rf"\b(?:named|name was|name is) {w}\b", text[first.end():]) if first else None
        both = re.search(rf"\b{w} and {w}\b|\b{w} had [^.!?\"\n,]*, and {w} had\b", text)
        self_object = re.search(rf"\b{w} (?:{_OBJECT_VERBS}) {w}\b", text)
        if again or both or self_object:
            out.append(n)
    return out


def name_consistency(texts: Sequence[str], known: Iterable[str]) -> dict[str, Any]:
    """Distinct names per story (median), the share of stories that keep their protagonist, the
    share that name someone only once, and the share that give one name to two characters.

    The protagonist share counts the stories with a protagonist (a name in the first sentence). A
    name said only once is a character who comes from nowhere and is gone again, or a hero dropped
    after the first sentence: the distinct-name count does not see a wrong name given to a character
    the story already has, this does. Neither sees the hero's name given to a second character
    ("a cat named Jimmy" in Jimmy's story), which keeps the name count low and the protagonist
    "kept"; `one_name_for_two` does.
    """
    known = list(known)
    per: list[dict[str, Any]] = []
    for t in texts:
        names = story_names(t, known)
        hero, kept = protagonist_kept(t, names)
        once = [n for n in names if len(re.findall(rf"\b{re.escape(n)}\b", t)) == 1]
        per.append({"distinct_names": len(names), "protagonist": hero, "kept": kept, "said_once": once,
                    "one_name_for_two": one_name_for_two(t, names), "names": names})
    counts = sorted(p["distinct_names"] for p in per)
    median = 0.0
    if counts:
        mid = len(counts) // 2
        median = float(counts[mid]) if len(counts) % 2 else (counts[mid - 1] + counts[mid]) / 2
    with_hero = [p for p in per if p["protagonist"] is not None]
    return {
        "median_distinct_names": median,
        "protagonist_kept_share": sum(p["kept"] for p in with_hero) / len(with_hero) if with_hero else 0.0,
        "said_once_share": sum(bool(p["said_once"]) for p in per) / len(per) if per else 0.0,
        "one_name_for_two_share": sum(bool(p["one_name_for_two"]) for p in per) / len(per) if per else 0.0,
        "n_samples": len(per),
        "per_sample": per,
    }
