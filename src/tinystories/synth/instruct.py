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

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.config import OPERATIONAL
from tinystories.data.instruct import format_instruct
from tinystories.errors import UserError
from tinystories.io import atomic_open
from tinystories.llm.base import Completion, Request
from tinystories.llm.jobs import ItemLog, LLMJob, LLMJobOptions, start_job, user_request
from tinystories.synth.generate import write_txt
from tinystories.synth.stats import read_corpus

SUMMARY_PROMPT = (
    "Summarize the following story in one or two short sentences, using simple words. "
    "Write only the summary.\n\nStory:\n{story}"
)
_LABEL = re.compile(r"^\s*(summary|here is a summary[^:]*|here's a summary[^:]*)\s*:\s*", re.I)
_META = re.compile(r"^\W*(sure|certainly|of course|i'm sorry|i cannot|i can't|as an ai)\b", re.I)


@dataclass
class InstructConfig(LLMJobOptions):
    data: str = "data/mystories"
    """The story corpus: a synth job folder or one JSONL file of story records."""
    out: str = field(default="data/mystories-instruct", metadata=OPERATIONAL)
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
    max_tokens: int = field(default=100, metadata={"min": 1})
    """Most tokens of a summary."""
    temperature: float = 0.3
    """Sampling temperature for summaries."""


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
        spent = _summarize(cfg, need, by_index, out)

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


def _summarize(cfg: InstructConfig, need: list[int], by_index: dict[int, dict[str, Any]], out: Path) -> float:
    """Ask for the summaries of the stories `need` lists that are not in `out` yet; returns the dollars spent."""
    job_settings = {"data": str(Path(cfg.data).resolve()), "backend": cfg.backend, "model": cfg.model,
                    "base_url": cfg.base_url, "resummarize": cfg.resummarize, "max_tokens": cfg.max_tokens}  # fmt: skip
    start_job(out, job_settings, resume=cfg.resume, log="summaries_0000.jsonl")

    def make_request(i: int, attempt: int) -> Request:
        prompt = SUMMARY_PROMPT.format(story=by_index[i]["story"].strip())
        return user_request(
            prompt, chat=cfg.chat, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=attempt
        )

    def finish(i: int, attempt: int, comp: Completion, cost: float) -> tuple[dict[str, Any], str | None]:
        summary, reason = clean_summary(comp.text)
        if reason is None and comp.finish_reason == "length":
            reason = "truncated (hit max_tokens)"
        rec = {"index": i, "summary": summary, "attempt": attempt, "usage": comp.usage(),
               "source": comp.model or cfg.model, "cost_usd": round(cost, 10)}  # fmt: skip
        return rec, reason

    namespace = {"task": "summary", "backend": cfg.backend, "model": cfg.model, "base_url": cfg.base_url}
    job = LLMJob(cfg, backend=cfg.backend, model=cfg.model, cache=out / "cache_0000.sqlite", namespace=namespace,
                 seed=cfg.seed, budget_usd=cfg.budget_usd)  # fmt: skip
    log = ItemLog(out / "summaries_0000.jsonl", out / "rejects_0000.jsonl", cfg.attempts)
    try:
        job.run_attempts(log, need, make_request, finish, unit="summary")
    finally:
        log.close()
        job.close()
    left = len(set(need) - log.finished())
    job.raise_if_stopped(f"{len(log.done.records)} summaries written, {left} left", left, "summaries")
    for r in log.done.records:
        by_index[r["index"]]["summary"] = r["summary"]
    return job.budget.spent
