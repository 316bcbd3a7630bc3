"""`tinystories eval decontam`: eval items whose word n-grams occur in a training corpus.

An eval item a model has read in training tests memory, not skill. This check
takes every item of the eval sets (by default every file in the package's
`eval/sets/`: the probe sets, the story beginnings, the instruction sets) and
reports those whose word 6-grams occur in a corpus.

How: the items' n-grams go into a hash set (a few thousand entries); the corpus
is streamed story by story, each story's words are looked up n-gram by n-gram,
and only hits are counted. Nothing of the corpus is kept, so memory stays flat
and a few hundred MB of text take about a minute.

Words are lower-cased runs of letters and digits (with an inner apostrophe:
"don't"); punctuation and line breaks are ignored. An item's text is what a
model would have to have read: for a probe item its prompt followed by its
answer, for other JSONL records their text fields (not ids or labels), for YAML
and JSON files each string, for text files each paragraph.

An n-gram like "once upon a time there was" occurs in most stories: each hit
carries how often it occurs, and an item counts as contaminated only when at
least `--threshold` of its n-grams occur (default half); every item with any hit
is listed.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.config import check
from tinystories.data.stories import corpus_stories, json_lines
from tinystories.errors import UserError
from tinystories.io import atomic_write_json, sha256_file
from tinystories.rundir import read_config

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
SKIP_KEYS = {"id", "category", "source", "wrong", "accept", "kind", "features", "words"}
"""JSONL fields that label an item rather than give its text (lists of single words make no n-grams anyway)."""
SETS_DIR = Path(__file__).with_name("sets")


@dataclass
class DecontamConfig:
    """`tinystories eval decontam`: report eval items whose word n-grams occur in a training corpus."""

    data: tuple[str, ...] = ()
    """Training corpus: story files (.txt, .jsonl, .json, .parquet, globs, folders) or a dataset folder (its train split); default: the dataset of --run."""
    run: str | None = None
    """Run folder: its dataset is the default corpus, and the report is written to <run>/eval/decontam.json."""
    sets: tuple[str, ...] = ()
    """Eval item files to check (JSONL, YAML, JSON, text); default: every file in the package's eval/sets."""
    n: int = field(default=6, metadata={"min": 1})
    """Length of the word n-grams compared."""
    threshold: float = 0.5
    """An item counts as contaminated when at least this fraction of its n-grams occurs in the corpus."""
    out: str | None = None
    """Also write the report (JSON) to this file."""
    show: int = 20
    """Items printed, most overlapping first (the written report lists every item with a hit)."""


