"""`tinystories synth stats` and `synth dedup`: what a corpus holds, what it cost, what the paper's scale would cost.

Reads a job folder (`stories_*.jsonl`, `rejects_*.jsonl`) or one JSONL file of
story records. Token counts come from the API's `usage` in each record; a
corpus without usage (the procedural engine) gets estimates from its word
counts, and says so.
"""

from __future__ import annotations

import collections
import json
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.errors import UserError
from tinystories.io import atomic_open
from tinystories.llm.prices import PRICES, cost_usd, parse_price, price_of
from tinystories.synth.checks import missing_words, near_duplicates, story_words, words_of
from tinystories.synth.lexicon import FEATURES, POS, load_lexicon

PAPER_STORIES = 2_119_719  # TinyStories V1 training set
_SEP = "<|endoftext|>"


@dataclass
class StatsConfig:
    data: str = "data/mystories"
    """A synth job folder (stories_*.jsonl and rejects_*.jsonl) or one JSONL file of story records."""
    estimate: bool = False
    """Also estimate the cost of a corpus of --target stories from the measured tokens per story."""
    target: int = PAPER_STORIES
    """Stories in the estimated corpus (default: the paper's 2.1M)."""
    models: str = "gpt-4o-mini,gpt-4.1-nano,gpt-3.5-turbo,gpt-4o"
    """Comma-separated models whose prices the estimate uses (from the built-in table)."""
    price: str = ""
    """IN,OUT USD per 1M tokens for this corpus's own model (default: the table, by the records' source)."""
    lexicon: str = ""
    """Lexicon TSV for coverage and word checks (default: the shipped one)."""
    top: int = 10
    """How many of the most common nouns to list."""
    dup_threshold: float = 0.8
    """Estimated Jaccard similarity of word 5-shingles above which a story counts as a near-duplicate."""


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    # Read-only: a torn last line (a job still running or killed) is skipped, never cut.
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


