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

import asyncio
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.config import parse_duration
from tinystories.errors import UserError
from tinystories.io import atomic_open, atomic_write_json

SEPARATOR = "<|endoftext|>"
BACKENDS = ("procedural", "openai", "local")


@dataclass
class SynthConfig:
    n: int = 1000
    """Number of stories in the whole job (all shards together)."""
    out: str = "data/proc"
    """Output folder for the corpus."""
    backend: str = "auto"
    """Story source: procedural (offline engine), openai (an OpenAI-compatible endpoint), local (a model file in this process); auto = openai when --model is given, else procedural."""
    seed: int = 0
    """Seed: item i's words, features and story depend only on (seed, i)."""
    instruct: bool = False
    """Write TinyStories-Instruct entries (Features/Words/Random sentence/Summary, then Story)."""
    shard: str = "0/1"
    """Which part of the job to write, as K/N: the items whose index leaves remainder K when divided by N."""
    start: int = 0
    """Index of the first item (items start .. start+n-1)."""
    model: str = ""
    """LLM backends: the model name the endpoint serves (openai), or a model file / folder (local)."""
    base_url: str = ""
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 (default: OpenAI's, or $OPENAI_BASE_URL)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (the key itself is never written anywhere)."""
    chat: bool = True
    """Use the chat completions API; --no-chat sends the prompt to plain completions."""
    max_tokens: int = 600
    """Most tokens a story may have (a story cut off here is rejected)."""
    temperature: float = 1.0
    """Sampling temperature."""
    concurrency: int = 16
    """Requests in flight at once."""
    rpm: int = 0
    """Requests-per-minute cap (0 = none)."""
    tpm: int = 0
    """Tokens-per-minute cap, counted at the worst case of each request (0 = none)."""
    timeout: float = field(default=120.0, metadata={"parse": parse_duration})
    """Timeout of one request (e.g. 90s, 2m)."""
    retries: int = 6
    """Retries of a failed request (429, 5xx, timeouts, malformed answers), with exponential backoff."""
    retry_base: float = 1.0
    """First retry wait in seconds (doubled each retry, with jitter; never shorter than Retry-After)."""
    attempts: int = 2
    """Tries per item when the story fails the checks (each attempt is a new request)."""
    budget_usd: float = 0.0
    """Hard spending cap in US dollars for this shard, counted over resumes (0 = none)."""
    price: str = ""
    """Price as IN,OUT US dollars per 1M prompt/completion tokens (default: the built-in table by model)."""
    resume: bool = False
    """Continue the job already in --out (settings from its job.json); finished items are not asked again."""
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
    progress: bool = True
    """Show a progress bar (stories/s, tokens/s, dollars spent) on stderr."""


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise UserError(f"--shard {text}: need 0 <= K < N")
    return k, n


def _resolve_backend(cfg: SynthConfig) -> str:
    backend = cfg.backend
    if backend == "auto":
        job = Path(cfg.out) / "job.json"
        if cfg.resume:
            if not job.is_file():
                raise UserError(f"nothing to resume in {cfg.out} (no job.json)")
            try:
                return json.loads(job.read_text())["backend"]
            except (OSError, ValueError, KeyError):
                raise UserError(f"{job} is unreadable; cannot resume") from None
    from tinystories.llm.select import choose_backend

    return choose_backend(backend, cfg.model, offline="procedural", need_model=not cfg.resume)


def records(cfg: SynthConfig) -> Iterator[dict[str, Any]]:
    """The records this config's shard asks for, in item order (generated one at a time)."""
    from tinystories.data.instruct import format_instruct
    from tinystories.synth.procedural import story_record
    from tinystories.synth.prompts import story_prompt

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
    if backend != "procedural":
        return synth_llm(cfg, backend)
    cfg = dataclasses.replace(cfg, backend="procedural")
    if cfg.n < 1:
        raise UserError("--n must be at least 1")
    if cfg.start < 0:
        raise UserError("--start must be >= 0")
    k, n_shards = _parse_shard(cfg.shard)
    _procedural_inputs(cfg)  # a bad lexicon, word list, template or features file stops before any output
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
    # Where the words come from is part of the job (only when not the default, so older jobs still match).
    job.update({k: getattr(cfg, k) for k in ("lexicon", "word_lists", "template") if getattr(cfg, k)})
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


# --- LLM jobs -------------------------------------------------------------------------------------


class BudgetExhausted(UserError):
    """The job stopped because the next request could pass --budget-usd."""


class JobIncomplete(UserError):
    """Some items still failed after all retries (server down, timeouts); --resume finishes them."""


def read_jsonl_recovering(path: Path) -> list[dict[str, Any]]:
    """The records of an append-only JSONL file; a torn last line (a kill mid-write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    out = []
    for line in data[:end].splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # only a torn line can be unparsable, and only the last one can be torn
    return out


class ShardLog:
    """An append-only JSONL file: each record goes out as one write of one whole line."""

    def __init__(self, path: Path):
        self.path = path
        self.records = read_jsonl_recovering(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def append(self, rec: dict[str, Any]) -> None:
        data = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        while data:  # a short write is rare; a kill between the pieces leaves a torn line, cut on resume
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


class Budget:
    """Money spent and reserved; a request is only sent when its worst case fits under the cap."""

    def __init__(self, cap: float, spent: float = 0.0):
        self.cap, self.spent, self.reserved = cap, spent, 0.0
        self._changed: asyncio.Event | None = None

    def try_reserve(self, amount: float) -> bool:
        if self.cap and self.spent + self.reserved + amount > self.cap:
            return False
        self.reserved += amount
        return True

    async def reserve(self, amount: float) -> bool:
        """Reserve `amount`, waiting while requests in flight may still free room; False when none can."""
        if self._changed is None:
            self._changed = asyncio.Event()
        while not self.try_reserve(amount):
            if self.reserved <= 1e-12:
                return False  # nothing in flight: the cap is reached for good
            self._changed.clear()
            await self._changed.wait()
        return True

    def settle(self, reserved: float, actual: float) -> None:
        """Replace a reservation by what the request really cost (0 for a failed one)."""
        self.reserved -= reserved
        self.spent += actual
        if self._changed is not None:
            self._changed.set()


@dataclass
class JobState:
    """Counters of one run of a job (this process only)."""

    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stop: bool = False
    budget_hit: bool = False
    fatal: str = ""
    last_error: str = ""


@dataclass
class Engine:
    """What every request of a job goes through: cache, budget, rate limits, retries, concurrency."""

    client: Any
    cache: Any
    namespace: dict[str, Any]
    price: tuple[float, float] | None
    budget: Budget
    limiter: Any
    policy: Any
    attempts: int = 2
    concurrency: int = 16
    progress: bool = True


async def run_items(
    engine: Engine,
    items: list[int],
    make_request: Any,
    finish: Any,
    done: ShardLog,
    rejects: ShardLog,
    next_attempt: dict[int, int],
) -> JobState:
    """Ask for every item (attempts after rejections included) and append each result as it lands.

    `make_request(i, attempt) -> Request`; `finish(i, attempt, completion, cost) -> (record, reason)`
    where reason is None for an accepted record.
    """
    from tqdm import tqdm

    from tinystories.llm.base import LLMError, call_with_retries, worst_case_tokens
    from tinystories.llm.cache import cache_key
    from tinystories.llm.prices import cost_usd

    st = JobState()
    bar = tqdm(
        total=len(items), unit="story", disable=not engine.progress, mininterval=0.5, dynamic_ncols=True
    )
    t0 = time.perf_counter()
    last_post = [0.0]

    def tick() -> None:
        bar.update(1)
        now = time.perf_counter()
        if engine.progress and now - last_post[0] > 0.5:
            last_post[0] = now
            secs = max(now - t0, 1e-9)
            bar.set_postfix_str(
                f"{st.completion_tokens / secs:.0f} tok/s, ${engine.budget.spent:.4f}"
                + (f" of ${engine.budget.cap:g}" if engine.budget.cap else ""),
                refresh=False,
            )

    async def do_item(i: int) -> None:
        for attempt in range(next_attempt.get(i, 0), engine.attempts):
            req = make_request(i, attempt)
            key = cache_key(engine.namespace, i, attempt, req)
            comp = engine.cache.get(key) if engine.cache is not None else None
            if comp is None:
                if st.stop:
                    return
                worst_tokens = worst_case_tokens(req)
                worst = cost_usd(engine.price, worst_tokens - req.max_tokens, req.max_tokens)
                if not await engine.budget.reserve(worst):
                    st.budget_hit = st.stop = True
                    return
                try:
                    await engine.limiter.acquire(worst_tokens)
                    st.requests += 1
                    comp = await call_with_retries(lambda r=req: engine.client.complete(r), engine.policy)
                except LLMError as e:
                    engine.budget.settle(worst, 0.0)
                    st.last_error = str(e)
                    if e.retryable:
                        st.failed += 1  # left unfinished: the next --resume asks again
                    else:
                        st.fatal, st.stop = str(e), True
                    return
                except BaseException:
                    engine.budget.settle(worst, 0.0)
                    raise
                if not comp.prompt_tokens and not comp.completion_tokens:
                    # No usage in the answer: count the worst case rather than nothing.
                    comp.prompt_tokens, comp.completion_tokens = worst_tokens - req.max_tokens, req.max_tokens
                engine.budget.settle(
                    worst, cost_usd(engine.price, comp.prompt_tokens, comp.completion_tokens)
                )
                if engine.cache is not None:
                    engine.cache.put(key, comp)
            else:
                st.cached += 1
            st.prompt_tokens += comp.prompt_tokens
            st.completion_tokens += comp.completion_tokens
            cost = cost_usd(engine.price, comp.prompt_tokens, comp.completion_tokens)
            rec, reason = finish(i, attempt, comp, cost)
            if reason is None:
                done.append(rec)
                st.accepted += 1
                tick()
                return
            rec["reject"] = reason
            rejects.append(rec)
            st.rejected += 1
        tick()  # every attempt rejected: the item is finished, its rejects kept

    pending = iter(items)

    async def worker() -> None:
        for i in pending:
            if st.stop:
                return
            await do_item(i)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, engine.concurrency))))
    finally:
        bar.close()
    return st


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
    from tinystories.synth.lexicon import from_word_lists, load_lexicon

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
    from tinystories.synth.lexicon import FEATURE_P, POS, item_rng

    rng = item_rng(seed, i, "words")
    words = [rng.choice(lexicon.entries[pos]).word for pos in POS]
    return words, [f for f in features if rng.random() < FEATURE_P]


def plan(cfg: SynthConfig) -> Iterator[dict[str, Any]]:
    """(index, words, features, prompt) of every item of this config's shard, in order."""
    from tinystories.synth.lexicon import FEATURES
    from tinystories.synth.prompts import PAPER_TEMPLATE, story_prompt

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


# Settings that define what a job asks for; `--resume` takes them from job.json.
_JOB_FIELDS = (
    "backend", "n", "seed", "start", "model", "base_url", "chat", "max_tokens", "temperature",
    "attempts", "min_words", "max_words", "word_check", "template", "lexicon", "word_lists", "features_file",
)  # fmt: skip


def _llm_job(cfg: SynthConfig, backend: str, out: Path) -> tuple[SynthConfig, dict[str, Any]]:
    """The job this run works on: a new one from `cfg`, or with --resume the one in `out/job.json`."""
    k, n_shards = _parse_shard(cfg.shard)
    job_path = out / "job.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if cfg.resume:
        if not job_path.is_file():
            raise UserError(f"nothing to resume in {out} (no job.json)")
        try:
            job = json.loads(job_path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{job_path} is unreadable; cannot resume") from None
        if job.get("shards") != n_shards:
            raise UserError(
                f"{out} is a job in {job.get('shards')} shards; pass --shard K/{job.get('shards')}"
            )
        cfg = dataclasses.replace(cfg, **{f: job[f] for f in _JOB_FIELDS if f in job})
        return cfg, job
    job = {f: getattr(cfg, f) for f in _JOB_FIELDS}
    job.update(backend=backend, instruct=False, shards=n_shards)
    if job_path.exists():
        try:
            old = json.loads(job_path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{job_path} is unreadable; choose another --out") from None
        if old != job:
            raise UserError(f"{out} holds a different job; choose another --out, or --resume it")
        if (out / f"stories_{k:04d}.jsonl").exists():
            raise UserError(f"{out} already holds this job; pass --resume to continue it")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty and holds no job.json; choose another --out")
    atomic_write_json(job_path, job)
    return cfg, job


def _make_client(cfg: Any, backend: str) -> Any:
    """The client of a synth job (`cfg`: SynthConfig or another config with the same LLM fields)."""
    from tinystories.llm.select import make_client

    return make_client(backend, cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, chat=cfg.chat,
                       timeout=cfg.timeout, concurrency=cfg.concurrency, seed=cfg.seed)  # fmt: skip


def write_txt(records: list[dict[str, Any]], path: Path, field_name: str = "story") -> None:
    """The released text format: entries in index order, each followed by a `<|endoftext|>` line."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in sorted(records, key=lambda r: r["index"]):
            f.write(r[field_name] + "\n" + SEPARATOR + "\n")


def synth_llm(cfg: SynthConfig, backend: str) -> dict[str, Any]:
    """An LLM job: this shard's items not yet finished, asked concurrently, appended as they land."""
    from tinystories.llm.base import RateLimiter, Request, RetryPolicy
    from tinystories.llm.cache import AnswerCache
    from tinystories.llm.prices import cost_usd, price_of
    from tinystories.synth.checks import CheckConfig, check_story

    if cfg.instruct:
        raise UserError(
            "--instruct is for the procedural backend; run `tinystories synth instruct` on an LLM corpus"
        )
    if cfg.n < 1:
        raise UserError("--n must be at least 1")
    if cfg.start < 0:
        raise UserError("--start must be >= 0")
    if cfg.concurrency < 1 or cfg.attempts < 1 or cfg.max_tokens < 1:
        raise UserError("--concurrency, --attempts and --max-tokens must be at least 1")
    if cfg.budget_usd < 0:
        raise UserError("--budget-usd cannot be negative")
    out = Path(cfg.out)
    cfg, job = _llm_job(cfg, backend, out)
    backend = job["backend"]
    k, n_shards = _parse_shard(cfg.shard)
    price = price_of(cfg.model, cfg.price)
    if cfg.budget_usd and price is None:
        raise UserError(f"no price known for model {cfg.model!r}; pass --price IN,OUT (USD per 1M tokens)")
    lex = _lexicon_for(cfg)
    items = {p["index"]: p for p in plan(cfg)}  # fails early on a bad template or features file

    done = ShardLog(out / f"stories_{k:04d}.jsonl")
    rejects = ShardLog(out / f"rejects_{k:04d}.jsonl")
    # The shards are the truth: an item is finished when accepted, or rejected at its last attempt.
    finished = {r["index"] for r in done.records}
    next_attempt: dict[int, int] = {}
    for r in rejects.records:
        next_attempt[r["index"]] = max(next_attempt.get(r["index"], 0), r.get("attempt", 0) + 1)
    finished |= {i for i, a in next_attempt.items() if a >= cfg.attempts}
    todo = [i for i in items if i not in finished]

    cache = AnswerCache(out / f"cache_{k:04d}.sqlite")
    # Every answer ever paid for is in the cache (written before its record), so the cache totals are the
    # ledger; the shards' own costs stand in when the cache was deleted.
    p_tok, c_tok = cache.token_totals()
    recorded = sum(r.get("cost_usd", 0.0) for r in (*done.records, *rejects.records))
    budget = Budget(cfg.budget_usd, max(cost_usd(price, p_tok, c_tok), recorded))
    checks = CheckConfig(min_words=cfg.min_words, max_words=cfg.max_words, require_words=cfg.word_check)

    def make_request(i: int, attempt: int) -> Request:
        prompt = items[i]["prompt"]
        # A per-(item, attempt) sampling seed: reproducible where servers honour it, different on a retry.
        seed = (
            int.from_bytes(hashlib.sha256(f"{cfg.seed}|{i}|{attempt}".encode()).digest()[:4], "little") >> 1
        )
        if cfg.chat:
            return Request(messages=[{"role": "user", "content": prompt}], max_tokens=cfg.max_tokens,
                           temperature=cfg.temperature, seed=seed)  # fmt: skip
        return Request(prompt=prompt, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=seed)

    def finish(i: int, attempt: int, comp: Any, cost: float) -> tuple[dict[str, Any], str | None]:
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

    client = _make_client(cfg, backend)
    engine = Engine(
        client=client,
        cache=cache,
        namespace={"backend": backend, "model": cfg.model, "base_url": cfg.base_url, "chat": cfg.chat},
        price=price,
        budget=budget,
        limiter=RateLimiter(cfg.rpm, cfg.tpm),
        policy=RetryPolicy(retries=cfg.retries, base=cfg.retry_base),
        attempts=cfg.attempts,
        concurrency=cfg.concurrency,
        progress=cfg.progress,
    )

    async def main() -> JobState:
        try:
            return await run_items(engine, todo, make_request, finish, done, rejects, next_attempt)
        finally:
            await client.aclose()

    t0 = time.perf_counter()
    try:
        st = asyncio.run(main())
    finally:
        done.close()
        rejects.close()
        cache.close()
    secs = time.perf_counter() - t0
    stories = read_jsonl_recovering(done.path)
    txt = out / ("stories.txt" if n_shards == 1 else f"stories_{k:04d}.txt")
    write_txt(stories, txt)
    all_rejects = read_jsonl_recovering(rejects.path)
    finished_now = {r["index"] for r in stories} | {
        r["index"] for r in all_rejects if r.get("attempt", 0) >= cfg.attempts - 1
    }
    left = len(items) - len(finished_now & set(items))
    result = {
        "stories": len(stories),
        "new_stories": st.accepted,
        "rejected_attempts": st.rejected,
        "failed_items": st.failed,
        "items_left": left,
        "requests": st.requests,
        "cached_answers": st.cached,
        "spent_usd": round(budget.spent, 6),
        "seconds": round(secs, 3),
        "stories_per_s": round(st.accepted / max(secs, 1e-9), 2),
        "tokens_per_s": round(st.completion_tokens / max(secs, 1e-9), 1),
        "jsonl": str(done.path),
        "txt": str(txt),
    }
    if st.fatal:
        raise UserError(f"the server refused a request ({st.fatal}); {left} items left, fix it and --resume")
    if st.budget_hit:
        raise BudgetExhausted(
            f"budget reached: spent ${budget.spent:.6f} of ${cfg.budget_usd:g}; {len(stories)} stories written, "
            f"{left} items left; rerun with --resume and a larger --budget-usd to finish"
        )
    if left and st.failed:
        raise JobIncomplete(
            f"{st.failed} items failed after all retries (last error: {st.last_error}); {len(stories)} stories "
            f"written, {left} items left; rerun with --resume to finish them"
        )
    return result
