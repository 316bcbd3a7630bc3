"""`tinystories synth`: write a story corpus (JSONL shards + a plain .txt) from a backend.

Backends: `procedural` (the offline story engine), `openai` (any
OpenAI-compatible endpoint through the openai SDK) and `local` (a model file in
this process). A job folder holds `job.json` (what was asked for),
`stories_KKKK.jsonl` per shard K of N, and the stories in the released
`<|endoftext|>` text format: `stories.txt` for an unsharded job,
`stories_KKKK.txt` per shard otherwise. Item i is the same request whichever
shard writes it, so shards 0/N ... N-1/N together equal the unsharded job.

LLM jobs append one JSON line per finished item (`index` on every line) and
never rewrite a shard: after a crash or `kill -9`, `--resume` drops a torn last
line, rebuilds the set of finished items from the shards alone and asks only
for the rest. Rejected attempts go to `rejects_KKKK.jsonl` with their reason;
an item whose every attempt was rejected counts as finished. Answers are cached
in `cache_KKKK.sqlite` before they are written, so a resumed job pays for
nothing twice. With `--budget-usd`, every request reserves its worst case
(prompt bound + `max_tokens`) before it is sent, so spend never passes the cap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.config import OPERATIONAL, check, result_fields
from tinystories.data.instruct import format_instruct
from tinystories.errors import UserError
from tinystories.io import atomic_open
from tinystories.llm.base import Completion, Request
from tinystories.llm.jobs import (
    ItemLog,
    LLMJob,
    LLMJobOptions,
    read_job,
    start_job,
    user_request,
)
from tinystories.llm.select import choose_backend
from tinystories.synth.checks import CheckConfig, check_story
from tinystories.synth.lexicon import FEATURE_P, FEATURES, POS, from_word_lists, item_rng, load_lexicon
from tinystories.synth.procedural import story_record
from tinystories.synth.prompts import PAPER_TEMPLATE, story_prompt

SEPARATOR = "<|endoftext|>"
BACKENDS = ("procedural", "openai", "local")


@dataclass
class SynthConfig(LLMJobOptions):
    n: int = field(default=1000, metadata={"min": 1})
    """Number of stories in the whole job (all shards together)."""
    out: str = field(default="data/proc", metadata=OPERATIONAL)
    """Output folder for the corpus."""
    backend: str = "auto"
    """Story source: procedural (offline engine), openai (an OpenAI-compatible endpoint), local (a model file in this process); auto = openai when --model is given, else procedural."""
    seed: int = 0
    """Seed: item i's words, features and story depend only on (seed, i)."""
    instruct: bool = False
    """Write TinyStories-Instruct entries (Features/Words/Random sentence/Summary, then Story)."""
    shard: str = "0/1"
    """Which part of the job to write, as K/N: the items whose index leaves remainder K when divided by N."""
    start: int = field(default=0, metadata={"min": 0})
    """Index of the first item (items start .. start+n-1)."""
    model: str = ""
    """LLM backends: the model name the endpoint serves (openai), or a model file / folder (local)."""
    max_tokens: int = field(default=600, metadata={"min": 1})
    """Most tokens a story may have (a story cut off here is rejected)."""
    temperature: float = 1.0
    """Sampling temperature."""
    template: str = ""
    """File with a story prompt template ({verb}, {noun}, {adjective}, {features}); default: the paper's."""
    lexicon: str = ""
    """Lexicon TSV (word, pos, forms, class) to draw words from; default: the shipped one."""
    word_lists: str = ""
    """Instead of a lexicon: three files VERBS,NOUNS,ADJECTIVES with one word per line."""
    features_file: str = ""
    """File of story features, one `Key<TAB>phrase` per line; default: the paper's six."""
    min_words: int = 40
    """Shortest accepted story, in words."""
    max_words: int = 1200
    """Longest accepted story, in words."""
    word_check: bool = True
    """Reject stories that miss one of their three words; --no-word-check keeps them (small local models)."""


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise UserError(f"--shard {text}: need 0 <= K < N")
    return k, n


def _resolve_backend(cfg: SynthConfig) -> str:
    if cfg.backend == "auto" and cfg.resume:
        job = read_job(Path(cfg.out) / "job.json")
        if "backend" not in job:
            raise UserError(f"{Path(cfg.out) / 'job.json'} is unreadable; cannot resume")
        return job["backend"]
    return choose_backend(cfg.backend, cfg.model, offline="procedural", need_model=not cfg.resume)


