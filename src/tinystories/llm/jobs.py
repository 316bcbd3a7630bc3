"""The LLM job engine of `synth`, `synth instruct` and `eval judge`: options, asking, claiming, resuming.

- `LLMOptions` (and `LLMJobOptions` for jobs that write items to files): the
  options every LLM command takes, declared once; a command's config inherits
  them and redeclares a field only to change its default.
- `LLMJob.ask`: the one path of a request: answer cache, budget, rate limits,
  retries. With a budget, every request reserves its worst case (prompt bound +
  `max_tokens`) before it is sent, so spend never passes the cap.
- `LLMJob.run`: workers claim items one at a time from one queue; a failed
  item is left for the next run, a refused request (401, 400) stops the job.
- `ItemLog`: the finished items of a job, in two append-only JSONL files
  (accepted records, rejected attempts). An item is finished when accepted or
  rejected at its last attempt; a resumed job asks for the rest, each from the
  attempt after its last rejected one. The answer cache is written before a
  record, so a resumed job pays for nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from tinystories.config import OPERATIONAL, check, parse_duration
from tinystories.errors import UserError
from tinystories.io import atomic_write_json
from tinystories.llm import select
from tinystories.llm.base import (
    Completion,
    LLMError,
    RateLimiter,
    Request,
    RetryPolicy,
    call_with_retries,
    worst_case_tokens,
)
from tinystories.llm.cache import AnswerCache, cache_key
from tinystories.llm.prices import cost_usd, price_of


@dataclass
class LLMOptions:
    """How an LLM is reached, paced and priced (every LLM command's options)."""

    backend: str = "auto"
    """LLM backend: openai (any OpenAI-compatible endpoint), local (a model file in this process); auto = openai."""
    base_url: str = ""
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 (default: OpenAI's, or $OPENAI_BASE_URL)."""
    api_key_env: str = field(default="OPENAI_API_KEY", metadata=OPERATIONAL)
    """Environment variable holding the API key (the key itself is never written anywhere)."""
    chat: bool = True
    """Use the chat completions API; --no-chat sends the prompt to plain completions."""
    concurrency: int = field(default=16, metadata={**OPERATIONAL, "min": 1})
    """Requests in flight at once."""
    rpm: int = field(default=0, metadata=OPERATIONAL)
    """Requests-per-minute cap (0 = none)."""
    tpm: int = field(default=0, metadata=OPERATIONAL)
    """Tokens-per-minute cap, counted at the worst case of each request (0 = none)."""
    timeout: float = field(default=120.0, metadata={**OPERATIONAL, "parse": parse_duration})
    """Timeout of one request (e.g. 90s, 2m)."""
    retries: int = field(default=6, metadata={**OPERATIONAL, "min": 0})
    """Retries of a failed request (429, 5xx, timeouts, malformed answers), with exponential backoff."""
    retry_base: float = field(default=1.0, metadata=OPERATIONAL)
    """First retry wait in seconds (doubled each retry, with jitter; never shorter than Retry-After)."""
    retry_max: float = field(default=60.0, metadata={**OPERATIONAL, "min": 0})
    """Longest single retry wait in seconds (a longer Retry-After is still honoured)."""
    price: str = field(default="", metadata=OPERATIONAL)
    """Price as IN,OUT US dollars per 1M prompt/completion tokens (default: the built-in table by model; none = free)."""
    progress: bool = field(default=True, metadata=OPERATIONAL)
    """Show a progress bar (items/s, tokens/s, dollars spent) on stderr."""


@dataclass
class LLMJobOptions(LLMOptions):
    """The options of an LLM job that writes its items to files: tries per item, a budget, resuming."""

    attempts: int = field(default=2, metadata={"min": 1})
    """Tries per item when the answer fails the checks (each attempt is a new request)."""
    budget_usd: float = field(default=0.0, metadata={**OPERATIONAL, "min": 0})
    """Hard spending cap in US dollars (of a sharded job: of this shard), counted over resumes (0 = none)."""
    resume: bool = field(default=False, metadata=OPERATIONAL)
    """Continue the job already in --out (settings from its job.json); finished items are not asked again."""


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
        self.records.append(rec)

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


class ItemLog:
    """A job's finished items: accepted records in `done`, rejected attempts (with a `reject` reason) in `rejects`."""

    def __init__(self, done: Path, rejects: Path, attempts: int):
        self.done, self.rejects, self.attempts = ShardLog(done), ShardLog(rejects), attempts

    def next_attempt(self) -> dict[int, int]:
        """Item -> the attempt after its last rejected one."""
        nxt: dict[int, int] = {}
        for r in self.rejects.records:
            nxt[r["index"]] = max(nxt.get(r["index"], 0), r.get("attempt", 0) + 1)
        return nxt

    def finished(self) -> set[int]:
        """Items accepted, or rejected at their last attempt."""
        last = {i for i, a in self.next_attempt().items() if a >= self.attempts}
        return {r["index"] for r in self.done.records} | last

    def recorded_cost(self) -> float:
        """Dollars the records say were spent."""
        return sum(r.get("cost_usd", 0.0) for r in (*self.done.records, *self.rejects.records))

    def close(self) -> None:
        self.done.close()
        self.rejects.close()


def start_job(out: Path, job: dict[str, Any], *, resume: bool, log: str | None) -> None:
    """Write `out/job.json`, refusing a folder that holds another job, or this one (with a `log`) without --resume."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    path = out / "job.json"
    if path.exists():
        old = read_job(path, "choose another --out")
        if old != job:
            raise UserError(
                f"{out} holds a different job ({old}); choose another --out, delete it or --resume it"
            )
        if log and not resume and (out / log).exists():
            raise UserError(f"{out} already holds this job; pass --resume to continue it")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty and holds no job.json; choose another --out")
    atomic_write_json(path, job)


def read_job(path: Path, advice: str = "cannot resume") -> dict[str, Any]:
    """The settings in a job folder's job.json."""
    if not path.is_file():
        raise UserError(f"nothing to resume in {path.parent} (no job.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is unreadable; {advice}") from None


def user_request(
    prompt: str, *, chat: bool, max_tokens: int, temperature: float, seed: int | None
) -> Request:
    """One user turn asking `prompt`: a chat message, or with chat=False a plain completion prompt."""
    if chat:
        return Request(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                       temperature=temperature, seed=seed)  # fmt: skip
    return Request(prompt=prompt, max_tokens=max_tokens, temperature=temperature, seed=seed)


class Budget:
    """Money spent and reserved; a request is only sent when its worst case fits under the cap (0 = none)."""

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
class JobStats:
    """Counters of one run of a job (this process only)."""

    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    new_prompt_tokens: int = 0
    new_completion_tokens: int = 0
    stop: bool = False
    budget_hit: bool = False
    fatal: str = ""
    last_error: str = ""


class LLMJob:
    """One job's requests: the client, the answer cache, the budget, the rate limits and the retry policy."""

    def __init__(
        self,
        opts: LLMOptions,
        *,
        backend: str,
        model: str,
        cache: str | os.PathLike,
        namespace: dict[str, Any],
        seed: int = 0,
        budget_usd: float = 0.0,
        client: Any = None,
    ):
        """`namespace`: what decides the answers besides the request (model, endpoint), part of every cache
        key; `client`: any `LLM` instead of the one `backend` and `opts` name."""
        check(opts)
        self.opts, self.namespace = opts, namespace
        self.price = price_of(model, opts.price)
        if budget_usd and self.price is None:
            raise UserError(f"no price known for model {model!r}; pass --price IN,OUT (USD per 1M tokens)")
        if client is None:
            client = select.make_client(backend, model, base_url=opts.base_url, api_key_env=opts.api_key_env,
                                        chat=opts.chat, timeout=opts.timeout, concurrency=opts.concurrency,
                                        seed=seed)  # fmt: skip
        self.client = client
        self.cache = AnswerCache(cache)
        # Every answer ever paid for is in the cache (written before its record), so its totals are the ledger.
        self.budget = Budget(budget_usd, cost_usd(self.price, *self.cache.token_totals()))
        self.limiter = RateLimiter(opts.rpm, opts.tpm)
        self.policy = RetryPolicy(retries=opts.retries, base=opts.retry_base, cap=opts.retry_max)
        self.stats = JobStats()

    def cost(self, comp: Completion) -> float:
        return cost_usd(self.price, comp.prompt_tokens, comp.completion_tokens)

    async def ask(self, item: int, attempt: int, req: Request) -> Completion | None:
        """The answer to `req` for (item, attempt): from the cache, else bought.

        None when the job stops before paying for it (budget reached, or a refused
        request elsewhere); a request that still fails after its retries raises its LLMError.
        """
        st = self.stats
        key = cache_key(self.namespace, item, attempt, req)
        comp = self.cache.get(key)
        if comp is not None:
            st.cached += 1
        else:
            if st.stop:
                return None
            worst_tokens = worst_case_tokens(req)
            worst = cost_usd(self.price, worst_tokens - req.max_tokens, req.max_tokens)
            if not await self.budget.reserve(worst):
                st.budget_hit = st.stop = True
                return None
            try:
                await self.limiter.acquire(worst_tokens)
                st.requests += 1
                comp = await call_with_retries(lambda: self.client.complete(req), self.policy)
            except BaseException:
                self.budget.settle(worst, 0.0)
                raise
            if not comp.prompt_tokens and not comp.completion_tokens:
                # No usage in the answer: count the worst case rather than nothing.
                comp.prompt_tokens, comp.completion_tokens = worst_tokens - req.max_tokens, req.max_tokens
            self.budget.settle(worst, self.cost(comp))
            self.cache.put(key, comp)
            st.new_prompt_tokens += comp.prompt_tokens
            st.new_completion_tokens += comp.completion_tokens
        st.prompt_tokens += comp.prompt_tokens
        st.completion_tokens += comp.completion_tokens
        return comp

    def run(
        self, items: Iterable[int], do_item: Callable[[int], Awaitable[bool]], unit: str = "item"
    ) -> JobStats:
        """`await do_item(i)` for every item, `concurrency` workers claiming the next item as they free up.

        `do_item` returns whether the item is finished (for the progress bar). An
        item whose request fails after its retries is left for the next run; a
        request the server refuses (not retryable) stops the job. Closes the client.
        """
        st, opts, items = self.stats, self.opts, list(items)
        bar = tqdm(
            total=len(items), unit=unit, disable=not opts.progress, mininterval=0.5, dynamic_ncols=True
        )
        t0, last_post = time.perf_counter(), [0.0]

        def tick() -> None:
            bar.update(1)
            now = time.perf_counter()
            if opts.progress and now - last_post[0] > 0.5:
                last_post[0] = now
                cap = f" of ${self.budget.cap:g}" if self.budget.cap else ""
                speed = st.completion_tokens / max(now - t0, 1e-9)
                bar.set_postfix_str(f"{speed:.0f} tok/s, ${self.budget.spent:.4f}{cap}", refresh=False)

        pending = iter(items)

        async def worker() -> None:
            for i in pending:
                if st.stop:
                    return
                try:
                    finished = await do_item(i)
                except LLMError as e:
                    st.last_error = str(e)
                    if not e.retryable:
                        st.fatal, st.stop = str(e), True
                        return
                    st.failed += 1  # left unfinished: the next run asks again
                    continue
                if finished:
                    tick()

        async def main() -> None:
            try:
                await asyncio.gather(*(worker() for _ in range(opts.concurrency)))
            finally:
                bar.close()
                await self.client.aclose()

        asyncio.run(main())
        return st

    def run_attempts(
        self,
        log: ItemLog,
        items: Iterable[int],
        make_request: Callable[[int, int], Request],
        finish: Callable[[int, int, Completion, float], tuple[dict[str, Any], str | None]],
        unit: str = "item",
    ) -> JobStats:
        """Ask for every unfinished item, a new attempt after each rejection, and log each result as it lands.

        `make_request(i, attempt)`; `finish(i, attempt, completion, cost) -> (record, reason)`, where
        reason is None for an accepted record.
        """
        st, next_attempt, finished = self.stats, log.next_attempt(), log.finished()
        # The records' own costs stand in for the cache's ledger when the cache was deleted.
        self.budget.spent = max(self.budget.spent, log.recorded_cost())

        async def do_item(i: int) -> bool:
            for attempt in range(next_attempt.get(i, 0), log.attempts):
                comp = await self.ask(i, attempt, make_request(i, attempt))
                if comp is None:
                    return False
                rec, reason = finish(i, attempt, comp, self.cost(comp))
                if reason is None:
                    log.done.append(rec)
                    st.accepted += 1
                    return True
                rec["reject"] = reason
                log.rejects.append(rec)
                st.rejected += 1
            return True  # every attempt rejected: the item is finished, its rejects kept

        return self.run([i for i in items if i not in finished], do_item, unit)

    def raise_if_stopped(self, status: str, left: int, noun: str = "items") -> None:
        """After a run: why the job stopped short, if it did (`status`: what is written and left)."""
        st = self.stats
        if st.fatal:
            raise UserError(f"the server refused a request ({st.fatal}); {status}; fix it and --resume")
        if st.budget_hit:
            raise BudgetExhausted(
                f"budget reached: spent ${self.budget.spent:.6f} of ${self.budget.cap:g}; {status}; rerun with "
                "--resume and a larger --budget-usd to finish"
            )
        if left and st.failed:
            raise JobIncomplete(
                f"{st.failed} {noun} failed after all retries (last error: {st.last_error}); {status}; "
                "rerun with --resume to finish them"
            )

    def close(self) -> None:
        self.cache.close()
