"""`tinystories synth instruct`: a story corpus -> TinyStories-Instruct records.

Stories without a summary get one of 1-2 lines from an LLM (the same engine
as `synth`: cache, budget, retries, `--resume`); the summaries are appended to
`summaries_0000.jsonl` in the output folder as they land. Then every story
becomes an Instruct entry through `data/instruct.py` (a random subset of
Features / Words / Random sentence / Summary in random order, then Story; with
`--ood` never Words together with Summary), written to `stories_0000.jsonl`
(the records plus `summary` and `instruct`) and `stories.txt`.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.config import parse_duration
from tinystories.data.instruct import format_instruct
from tinystories.errors import UserError
from tinystories.io import atomic_open, atomic_write_json
from tinystories.synth.generate import (
    Budget,
    BudgetExhausted,
    Engine,
    JobIncomplete,
    ShardLog,
    _make_client,
    read_jsonl_recovering,
    run_items,
    write_txt,
)
from tinystories.synth.stats import read_corpus

SUMMARY_PROMPT = (
    "Summarize the following story in one or two short sentences, using simple words. "
    "Write only the summary.\n\nStory:\n{story}"
)
_LABEL = re.compile(r"^\s*(summary|here is a summary[^:]*|here's a summary[^:]*)\s*:\s*", re.I)
_META = re.compile(r"^\W*(sure|certainly|of course|i'm sorry|i cannot|i can't|as an ai)\b", re.I)


@dataclass
class InstructConfig:
    data: str = "data/mystories"
    """The story corpus: a synth job folder or one JSONL file of story records."""
    out: str = "data/mystories-instruct"
    """Output folder for the Instruct records."""
    ood: bool = False
    """Out-of-distribution variant: never combine Words with Summary (as the paper's OOD set)."""
    seed: int = 0
    """Seed for the choice and order of fields and the random sentence of each record."""
    resummarize: bool = False
    """Ask for new summaries even for stories that already have one."""
    backend: str = "openai"
    """Where summaries come from: openai (an OpenAI-compatible endpoint) or local (a model file)."""
    model: str = ""
    """Model for the summaries (not needed when every story already has a summary)."""
    base_url: str = ""
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never written anywhere)."""
    chat: bool = True
    """Use the chat completions API."""
    max_tokens: int = 100
    """Most tokens of a summary."""
    temperature: float = 0.3
    """Sampling temperature for summaries."""
    concurrency: int = 16
    """Requests in flight at once."""
    rpm: int = 0
    """Requests-per-minute cap (0 = none)."""
    tpm: int = 0
    """Tokens-per-minute cap (0 = none)."""
    timeout: float = field(default=120.0, metadata={"parse": parse_duration})
    """Timeout of one request."""
    retries: int = 6
    """Retries of a failed request."""
    retry_base: float = 1.0
    """First retry wait in seconds."""
    attempts: int = 2
    """Tries per story when the summary is unusable."""
    budget_usd: float = 0.0
    """Hard spending cap in US dollars, counted over resumes (0 = none)."""
    price: str = ""
    """IN,OUT USD per 1M tokens (default: the built-in table by model)."""
    resume: bool = False
    """Continue the summaries already in --out."""
    progress: bool = True
    """Show a progress bar."""


def clean_summary(text: str) -> tuple[str, str | None]:
    """(summary, None) or (text, reason): one or two lines, no preamble, not a refusal."""
    s = _LABEL.sub("", text.strip()).strip().strip('"').strip()
    if not s:
        return s, "empty summary"
    if _META.match(s):
        return s, "refusal or meta-answer"
    lines = [ln for ln in s.splitlines() if ln.strip()]
    if len(lines) > 2 or len(s.split()) > 80:
        return s, "summary longer than two lines"
    return " ".join(s.split()), None


def instruct(cfg: InstructConfig) -> dict[str, Any]:
    """Summaries where needed, then one Instruct entry per story."""
    from tinystories.llm.base import RateLimiter, Request, RetryPolicy
    from tinystories.llm.cache import AnswerCache
    from tinystories.llm.prices import cost_usd, price_of

    stories, _ = read_corpus(cfg.data)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.resolve() == Path(cfg.data).resolve():
        raise UserError("--out must differ from --data")
    by_index = {r["index"]: r for r in stories}
    need = [r["index"] for r in stories if cfg.resummarize or not r.get("summary")]
    spent = 0.0
    if need:
        if not cfg.model:
            raise UserError(
                f"{len(need)} stories have no summary; pass --model (and --base-url) to write them"
            )
        job = {"data": str(Path(cfg.data).resolve()), "backend": cfg.backend, "model": cfg.model,
               "base_url": cfg.base_url, "resummarize": cfg.resummarize, "max_tokens": cfg.max_tokens}  # fmt: skip
        job_path = out / "job.json"
        if job_path.exists():
            old = json.loads(job_path.read_text())
            if old != job:
                raise UserError(f"{out} holds a different job; choose another --out")
            if not cfg.resume and (out / "summaries_0000.jsonl").exists():
                raise UserError(f"{out} already holds summaries of this corpus; pass --resume to continue")
        elif out.is_dir() and any(out.iterdir()):
            raise UserError(f"{out} is not empty and holds no job.json; choose another --out")
        atomic_write_json(job_path, job)
        price = price_of(cfg.model, cfg.price)
        if cfg.budget_usd and price is None:
            raise UserError(
                f"no price known for model {cfg.model!r}; pass --price IN,OUT (USD per 1M tokens)"
            )

        done = ShardLog(out / "summaries_0000.jsonl")
        rejects = ShardLog(out / "rejects_0000.jsonl")
        finished = {r["index"] for r in done.records}
        next_attempt: dict[int, int] = {}
        for r in rejects.records:
            next_attempt[r["index"]] = max(next_attempt.get(r["index"], 0), r.get("attempt", 0) + 1)
        finished |= {i for i, a in next_attempt.items() if a >= cfg.attempts}
        todo = [i for i in need if i not in finished]
        cache = AnswerCache(out / "cache_0000.sqlite")
        p_tok, c_tok = cache.token_totals()
        recorded = sum(r.get("cost_usd", 0.0) for r in (*done.records, *rejects.records))
        budget = Budget(cfg.budget_usd, max(cost_usd(price, p_tok, c_tok), recorded))

        def make_request(i: int, attempt: int) -> Request:
            prompt = SUMMARY_PROMPT.format(story=by_index[i]["story"].strip())
            if cfg.chat:
                return Request(messages=[{"role": "user", "content": prompt}], max_tokens=cfg.max_tokens,
                               temperature=cfg.temperature, seed=attempt)  # fmt: skip
            return Request(
                prompt=prompt, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=attempt
            )

        def finish(i: int, attempt: int, comp: Any, cost: float) -> tuple[dict[str, Any], str | None]:
            summary, reason = clean_summary(comp.text)
            if reason is None and comp.finish_reason == "length":
                reason = "truncated (hit max_tokens)"
            rec = {"index": i, "summary": summary, "attempt": attempt, "usage": comp.usage(),
                   "source": comp.model or cfg.model, "cost_usd": round(cost, 10)}  # fmt: skip
            return rec, reason

        client = _make_client(cfg, cfg.backend)
        engine = Engine(
            client=client,
            cache=cache,
            namespace={
                "task": "summary",
                "backend": cfg.backend,
                "model": cfg.model,
                "base_url": cfg.base_url,
            },
            price=price,
            budget=budget,
            limiter=RateLimiter(cfg.rpm, cfg.tpm),
            policy=RetryPolicy(retries=cfg.retries, base=cfg.retry_base),
            attempts=cfg.attempts,
            concurrency=cfg.concurrency,
            progress=cfg.progress,
        )

        async def main() -> Any:
            try:
                return await run_items(engine, todo, make_request, finish, done, rejects, next_attempt)
            finally:
                await client.aclose()

        try:
            st = asyncio.run(main())
        finally:
            done.close()
            rejects.close()
            cache.close()
        spent = budget.spent
        if st.fatal:
            raise UserError(f"the server refused a request ({st.fatal}); fix it and --resume")
        if st.budget_hit:
            raise BudgetExhausted(
                f"budget reached: spent ${budget.spent:.6f} of ${cfg.budget_usd:g}; rerun with --resume and a "
                "larger --budget-usd to finish the summaries"
            )
        if st.failed:
            raise JobIncomplete(
                f"{st.failed} summaries failed after all retries (last error: {st.last_error}); "
                "rerun with --resume to finish them"
            )
        for r in read_jsonl_recovering(done.path):
            by_index[r["index"]]["summary"] = r["summary"]

    missing = 0
    with atomic_open(out / "stories_0000.jsonl", "w", encoding="utf-8") as fj:
        for r in stories:
            missing += not r.get("summary")
            r["instruct"] = format_instruct(
                r["story"],
                features=r.get("features", []),
                words=r.get("words", []),
                summary=r.get("summary", ""),
                seed=cfg.seed,
                i=r["index"],
                ood=cfg.ood,
            )
            fj.write(json.dumps(r, ensure_ascii=False) + "\n")
    write_txt(stories, out / "stories.txt", "instruct")
    return {
        "records": len(stories),
        "summaries_requested": len(need),
        "without_summary": missing,
        "spent_usd": round(spent, 6),
        "jsonl": str(out / "stories_0000.jsonl"),
        "txt": str(out / "stories.txt"),
    }