def records(cfg: SynthConfig) -> Iterator[dict[str, Any]]:
    """The records this config's shard asks for, in item order (generated one at a time)."""
    k, n_shards = _parse_shard(cfg.shard)
    lex, template = _procedural_inputs(cfg)
    for i in range(cfg.start, cfg.start + cfg.n):
        if i % n_shards != k:
            continue
        rec = story_record(cfg.seed, i, lex)
        if template is not None:  # the prompt an LLM backend would have been sent with this template
            rec["prompt"] = story_prompt(rec["words"], rec["features"], template)
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


def _procedural_inputs(cfg: SynthConfig) -> tuple[Any, str | None]:
    """The lexicon and prompt template of a procedural job; refuses what the engine cannot use."""
    if cfg.features_file:
        # The engine's plots know what each of the paper's six features means; others it cannot tell.
        raise UserError(
            "--features-file is for LLM backends: the procedural engine tells only the paper's six features"
        )
    return _lexicon_for(cfg), (_read_template(cfg.template) if cfg.template else None)


def synth(cfg: SynthConfig) -> dict[str, Any]:
    """Write this shard of the job to `cfg.out`; refuses to mix with a different job there."""
    backend = _resolve_backend(cfg)
    check(cfg)
    if backend != "procedural":
        return synth_llm(cfg, backend)
    cfg = dataclasses.replace(cfg, backend="procedural")
    k, n_shards = _parse_shard(cfg.shard)
    _procedural_inputs(cfg)  # a bad lexicon, word list, template or features file stops before any output
    out = Path(cfg.out)
    job = {
        "backend": cfg.backend,
        "n": cfg.n,
        "seed": cfg.seed,
        "instruct": cfg.instruct,
        "start": cfg.start,
        "shards": n_shards,
    }
    # Where the words come from is part of the job (only when not the default, so older jobs still match).
    job.update({k: getattr(cfg, k) for k in ("lexicon", "word_lists", "template") if getattr(cfg, k)})
    start_job(out, job, resume=True, log=None)  # the same job again just writes the same files

    t0 = time.perf_counter()
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


# --- LLM jobs -------------------------------------------------------------------------------------


def load_features(path: str) -> dict[str, str]:
    """A features file: one `Key<TAB>phrase` per line ('#' comments allowed)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"features file not found: {p}")
    table = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, phrase = line.partition("\t")
        if not sep or not key.strip() or not phrase.strip():
            raise UserError(f"{p}:{n}: expected 'Key<TAB>phrase', got {line!r}")
        table[key.strip()] = phrase.strip()
    if not table:
        raise UserError(f"{p}: no features")
    return table


def _lexicon_for(cfg: SynthConfig) -> Any:
    if cfg.word_lists:
        parts = cfg.word_lists.split(",")
        if len(parts) != 3:
            raise UserError("--word-lists must be three files VERBS,NOUNS,ADJECTIVES")
        return from_word_lists(*parts)
    return load_lexicon(cfg.lexicon or None)


def plan_item(seed: int, i: int, lexicon: Any, features: dict[str, str]) -> tuple[list[str], list[str]]:
    """Item i's [verb, noun, adjective] and feature keys from (seed, i) alone.

    With the paper's features this is exactly `lexicon.sample_item`, the draw the procedural engine makes.
    """
    rng = item_rng(seed, i, "words")
    words = [rng.choice(lexicon.entries[pos]).word for pos in POS]
    return words, [f for f in features if rng.random() < FEATURE_P]


def plan(cfg: SynthConfig) -> Iterator[dict[str, Any]]:
    """(index, words, features, prompt) of every item of this config's shard, in order."""
    k, n_shards = _parse_shard(cfg.shard)
    lex = _lexicon_for(cfg)
    table = load_features(cfg.features_file) if cfg.features_file else FEATURES
    template = _read_template(cfg.template) if cfg.template else PAPER_TEMPLATE
    for i in range(cfg.start, cfg.start + cfg.n):
        if i % n_shards == k:
            words, feats = plan_item(cfg.seed, i, lex, table)
            yield {
                "index": i,
                "words": words,
                "features": feats,
                "prompt": story_prompt(words, feats, template, table),
            }


def _read_template(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"template file not found: {p}")
    return p.read_text(encoding="utf-8").strip()


def _job_settings(cfg: SynthConfig) -> dict[str, Any]:
    """What an LLM job asks for (its fields that change results), as kept in job.json; --resume reads them back."""
    # The shard is not a setting of the job but a part of it (job.json keeps the number of shards).
    return {k: v for k, v in result_fields(cfg).items() if k != "shard"}


