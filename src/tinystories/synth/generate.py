"""`tinystories synth`: write a story corpus (JSONL shards + a plain .txt) from a backend.

Only the offline `procedural` backend exists so far. A job folder holds
`job.json` (what was asked for), `stories_KKKK.jsonl` per shard K of N, and the
stories in the released `<|endoftext|>` text format: `stories.txt` for an
unsharded job, `stories_KKKK.txt` per shard otherwise. Item i is the same
record whichever shard writes it, so shards 0/N ... N-1/N together equal the
unsharded job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.errors import UserError
from tinystories.io import atomic_open, atomic_write_json

SEPARATOR = "<|endoftext|>"
BACKENDS = ("procedural",)


@dataclass
class SynthConfig:
    n: int = 1000
    """Number of stories in the whole job (all shards together)."""
    out: str = "data/proc"
    """Output folder for the corpus."""
    backend: str = "procedural"
    """Story source: procedural (offline engine); LLM backends are not available yet."""
    seed: int = 0
    """Seed: item i's words, features and story depend only on (seed, i)."""
    instruct: bool = False
    """Write TinyStories-Instruct entries (Features/Words/Random sentence/Summary, then Story)."""
    shard: str = "0/1"
    """Which part of the job to write, as K/N: the items whose index leaves remainder K when divided by N."""
    start: int = 0
    """Index of the first item (items start .. start+n-1)."""


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise UserError(f"--shard {text}: need 0 <= K < N")
    return k, n


def records(cfg: SynthConfig) -> Iterator[dict[str, Any]]:
    """The records this config's shard asks for, in item order (generated one at a time)."""
    from tinystories.data.instruct import format_instruct
    from tinystories.synth.lexicon import load_lexicon
    from tinystories.synth.procedural import story_record

    k, n_shards = _parse_shard(cfg.shard)
    lex = load_lexicon()
    for i in range(cfg.start, cfg.start + cfg.n):
        if i % n_shards != k:
            continue
        rec = story_record(cfg.seed, i, lex)
        if cfg.instruct:
            rec["instruct"] = format_instruct(
                rec["story"],
                features=rec["features"],
                words=rec["words"],
                summary=rec["summary"],
                seed=cfg.seed,
                i=i,
            )
        yield rec


def synth(cfg: SynthConfig) -> dict[str, Any]:
    """Write this shard of the job to `cfg.out`; refuses to mix with a different job there."""
    if cfg.backend not in BACKENDS:
        raise UserError(
            f"backend {cfg.backend!r} is not available yet; use --backend procedural (offline story engine)"
        )
    if cfg.n < 1:
        raise UserError("--n must be at least 1")
    if cfg.start < 0:
        raise UserError("--start must be >= 0")
    k, n_shards = _parse_shard(cfg.shard)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    job = {
        "backend": cfg.backend,
        "n": cfg.n,
        "seed": cfg.seed,
        "instruct": cfg.instruct,
        "start": cfg.start,
        "shards": n_shards,
    }
    job_path = out / "job.json"
    if job_path.exists():
        try:
            old = json.loads(job_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(f"{job_path} is unreadable; choose another --out") from None
        if old != job:
            raise UserError(f"{out} holds a different job ({old}); choose another --out or delete it")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty and holds no job.json; choose another --out")

    t0 = time.perf_counter()
    atomic_write_json(job_path, job)
    jsonl = out / f"stories_{k:04d}.jsonl"
    txt = out / ("stories.txt" if n_shards == 1 else f"stories_{k:04d}.txt")
    count = 0
    # Both files stream (constant memory) and appear only when complete.
    with atomic_open(jsonl, "w", encoding="utf-8") as fj, atomic_open(txt, "w", encoding="utf-8") as ft:
        for r in records(cfg):
            fj.write(json.dumps(r, ensure_ascii=False) + "\n")
            ft.write((r["instruct"] if cfg.instruct else r["story"]) + "\n" + SEPARATOR + "\n")
            count += 1
    secs = time.perf_counter() - t0
    return {
        "stories": count,
        "jsonl": str(jsonl),
        "txt": str(txt),
        "seconds": round(secs, 3),
        "stories_per_s": round(count / max(secs, 1e-9), 1),
    }