def words(text: str) -> list[str]:
    """The words of `text`, lower-cased, without punctuation."""
    return WORD.findall(text.lower())


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The distinct word n-grams of `text` in order of appearance (none when it has fewer than n words)."""
    w = words(text)
    return list(dict.fromkeys(tuple(w[i : i + n]) for i in range(len(w) - n + 1)))


# --- eval items -------------------------------------------------------------------------


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in SKIP_KEYS:
                yield from _strings(v)


def _record_text(record: Any) -> str:
    if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("answer"), str):
        return record["prompt"] + record["answer"]  # a probe item: the context and its right continuation
    return "\n".join(_strings(record))


def _yaml_items(text: str) -> list[Any]:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    if yaml is not None:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"not valid YAML ({str(e).splitlines()[0]})") from None
        return data if isinstance(data, list) else [data]
    # Without PyYAML: a list of blocks, each starting with "- " at the left margin.
    items: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or line.strip() == "---":
            continue
        if line.startswith("- "):
            items.append(line[2:].strip().removeprefix("|-").removeprefix("|").removeprefix(">").strip())
        elif items:
            items[-1] += "\n" + line.strip()
    return items


def read_items(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(id, text) of each item of an eval file; ids are the records' own where they have one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no eval set file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    records: list[Any]
    if suffix in (".jsonl", ".ndjson"):
        records = [value for _, value in json_lines(text.splitlines(), str(path))]
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON ({e.msg})") from None
        records = data if isinstance(data, list) else [data]
    elif suffix in (".yaml", ".yml"):
        try:
            records = _yaml_items(text)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    else:
        records = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    out = []
    for i, record in enumerate(records):
        rid = record.get("id") if isinstance(record, dict) else None
        out.append((str(rid) if rid is not None else f"{path.name}:{i + 1}", _record_text(record)))
    return out


def default_sets() -> list[Path]:
    """Every eval set file shipped in the package (hidden files left out)."""
    return sorted(p for p in SETS_DIR.iterdir() if p.is_file() and not p.name.startswith("."))


# --- the corpus ---------------------------------------------------------------------------


def scan(texts: Iterator[str], grams: set[tuple[str, ...]], n: int) -> tuple[dict[tuple[str, ...], int], int, int]:
    """How often each of `grams` occurs in `texts`; also the number of texts and of words read."""
    firsts = {g[0] for g in grams}
    found: dict[tuple[str, ...], int] = {}
    stories = n_words = 0
    for text in texts:
        w = WORD.findall(text.lower())
        stories += 1
        n_words += len(w)
        # Only positions whose word starts some item n-gram need a tuple built and hashed.
        for i in range(len(w) - n + 1):
            if w[i] in firsts:
                g = tuple(w[i : i + n])
                if g in grams:
                    found[g] = found.get(g, 0) + 1
    return found, stories, n_words


# --- the command ----------------------------------------------------------------------------


def decontam(cfg: DecontamConfig) -> dict[str, Any]:
    """Report eval items whose word n-grams occur in the corpus; writes the report where asked."""
    check(cfg)
    if not 0.0 < cfg.threshold <= 1.0:
        raise UserError(f"--threshold must be in (0, 1], got {cfg.threshold}")
    data = [os.fspath(d) for d in cfg.data]
    if not data:
        if not cfg.run:
            raise UserError("give --data (the training corpus) or --run (whose dataset is the corpus)")
        if not Path(cfg.run).is_dir():
            raise UserError(f"no run folder at {cfg.run}")
        default = read_config(cfg.run).data.get("path")
        if not default:
            raise UserError(f"run {cfg.run} names no dataset; give --data")
        data = [str(default)]
    set_files = [Path(s) for s in cfg.sets] or default_sets()
    items = []  # (file, id, text, its n-grams)
    for f in set_files:
        for iid, text in read_items(f):
            items.append((f, iid, text, ngrams(text, cfg.n)))
    grams = {x for *_, g in items for x in g}
    t0 = time.perf_counter()
    found, stories, n_words = scan(corpus_stories(data, "train"), grams, cfg.n)
    seconds = time.perf_counter() - t0

    hits: list[dict[str, Any]] = []
    per_file: dict[str, dict[str, Any]] = {}
    for f, iid, text, g in items:
        stats = per_file.setdefault(f.name, {"items": 0, "with_hits": 0, "contaminated": 0, "sha256": sha256_file(f)})
        stats["items"] += 1
        matched = sorted((x for x in g if x in found), key=lambda x: -found[x])  # stable: text order on ties
        if not matched:
            continue
        fraction = len(matched) / len(g)
        stats["with_hits"] += 1
        stats["contaminated"] += fraction >= cfg.threshold
        hits.append({
            "file": f.name, "id": iid, "text": text if len(text) <= 160 else text[:157] + "...",
            "ngrams": len(g), "found": len(matched), "fraction": fraction,
            "contaminated": fraction >= cfg.threshold,
            "examples": [{"ngram": " ".join(x), "count": found[x]} for x in matched[:3]],
        })
    hits.sort(key=lambda h: (-h["fraction"], h["file"], h["id"]))
    result = {
        "corpus": {"data": data, "stories": stories, "words": n_words, "seconds": round(seconds, 2)},
        "n": cfg.n,
        "threshold": cfg.threshold,
        "sets": [os.fspath(f) for f in set_files],
        "items": len(items),
        "with_hits": len(hits),
        "contaminated": sum(h["contaminated"] for h in hits),
        "by_file": per_file,
        "hits": hits,
    }
    if cfg.run:
        atomic_write_json(Path(cfg.run) / "eval" / "decontam.json", result)
    if cfg.out:
        atomic_write_json(cfg.out, result)
    return {**{k: v for k, v in result.items() if k != "hits"}, "hits": hits[: max(0, cfg.show)]}
