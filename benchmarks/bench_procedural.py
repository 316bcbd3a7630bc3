"""The procedural story engine: speed, corpus diversity, and how hard its probes are for shallow scorers.

Speed is stories per second on one core (one process, records built in memory).
Diversity on up to 100,000 stories (or as many as fit in --budget seconds):
exact duplicates, distinct plot skeletons and the most common one's share, the
most common first sentence with names and the item's three words masked
(target < 10%), and distinct word 4-grams per 1,000 stories against the same
count on the first 201 real TinyStories validation stories (target: at least
half). Probes: a unigram and a bigram model fit on the procedural corpus, and
the rules "most frequent entity" and "last-mentioned entity", should all score
within 5 points of chance (50%). Coherence: `synth/coherence.py` over the first
--coherence stories (target: no violation). Side by side with the 201 real
stories (the engine's first 201): words per sentence, dialogue share (sentences
with a quote), distinct 1-4-grams, the most common openings (first four words),
character names per story and the protagonist kept, and the per-story loss of
llama2.c's stories260K (trained on real TinyStories; $TINYSTORIES_TESTDATA/llama2c)
on each set: a fluency reading by a model of the real stories. Writes
benchmarks/results/procedural.json and prints markdown tables.

    .venv/bin/python benchmarks/bench_procedural.py [--n 100000] [--budget 120] [--probes 2000] [--coherence 10000]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import math
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from tinystories.data.instruct import sentences
from tinystories.io import atomic_write_json
from tinystories.synth import world as W
from tinystories.synth.coherence import check_coherence, name_consistency
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.probes import make_probes, mentions
from tinystories.synth.procedural import core_plot, story_record

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "procedural.json"
TESTDATA = Path(os.environ.get("TINYSTORIES_TESTDATA", ROOT.parent / "shared" / "data"))
REAL = TESTDATA / "tinystories/TinyStories-valid.first201.txt"
STORIES260K = TESTDATA / "llama2c/stories260K.bin"
TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[^\sa-z]")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def distinct_4grams(stories: list[str]) -> int:
    grams: set[tuple[str, ...]] = set()
    for s in stories:
        t = tokens(s)
        grams.update(zip(t, t[1:], t[2:], t[3:], strict=False))
    return len(grams)


def distinct_ngrams(stories: list[str], n: int) -> int:
    grams: set[tuple[str, ...]] = set()
    for s in stories:
        t = tokens(s)
        grams.update(zip(*(t[k:] for k in range(n)), strict=False))
    return len(grams)


def text_stats(stories: list[str]) -> dict[str, Any]:
    """The surface of a set of stories: sentence length, dialogue, n-grams, openings, names."""
    sents = [x for s in stories for x in sentences(s)]
    words = [len(x.split()) for x in sents]
    openings = collections.Counter(" ".join(s.split()[:4]) for s in stories)
    names = name_consistency(stories, W.GIRL_NAMES + W.BOY_NAMES)
    k = len(stories)
    return {
        "stories": k,
        "words_per_story": round(sum(len(s.split()) for s in stories) / k, 1),
        "words_per_sentence": round(sum(words) / len(words), 2),
        "sentences_per_story": round(len(sents) / k, 1),
        "dialogue_share": round(sum('"' in x for x in sents) / len(sents), 3),
        "distinct_ngrams_per_1000_stories": {n: round(distinct_ngrams(stories, n) * 1000 / k) for n in (1, 2, 3, 4)},
        "top_openings": [[o, c] for o, c in openings.most_common(5)],
        "distinct_openings": len(openings),
        "median_distinct_names": names["median_distinct_names"],
        "protagonist_kept_share": round(names["protagonist_kept_share"], 3),
    }


def stories260k_loss(sets: dict[str, list[str]]) -> dict[str, Any] | None:
    """Per-story loss and bits per byte of llama2.c's stories260K on each set of stories."""
    import tempfile

    from tinystories.convert.command import ConvertConfig, convert
    from tinystories.eval.loss import LossConfig, evaluate_loss

    if not STORIES260K.is_file():
        return None
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "stories260K"
        convert(ConvertConfig(source=str(STORIES260K), out=str(run), tokenizer=str(STORIES260K.parent / "tok512.bin")))
        for name, stories in sets.items():
            path = Path(tmp) / f"{name}.txt"
            path.write_text("".join(s + "\n<|endoftext|>\n" for s in stories), encoding="utf-8")
            r = evaluate_loss(LossConfig(run=str(run), data=(str(path),), write=False))
            out[name] = {"loss": round(r["per_story"]["loss"], 4), "bits_per_byte": round(r["per_story"]["bits_per_byte"], 4)}
    return out


