"""The shared LLM plumbing: retry policy with Retry-After, rate limits, worst-case tokens, prices, cache keys."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tinystories.errors import UserError
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
from tinystories.llm.openai_compat import _retry_after
from tinystories.llm.prices import cost_usd, parse_price, price_of


def test_backoff_is_jittered_capped_and_honours_retry_after():
    p = RetryPolicy(base=1.0, cap=8.0, rng=random.Random(0))
    for attempt in range(10):
        d = p.delay(attempt, None)
        assert 0 <= d <= min(8.0, 2**attempt)
    assert p.delay(0, 30.0) == 30.0  # longer than the cap, still honoured
    assert len({round(p.delay(3, None), 6) for _ in range(20)}) > 10  # jitter


def test_call_with_retries():
    calls = []

    async def flaky():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise LLMError("429", retryable=True, retry_after=0.3)
        if len(calls) == 2:
            raise LLMError("500", retryable=True)
        return Completion("ok")

    policy = RetryPolicy(base=0.01)
    assert asyncio.run(call_with_retries(flaky, policy)).text == "ok"
    assert calls[1] - calls[0] >= 0.29

    async def fatal():
        raise LLMError("401", retryable=False)

    with pytest.raises(LLMError, match="401"):
        asyncio.run(call_with_retries(fatal, policy))

    n = []

    async def always():
        n.append(1)
        raise LLMError("500", retryable=True)

    with pytest.raises(LLMError):
        asyncio.run(call_with_retries(always, RetryPolicy(retries=3, base=0.001)))
    assert len(n) == 4


def test_retry_after_header_forms():
    assert _retry_after({"retry-after": "7"}) == 7.0
    assert _retry_after({"retry-after-ms": "1500"}) == 1.5
    assert _retry_after({}) is None
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 < _retry_after({"retry-after": when}) <= 61


def test_rate_limiter_requests_and_tokens():
    async def run(limiter, n, tokens):
        t0 = time.monotonic()
        for _ in range(n):
            await limiter.acquire(tokens)
        return time.monotonic() - t0

    # 600 rpm: a burst of 600, then 10 a second; 620 requests take about 2 s
    assert 1.7 < asyncio.run(run(RateLimiter(rpm=600), 620, 0)) < 3.5
    # 60,000 tpm = 1,000 tokens/s after a full bucket: 62 requests of 1,000 tokens take about 2 s
    assert 1.7 < asyncio.run(run(RateLimiter(tpm=60_000), 62, 1000)) < 3.5
    assert asyncio.run(run(RateLimiter(), 1000, 10**6)) < 0.5


def test_worst_case_bounds_real_token_counts():
    req = Request(messages=[{"role": "user", "content": "Write a story about a dog. " * 10}], max_tokens=300)
    assert worst_case_tokens(req) >= 300 + len(req.text().split())


def test_prices():
    assert price_of("gpt-4o-mini") == (0.15, 0.60)
    assert price_of("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert price_of("gpt-4o-2024-08-06") == (2.50, 10.00)
    assert price_of("smollm2") is None
    assert price_of("smollm2", "1,2") == (1.0, 2.0)
    assert cost_usd((1.0, 2.0), 1_000_000, 500_000) == 2.0
    assert cost_usd(None, 10, 10) == 0.0
    with pytest.raises(UserError):
        parse_price("cheap")


def test_cache_roundtrip_and_keys(tmp_path):
    req = Request(prompt="hi", max_tokens=5)
    ns = {"model": "m"}
    assert cache_key(ns, 1, 0, req) != cache_key(ns, 1, 1, req)  # a new attempt is a new request
    assert cache_key(ns, 1, 0, req) != cache_key(ns, 2, 0, req)
    assert cache_key(ns, 1, 0, req) == cache_key(dict(ns), 1, 0, Request(prompt="hi", max_tokens=5))
    c = AnswerCache(tmp_path / "c.sqlite")
    c.put("k", Completion("story", "stop", 3, 4, "m"))
    c.close()
    c = AnswerCache(tmp_path / "c.sqlite")
    got = c.get("k")
    assert got.text == "story" and got.cached and got.completion_tokens == 4
    assert c.get("nope") is None and c.token_totals() == (3, 4) and len(c) == 1