def read_corpus(data: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(stories, rejected attempts) of a job folder or one JSONL file, stories in index order."""
    p = Path(data)
    if p.is_dir():
        shards = sorted(p.glob("stories_*.jsonl"))
        if not shards:
            raise UserError(f"{p} holds no stories_*.jsonl (not a synth job folder)")
        stories = [r for s in shards for r in _read_jsonl(s)]
        rejects = [r for s in sorted(p.glob("rejects_*.jsonl")) for r in _read_jsonl(s)]
    elif p.is_file():
        stories, rejects = list(_read_jsonl(p)), []
    else:
        raise UserError(f"--data {p}: no such folder or file")
    for n, r in enumerate(stories):
        if "story" not in r:
            raise UserError(f"{p}: record {n} has no 'story' field")
        r.setdefault("index", n)
    stories.sort(key=lambda r: r["index"])
    return stories, rejects


def _tokens(r: dict[str, Any]) -> tuple[int, int, bool]:
    """(prompt, completion) tokens of a record, and whether they were measured (else estimated from words)."""
    u = r.get("usage") or {}
    if u.get("completion_tokens"):
        return int(u.get("prompt_tokens", 0)), int(u["completion_tokens"]), True
    # ~4/3 tokens per English word with GPT-style BPE
    return len(r.get("prompt", "").split()) * 4 // 3, len(r["story"].split()) * 4 // 3, False


def stats(cfg: StatsConfig) -> dict[str, Any]:
    """Corpus statistics (and with --estimate, the cost at --target stories for several models' prices)."""
    stories, rejects = read_corpus(cfg.data)
    if not stories:
        if not rejects:
            raise UserError(f"{cfg.data} holds no stories yet")
        # Only rejected attempts so far: say what they cost and why they failed.
        paid = [_tokens(r) for r in rejects]
        return {
            "stories": 0,
            "rejected_attempts": len(rejects),
            "reject_reasons": dict(collections.Counter(r.get("reject", "?").split(":")[0] for r in rejects)),
            "acceptance_rate": 0.0,
            "tokens_per_attempt": {
                "prompt": round(sum(p for p, _, _ in paid) / len(paid), 1),
                "completion": round(sum(c for _, c, _ in paid) / len(paid), 1),
            },
            "cost_so_far_usd": round(sum(r.get("cost_usd", 0.0) for r in rejects), 6),
        }
    lex = load_lexicon(cfg.lexicon or None)
    n = len(stories)

    noun_of: dict[str, str] = {}
    for e in lex.entries["noun"]:
        for form in (e.word, *e.forms):
            noun_of.setdefault(form.lower(), e.word)
    nouns: collections.Counter[str] = collections.Counter()
    seen: set[str] = set()
    lengths = []
    for r in stories:
        toks = words_of(r["story"])
        lengths.append(len(toks))
        seen.update(toks)
        nouns.update(noun_of[t] for t in toks if t in noun_of)
    coverage = {}
    for pos in POS:
        entries = lex.entries[pos]
        used = sum(1 for e in entries if {f.lower() for f in (e.word, *e.forms)} & seen)
        coverage[pos] = round(used / max(1, len(entries)), 4)

    features = collections.Counter(f for r in stories for f in r.get("features", []))
    attempts = [*stories, *rejects]
    with_words = [r for r in attempts if len(r.get("words", [])) == 3]
    included = sum(1 for r in with_words if not missing_words(story_words(r["story"]), r["words"], lex))
    dups = near_duplicates((r["story"] for r in stories), threshold=cfg.dup_threshold)

    paid = [_tokens(r) for r in attempts]
    measured = all(m for _, _, m in paid)
    prompt_total = sum(p for p, _, _ in paid)
    completion_total = sum(c for _, c, _ in paid)
    sources = collections.Counter(r.get("source", "") for r in stories)
    cost = sum(r.get("cost_usd", 0.0) for r in attempts)
    if cfg.price:
        cost = cost_usd(parse_price(cfg.price), prompt_total, completion_total)
    elif not cost:
        model = sources.most_common(1)[0][0]
        cost = cost_usd(price_of(model), prompt_total, completion_total)

    out: dict[str, Any] = {
        "stories": n,
        "rejected_attempts": len(rejects),
        "reject_reasons": dict(collections.Counter(r.get("reject", "?").split(":")[0] for r in rejects)),
        "acceptance_rate": round(n / len(attempts), 4),
        "sources": dict(sources),
        "words_per_story": {
            "mean": round(statistics.fmean(lengths), 1),
            "median": statistics.median(lengths),
            "min": min(lengths),
            "max": max(lengths),
        },
        "lexicon_coverage": coverage,
        "most_common_nouns": nouns.most_common(cfg.top),
        "feature_frequencies": {
            f: round(features[f] / n, 4) for f in (*FEATURES, *sorted(set(features) - set(FEATURES)))
        },
        "word_inclusion_rate": round(included / len(with_words), 4) if with_words else None,
        "duplicate_rate": round(len(dups) / n, 4),
        "tokens_per_story": {
            "prompt": round(prompt_total / n, 1),
            "completion": round(completion_total / n, 1),
            "measured": measured,
            "note": "paid tokens (rejected attempts included) per accepted story"
            if measured
            else "estimated from word counts (the records carry no usage)",
        },
        "cost_so_far_usd": round(cost, 6),
    }
    if cfg.estimate:
        models = [m.strip() for m in cfg.models.split(",") if m.strip()]
        unknown = [m for m in models if price_of(m) is None]
        if unknown:
            raise UserError(f"no price for {unknown}; known: {', '.join(PRICES)}")
        per = (prompt_total / n, completion_total / n)
        out["estimate"] = {
            "stories": cfg.target,
            "prompt_tokens_per_story": round(per[0], 1),
            "completion_tokens_per_story": round(per[1], 1),
            "total_tokens": round(cfg.target * (per[0] + per[1])),
            "usd_by_model": {
                m: round(cost_usd(price_of(m), cfg.target * per[0], cfg.target * per[1]), 2) for m in models
            },
        }
    return out


@dataclass
class DedupConfig:
    data: str = "data/mystories"
    """A synth job folder or one JSONL file of story records."""
    out: str = "data/mystories-dedup"
    """Folder for the kept stories (stories_0000.jsonl, stories.txt) and the dropped ones (duplicates.jsonl)."""
    threshold: float = 0.8
    """Estimated Jaccard similarity of word 5-shingles at or above which a later story is dropped."""


def dedup(cfg: DedupConfig) -> dict[str, Any]:
    """Drop near-duplicates (the first of each group is kept), as a pass over the whole corpus."""
    stories, _ = read_corpus(cfg.data)
    out = Path(cfg.out)
    if out.resolve() == Path(cfg.data).resolve():
        raise UserError("--out must differ from --data (the corpus is never changed in place)")
    pairs = near_duplicates((r["story"] for r in stories), threshold=cfg.threshold)
    drop = {j: (i, sim) for i, j, sim in pairs}
    with (
        atomic_open(out / "stories_0000.jsonl", "w", encoding="utf-8") as fj,
        atomic_open(out / "stories.txt", "w", encoding="utf-8") as ft,
        atomic_open(out / "duplicates.jsonl", "w", encoding="utf-8") as fd,
    ):
        for j, r in enumerate(stories):
            if j in drop:
                i, sim = drop[j]
                fd.write(
                    json.dumps({"index": r["index"], "duplicate_of": stories[i]["index"], "similarity": sim})
                    + "\n"
                )
                continue
            fj.write(json.dumps(r, ensure_ascii=False) + "\n")
            ft.write(r["story"] + "\n" + _SEP + "\n")
    return {"stories": len(stories), "kept": len(stories) - len(drop), "dropped": len(drop), "out": str(out)}