def masked_first_sentence(rec: dict[str, Any], lex) -> str:
    first = re.split(r"(?<=[.!?])\s", rec["story"], maxsplit=1)[0]
    for c in rec["annotations"]["characters"]:
        first = re.sub(rf"\b{re.escape(c['name'])}\b", "<NAME>", first)
    for word, pos in zip(rec["words"], ("verb", "noun", "adjective"), strict=True):
        for f in lex.forms_of(word, pos):
            first = re.sub(rf"\b{re.escape(f)}\b", "<WORD>", first, flags=re.IGNORECASE)
    return first


class NGram:
    """Add-one smoothed unigram or bigram word model."""

    def __init__(self, corpus: list[str], order: int):
        self.order = order
        self.uni: collections.Counter[str] = collections.Counter()
        self.bi: collections.Counter[tuple[str, str]] = collections.Counter()
        for s in corpus:
            t = tokens(s)
            self.uni.update(t)
            if order == 2:
                self.bi.update(itertools.pairwise(t))
        self.total = sum(self.uni.values())
        self.vocab = len(self.uni) + 1

    def logprob(self, context: str, continuation: str) -> float:
        prev = tokens(context)[-1:]
        lp = 0.0
        for w in tokens(continuation):
            if self.order == 1 or not prev:
                lp += math.log((self.uni[w] + 1) / (self.total + self.vocab))
            else:
                lp += math.log((self.bi[(prev[0], w)] + 1) / (self.uni[prev[0]] + self.vocab))
            prev = [w]
        return lp


def score(probes: list[dict[str, Any]], rule) -> float:
    """Accuracy of a scorer rule(prompt, option) -> number; ties count half."""
    total = 0.0
    for p in probes:
        a = rule(p["prompt"], p["answer"])
        w = max(rule(p["prompt"], x) for x in p["wrong"])
        total += 1.0 if a > w else 0.5 if a == w else 0.0
    return total / len(probes)


def most_frequent(prompt: str, option: str) -> float:
    return len(mentions(prompt, option.strip()))