def _llm_job(cfg: SynthConfig, backend: str, out: Path) -> tuple[SynthConfig, dict[str, Any]]:
    """The job this run works on: a new one from `cfg`, or with --resume the one in `out/job.json`."""
    k, n_shards = _parse_shard(cfg.shard)
    if cfg.resume:
        job = read_job(out / "job.json")
        if job.get("shards") != n_shards:
            raise UserError(
                f"{out} is a job in {job.get('shards')} shards; pass --shard K/{job.get('shards')}"
            )
        cfg = dataclasses.replace(cfg, **{f: job[f] for f in _job_settings(cfg) if f in job})
        return cfg, job
    job = {**_job_settings(cfg), "backend": backend, "instruct": False, "shards": n_shards}
    start_job(out, job, resume=False, log=f"stories_{k:04d}.jsonl")
    return cfg, job


def write_txt(records: list[dict[str, Any]], path: Path, field_name: str = "story") -> None:
    """The released text format: entries in index order, each followed by a `<|endoftext|>` line."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in sorted(records, key=lambda r: r["index"]):
            f.write(r[field_name] + "\n" + SEPARATOR + "\n")


def synth_llm(cfg: SynthConfig, backend: str) -> dict[str, Any]:
    """An LLM job: this shard's items not yet finished, asked concurrently, appended as they land."""
    if cfg.instruct:
        raise UserError(
            "--instruct is for the procedural backend; run `tinystories synth instruct` on an LLM corpus"
        )
    out = Path(cfg.out)
    cfg, job_settings = _llm_job(cfg, backend, out)
    backend = job_settings["backend"]
    k, n_shards = _parse_shard(cfg.shard)
    lex = _lexicon_for(cfg)
    items = {p["index"]: p for p in plan(cfg)}  # fails early on a bad template or features file
    checks = CheckConfig(min_words=cfg.min_words, max_words=cfg.max_words, require_words=cfg.word_check)

    def make_request(i: int, attempt: int) -> Request:
        # A per-(item, attempt) sampling seed: reproducible where servers honour it, different on a retry.
        seed = (
            int.from_bytes(hashlib.sha256(f"{cfg.seed}|{i}|{attempt}".encode()).digest()[:4], "little") >> 1
        )
        return user_request(items[i]["prompt"], chat=cfg.chat, max_tokens=cfg.max_tokens,
                            temperature=cfg.temperature, seed=seed)  # fmt: skip

    def finish(i: int, attempt: int, comp: Completion, cost: float) -> tuple[dict[str, Any], str | None]:
        it = items[i]
        story = comp.text.strip()
        rec = {
            "id": f"{cfg.seed}-{i:08d}",
            "story": story,
            "prompt": it["prompt"],
            "words": it["words"],
            "features": it["features"],
            "summary": "",
            "source": comp.model or cfg.model,
            "seed": cfg.seed,
            "index": i,
            "attempt": attempt,
            "usage": comp.usage(),
            "finish_reason": comp.finish_reason,
            "cost_usd": round(cost, 10),
        }
        return rec, check_story(story, it["words"], lex, comp.finish_reason, checks)

    namespace = {"backend": backend, "model": cfg.model, "base_url": cfg.base_url, "chat": cfg.chat}
    job = LLMJob(cfg, backend=backend, model=cfg.model, cache=out / f"cache_{k:04d}.sqlite", namespace=namespace,
                 seed=cfg.seed, budget_usd=cfg.budget_usd)  # fmt: skip
    log = ItemLog(out / f"stories_{k:04d}.jsonl", out / f"rejects_{k:04d}.jsonl", cfg.attempts)
    t0 = time.perf_counter()
    try:
        st = job.run_attempts(log, items, make_request, finish, unit="story")
    finally:
        log.close()
        job.close()
    secs = time.perf_counter() - t0
    stories = log.done.records
    txt = out / ("stories.txt" if n_shards == 1 else f"stories_{k:04d}.txt")
    write_txt(stories, txt)
    left = len(items) - len(log.finished() & set(items))
    job.raise_if_stopped(f"{len(stories)} stories written, {left} items left", left)
    return {
        "stories": len(stories),
        "new_stories": st.accepted,
        "rejected_attempts": st.rejected,
        "failed_items": st.failed,
        "items_left": left,
        "requests": st.requests,
        "cached_answers": st.cached,
        "spent_usd": round(job.budget.spent, 6),
        "seconds": round(secs, 3),
        "stories_per_s": round(st.accepted / max(secs, 1e-9), 2),
        "tokens_per_s": round(st.completion_tokens / max(secs, 1e-9), 1),
        "jsonl": str(log.done.path),
        "txt": str(txt),
    }
