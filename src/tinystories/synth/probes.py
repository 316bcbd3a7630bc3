"""Capability probes with ground truth, built from the procedural engine's world.

Each item is a short story context that stops right before the answer; `answer`
and `wrong` are one-word continuations. Kinds (in the id): `possession` and
`names` (category context), `elimination` and `cause` (reasoning), `color`
(fact: a color the procedural corpus always states the same way).

Items come in mirrored pairs (items 2j and 2j+1): the same options with the
answer and the wrong option swapped, and prompts that end in the same word.
So any scorer that ignores the context (a unigram model, or a bigram model that
sees only the last word) gets exactly one of each pair right, and so do rules
that look only at the context ("the most frequent entity", "the last-mentioned
entity"): where the two prompts share their context the rule picks the same
option for both; where they do not (elimination), the phrasing puts the answer
last in one and the wrong option last in the other, and filler sentences make
the answer the more frequent option in exactly one of the two.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from tinystories.io import atomic_open
from tinystories.synth import world as W
from tinystories.synth.lexicon import item_rng
from tinystories.synth.world import Character, a

KINDS = ("possession", "names", "elimination", "cause", "color")
CATEGORY = {
    "possession": "context",
    "names": "context",
    "elimination": "reasoning",
    "cause": "reasoning",
    "color": "fact",
}


def _two_people(rng: random.Random, same_gender: bool) -> tuple[Character, Character]:
    g1 = rng.choice(("female", "male"))
    g2 = g1 if same_gender else rng.choice(("female", "male"))
    n1 = rng.choice(W.GIRL_NAMES if g1 == "female" else W.BOY_NAMES)
    pool = [
        n
        for n in (W.GIRL_NAMES if g2 == "female" else W.BOY_NAMES)
        if not (n.startswith(n1) or n1.startswith(n))
    ]
    n2 = rng.choice(pool)
    k1 = "girl" if g1 == "female" else "boy"
    k2 = "girl" if g2 == "female" else "boy"
    return Character(n1, k1, g1), Character(n2, k2, g2)


def mentions(text: str, word: str) -> list[int]:
    """Offsets where `word` (or its plural with -s) occurs as a whole word."""
    return [m.start() for m in re.finditer(rf"\b{re.escape(word)}s?\b", text)]


def _pair_possession(rng: random.Random) -> list[tuple[str, str, str]]:
    A, B = _two_people(rng, same_gender=True)
    o1, o2 = rng.sample(W.TOYS, 2)
    c1, c2 = rng.sample(W.COLORS, 2)
    extra = rng.choice((o1, o2))
    lines = [
        f"{A.name} and {B.name} went to the {rng.choice(W.PLACES)} to play.",
        f"{A.name} had {a(c1 + ' ' + o1)}, and {B.name} had {a(c2 + ' ' + o2)}.",
        rng.choice(
            (f"The {extra} was new.", f"Everyone liked the {extra}.", f"The {extra} was very pretty.")
        ),
    ]
    if rng.random() < 0.5:  # who is named last should not give the answer away
        lines.append(f"Then {B.name} and {A.name} sat down to rest.")
    ctx = " ".join(lines)
    q = "Later, {n} wanted to play with {p} own toy again. {n} picked up the"
    return [
        (ctx + " " + q.format(n=A.name, p=A.his), o1, o2),
        (ctx + " " + q.format(n=B.name, p=B.his), o2, o1),
    ]


def _pair_names(rng: random.Random) -> list[tuple[str, str, str]]:
    A, _ = _two_people(rng, same_gender=False)
    k1 = A.kind
    k2 = rng.choice([k for k in W.ANIMAL_KINDS if k != k1])
    n2 = rng.choice(
        [n for n in W.BOY_NAMES + W.GIRL_NAMES if not (n.startswith(A.name) or A.name.startswith(n))]
    )
    extra = rng.choice((A.name, n2))
    ctx = (
        f"Once there was {a(k1)} named {A.name} and {a(k2)} named {n2}. "
        f"They lived near the {rng.choice(W.PLACES)}. {extra} liked to sing. One day, they played all morning."
    )
    q = "The {k} smiled. The {k}'s name was"
    return [(ctx + " " + q.format(k=k1), A.name, n2), (ctx + " " + q.format(k=k2), n2, A.name)]


def _elimination_one(A: Character, wish: str, x: str, y: str, answer_last: bool, parent: str) -> str:
    # The child wants x or y; y is ruled out; answer x. `wish` is the same for both items of a pair,
    # so which option is named first does not follow the answer.
    ctx = wish
    if answer_last:
        ctx += f" {parent} said {A.he} could not have the {y}, but the {x} was fine."
    else:
        ctx += f" {parent} said {A.he} could not have the {y}."
    return ctx


def _pair_elimination(rng: random.Random) -> list[tuple[str, str, str]]:
    A, _ = _two_people(rng, same_gender=True)
    x, y = rng.sample(W.WISHES, 2)
    parent = rng.choice(("Mom", "Dad"))
    wish = f"{A.name} wanted {a(x)} or {a(y)}."
    first_answer_last = rng.random() < 0.5
    first_answer_more = rng.random() < 0.5
    out = []
    for k, (ans, wrong) in enumerate(((x, y), (y, x))):
        ctx = _elimination_one(
            A, wish, ans, wrong, first_answer_last if k == 0 else not first_answer_last, parent
        )
        want_more = first_answer_more if k == 0 else not first_answer_more
        # Filler at the start changes counts but not which option is mentioned last.
        fillers: list[str] = []
        while True:
            text = " ".join([*fillers, ctx])
            ca, cw = len(mentions(text, ans)), len(mentions(text, wrong))
            if (ca > cw) == want_more and ca != cw:
                break
            o = ans if want_more else wrong
            options = [
                f"{A.name} had seen {a(o)} at the store.",
                f"{A.name} once drew {a(o)}.",
                f"{A.name}'s friend had {a(o)}.",
                f"{A.name} had read a book about {a(o)}.",
            ]
            fillers.append(rng.choice([t for t in options if t not in fillers]))
        out.append((" ".join([*fillers, ctx]) + f" So {A.name} got the", ans, wrong))
    return out


def _pair_cause(rng: random.Random) -> list[tuple[str, str, str]]:
    if rng.random() < 0.5:
        A, B = _two_people(rng, same_gender=rng.random() < 0.5)
        s1, s2 = rng.sample(list(W.NEEDS), 2)
        parent = rng.choice(("Mom", "Dad"))
        ctx = f"{A.name} and {B.name} came home from the {rng.choice(W.PLACES)}. {A.name} was {s1}, and {B.name} was {s2}."
        # One more mention of one of them, so "the most frequent name" is never a tie.
        X = rng.choice((A, B))
        ctx += " " + rng.choice(
            ("{x} closed the door.", "{x} sat down first.", "{x} took off {p} shoes.")
        ).format(x=X.name, p=X.his)
        q = f"{parent} gave {{thing}} to"
        return [
            (ctx + " " + q.format(thing=W.NEEDS[s1][0]), A.name, B.name),
            (ctx + " " + q.format(thing=W.NEEDS[s2][0]), B.name, A.name),
        ]
    A, _ = _two_people(rng, True)
    f, s = rng.choice(W.FRAGILE), rng.choice(W.STURDY)
    first, second = (f, s) if rng.random() < 0.5 else (s, f)
    extra = rng.choice((f, s))
    ctx = (
        f"{A.name} was carrying {a(first)} and {a(second)}. The {extra} was new. "
        f"Then {A.he} tripped, and both fell on the hard floor."
    )
    return [(ctx + " The one that broke was the", f, s), (ctx + " The one that did not break was the", s, f)]


def _pair_color(rng: random.Random) -> list[tuple[str, str, str]]:
    while True:
        t1, t2 = rng.sample(list(W.COLOR_FACTS), 2)
        if W.COLOR_FACTS[t1] != W.COLOR_FACTS[t2]:
            break
    A, _ = _two_people(rng, True)
    c1, c2 = W.COLOR_FACTS[t1], W.COLOR_FACTS[t2]
    ctx = f"{A.name} went outside with {A.his} {rng.choice(('mom', 'dad', 'friend'))}. {A.He} looked all around."
    return [(f"{ctx} The {t1} was", c1, c2), (f"{ctx} The {t2} was", c2, c1)]


PAIRS = {
    "possession": _pair_possession,
    "names": _pair_names,
    "elimination": _pair_elimination,
    "cause": _pair_cause,
    "color": _pair_color,
}


def probe_item(seed: int, i: int) -> dict[str, Any]:
    """Probe i of a set (items 2j and 2j+1 are a mirrored pair)."""
    j, m = divmod(i, 2)
    kind = KINDS[j % len(KINDS)]
    prompt, ans, wrong = PAIRS[kind](item_rng(seed, j, "probe"))[m]
    return {
        "id": f"proc-{seed}-{i:06d}-{kind}",
        "category": CATEGORY[kind],
        "prompt": prompt,
        "answer": " " + ans,
        "wrong": [" " + wrong],
        "accept": [ans],
        "source": "procedural",
    }


def make_probes(n: int = 500, seed: int = 0) -> list[dict[str, Any]]:
    """`n` probe items (rounded up to whole pairs) for this seed."""
    n += n % 2
    return [probe_item(seed, i) for i in range(n)]


def write_probes(path: str | Path, n: int = 1000, seed: int = 0) -> int:
    """Write `make_probes(n, seed)` as JSONL (atomically); returns the number of items."""
    items = make_probes(n, seed)
    with atomic_open(path, "w", encoding="utf-8") as f:
        for p in items:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return len(items)