def last_mentioned(prompt: str, option: str) -> float:
    m = mentions(prompt, option.strip())
    return m[-1] if m else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="stories to generate at most")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds to spend generating at most")
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--coherence", type=int, default=10_000, help="stories to run the coherence checker on")
    args = ap.parse_args()
    lex = load_lexicon()

    # Speed: a warm-up, then a timed run of 2,000 stories.
    for i in range(200):
        story_record(args.seed, i, lex)
    t0 = time.perf_counter()
    for i in range(2000):
        story_record(args.seed, 10_000_000 + i, lex)
    rate = 2000 / (time.perf_counter() - t0)

    recs = []
    t0 = time.perf_counter()
    while len(recs) < args.n and time.perf_counter() - t0 < args.budget:
        recs.append(story_record(args.seed, len(recs), lex))
    stories = [r["story"] for r in recs]
    n = len(recs)

    skeletons = collections.Counter(tuple(r["annotations"]["skeleton"]) for r in recs)
    plots = collections.Counter(core_plot(r["annotations"]["skeleton"]) for r in recs)
    firsts = collections.Counter(masked_first_sentence(r, lex) for r in recs)
    top_first, top_first_count = firsts.most_common(1)[0]

    real = []
    if REAL.is_file():
        real = [s.strip() for s in REAL.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    k = len(real) or 201
    proc_4g = distinct_4grams(stories[:k])
    proc_4g_1000 = distinct_4grams(stories[:1000])
    real_4g = distinct_4grams(real) if real else None

    checked = recs[: args.coherence]
    violations = collections.Counter(v.rule for r in checked for v in check_coherence(r["story"], r["annotations"]))
    side = {"procedural": text_stats(stories[:k]), "real": text_stats(real) if real else None}
    fluency = stories260k_loss({"procedural": stories[:k], **({"real": real} if real else {})})

    probes = make_probes(args.probes, seed=args.seed + 1)
    fit = stories[: min(n, 50_000)]
    uni, bi = NGram(fit, 1), NGram(fit, 2)
    acc = {
        "unigram": score(probes, uni.logprob),
        "bigram": score(probes, bi.logprob),
        "most_frequent_entity": score(probes, most_frequent),
        "last_mentioned_entity": score(probes, last_mentioned),
    }
    by_cat = {
        cat: {
            name: score([p for p in probes if p["category"] == cat], fn)
            for name, fn in (
                ("unigram", uni.logprob),
                ("bigram", bi.logprob),
                ("most_frequent_entity", most_frequent),
                ("last_mentioned_entity", last_mentioned),
            )
        }
        for cat in ("context", "reasoning", "fact")
    }

    result = {
        "stories_per_s_one_core": round(rate, 1),
        "stories": n,
        "generation_seconds": round(time.perf_counter() - t0, 1),
        "exact_duplicates": n - len(set(stories)),
        "distinct_skeletons": len(skeletons),
        "top_skeleton_share": round(skeletons.most_common(1)[0][1] / n, 4),
        "distinct_core_plots": len(plots),
        "top_core_plot_share": round(plots.most_common(1)[0][1] / n, 4),
        "top_core_plot": list(plots.most_common(1)[0][0]),
        "top_first_sentence": top_first,
        "top_first_sentence_share": round(top_first_count / n, 4),
        "mean_words_per_story": round(sum(len(s.split()) for s in stories) / n, 1),
        "distinct_4grams_per_1000_stories": {
            "procedural": round(proc_4g * 1000 / k, 1),
            "real_valid_first201": round(real_4g * 1000 / k, 1) if real_4g else None,
            "ratio": round(proc_4g / real_4g, 3) if real_4g else None,
            "procedural_on_1000_stories": proc_4g_1000,
        },
        "coherence": {"stories": len(checked), "violations": sum(violations.values()), "by_rule": dict(violations)},
        "side_by_side": side,
        "stories260K_per_story": fluency,
        "probes": len(probes),
        "probe_accuracy": {k_: round(v, 4) for k_, v in acc.items()},
        "probe_accuracy_by_category": {
            c: {k_: round(v, 4) for k_, v in d.items()} for c, d in by_cat.items()
        },
        "chance": 0.5,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
    }
    atomic_write_json(RESULTS, result)

    d4 = result["distinct_4grams_per_1000_stories"]
    rows = [
        ("stories/s (one core)", f"{rate:,.0f}", ">= 1,000"),
        ("stories generated", f"{n:,}", "100,000 or 2 min"),
        ("exact duplicates", str(result["exact_duplicates"]), "0"),
        ("distinct plot skeletons", f"{len(skeletons):,}", "many"),
        ("most common skeleton", f"{result['top_skeleton_share']:.2%}", "< 3%"),
        ("distinct core plots (no decorative events)", f"{len(plots):,}", "many"),
        ("most common core plot", f"{result['top_core_plot_share']:.2%}", "< 3%"),
        ("most common first sentence (masked)", f"{result['top_first_sentence_share']:.2%}", "< 10%"),
        ("distinct 4-grams / 1,000 stories (procedural)", f"{d4['procedural']:,.0f}", ""),
        ("distinct 4-grams / 1,000 stories (real, 201)", f"{d4['real_valid_first201'] or 0:,.0f}", ""),
        ("procedural / real", f"{d4['ratio']}", ">= 0.5"),
    ] + [(f"probes: {name}", f"{v:.1%}", "50% +- 5") for name, v in acc.items()]
    print("| measure | value | target |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(f"\nmost common first sentence: {top_first!r}")
    print(f"coherence violations in {len(checked):,} stories: {sum(violations.values())} {dict(violations)}")
    pr, re_ = side["procedural"], side["real"] or {}
    fl = fluency or {}
    rows2 = [
        ("stories260K loss per token (per story)", fl.get("procedural", {}).get("loss"), fl.get("real", {}).get("loss")),
        ("stories260K bits per byte", fl.get("procedural", {}).get("bits_per_byte"), fl.get("real", {}).get("bits_per_byte")),
        ("words per story", pr["words_per_story"], re_.get("words_per_story")),
        ("words per sentence", pr["words_per_sentence"], re_.get("words_per_sentence")),
        ("sentences per story", pr["sentences_per_story"], re_.get("sentences_per_story")),
        ("dialogue share (sentences with a quote)", pr["dialogue_share"], re_.get("dialogue_share")),
        *[(f"distinct {n}-grams / 1,000 stories", pr["distinct_ngrams_per_1000_stories"][n],
           (re_.get("distinct_ngrams_per_1000_stories") or {}).get(n)) for n in (1, 2, 3, 4)],
        ("distinct openings (first 4 words)", pr["distinct_openings"], re_.get("distinct_openings")),
        ("median distinct names per story", pr["median_distinct_names"], re_.get("median_distinct_names")),
        ("protagonist kept to the end", pr["protagonist_kept_share"], re_.get("protagonist_kept_share")),
    ]
    print(f"\n| side by side ({k} stories each) | procedural | real |\n|---|---|---|")
    for name, a, b in rows2:
        print(f"| {name} | {a} | {b} |")
    for name in ("procedural", "real"):
        if side[name]:
            print(f"top openings, {name}: {side[name]['top_openings']}")


if __name__ == "__main__":
    main()
