"""Probe items: schema, ground truth checked from the text, and balance against shallow rules."""

from __future__ import annotations

import json
import re

import pytest

from tinystories.synth import world as W
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.probes import make_probes, mentions, write_probes
from tinystories.synth.procedural import story_record


@pytest.fixture(scope="module")
def probes():
    return make_probes(1000, seed=4)


def _kind(p):
    return p["id"].rsplit("-", 1)[1]


def test_schema_and_determinism(probes):
    assert len(probes) == 1000
    assert make_probes(10, seed=4) == probes[:10]
    assert make_probes(10, seed=5) != probes[:10]
    for p in probes:
        assert set(p) == {"id", "category", "prompt", "answer", "wrong", "accept", "source"}
        assert p["category"] in ("fact", "reasoning", "context") and p["source"] == "procedural"
        assert p["answer"].startswith(" ") and p["accept"] == [p["answer"].strip()]
        assert len(p["wrong"]) == 1 and p["wrong"][0] != p["answer"]
        # matched length: one word each
        assert len(p["answer"].split()) == len(p["wrong"][0].split()) == 1
        assert not p["prompt"].endswith(" ")
    assert len({p["id"] for p in probes}) == len(probes)
    cats = {c: sum(p["category"] == c for p in probes) for c in ("fact", "reasoning", "context")}
    assert cats == {"fact": 200, "reasoning": 400, "context": 400}


def _check_context(p):
    """The context states the answer and contradicts the wrong option (surface rules per kind)."""
    ctx, ans, wrong = p["prompt"], p["answer"].strip(), p["wrong"][0].strip()
    kind = _kind(p)
    if kind == "possession":
        who = re.search(r"Later, (\w+) wanted", ctx).group(1)
        assert re.search(rf"\b{who} had an? \w+ {ans}\b", ctx)
        other = re.search(rf"\b(\w+) had an? \w+ {wrong}\b", ctx).group(1)
        assert other != who
    elif kind == "names":
        k = re.search(r"The (\w+)'s name was$", ctx).group(1)
        assert re.search(rf"\ban? {k} named {ans}\b", ctx)
        k2 = re.search(rf"\ban? (\w+) named {wrong}\b", ctx).group(1)
        assert k2 != k
    elif kind == "elimination":
        assert re.search(rf"wanted an? ({ans}|{wrong}) or an? ({ans}|{wrong})\.", ctx)
        assert f"could not have the {wrong}." in ctx or f"could not have the {wrong}," in ctx
        assert f"could not have the {ans}" not in ctx
    elif kind == "cause":
        if "broke" in ctx.split(".")[-1] or "break" in ctx.split(".")[-1]:
            fragile = ans if "did not break" not in ctx else wrong
            sturdy = wrong if fragile == ans else ans
            assert fragile in W.FRAGILE and sturdy in W.STURDY
            assert re.search(rf"\b{ans}\b", ctx)
        else:
            thing = re.search(r"gave (.+) to$", ctx).group(1)
            state = next(s for s, (need, _) in W.NEEDS.items() if need == thing)
            assert re.search(rf"\b{ans} was {state}\b", ctx)
            other = re.search(rf"\b{wrong} was (\w+)\b", ctx).group(1)
            assert other != state and W.NEEDS[other][0] != thing
    else:
        raise AssertionError(kind)


def test_answers_are_stated_and_wrong_options_contradicted(probes):
    for p in probes:
        if p["category"] == "fact":
            continue
        assert re.search(rf"\b{re.escape(p['answer'].strip())}\b", p["prompt"]), p
        _check_context(p)


def test_fact_probes_match_what_the_corpus_states(probes):
    lex = load_lexicon()
    corpus = " ".join(story_record(0, i, lex)["story"] for i in range(1000))
    stated = {}
    for thing, color in re.findall(r"The (\w+) was (\w+)\.", corpus):
        if thing in W.COLOR_FACTS:
            stated.setdefault(thing, set()).add(color)
    assert len(stated) >= 10
    for thing, colors in stated.items():
        assert colors == {W.COLOR_FACTS[thing]}, (thing, colors)
    for p in probes:
        if p["category"] != "fact":
            continue
        thing = re.search(r"The (\w+) was$", p["prompt"]).group(1)
        assert W.COLOR_FACTS[thing] == p["answer"].strip() != p["wrong"][0].strip()


def _rule_score(probes, rule):
    score = 0.0
    for p in probes:
        a, w = p["answer"].strip(), p["wrong"][0].strip()
        sa, sw = rule(p["prompt"], a), rule(p["prompt"], w)
        score += 1.0 if sa > sw else 0.5 if sa == sw else 0.0
    return score / len(probes)


def test_shallow_rules_are_at_chance(probes):
    def frequency(ctx, opt):
        return len(mentions(ctx, opt))

    def last(ctx, opt):
        m = mentions(ctx, opt)
        return m[-1] if m else -1

    def first(ctx, opt):
        m = mentions(ctx, opt)
        return -m[0] if m else -(10**9)

    for rule in (frequency, last, first):
        assert abs(_rule_score(probes, rule) - 0.5) < 0.05, rule.__name__
    # Context-free preferences (any fixed ranking of the options) get exactly half.
    assert _rule_score(probes, lambda ctx, opt: len(opt)) == 0.5
    assert _rule_score(probes, lambda ctx, opt: hash(opt) % 1000) == 0.5


def test_answer_is_as_often_first_as_last_and_more_as_less_frequent(probes):
    told = [p for p in probes if p["category"] != "fact"]
    last_count = sum(
        mentions(p["prompt"], p["answer"].strip())[-1] > max(mentions(p["prompt"], p["wrong"][0].strip()))
        for p in told
    )
    more = sum(
        len(mentions(p["prompt"], p["answer"].strip())) > len(mentions(p["prompt"], p["wrong"][0].strip()))
        for p in told
    )
    assert abs(last_count / len(told) - 0.5) < 0.05
    assert abs(more / len(told) - 0.5) < 0.05


def test_write_probes(tmp_path):
    path = tmp_path / "probes.jsonl"
    assert write_probes(path, 501, seed=2) == 502
    lines = path.read_text().splitlines()
    assert [json.loads(x) for x in lines] == make_probes(502, seed=2)
