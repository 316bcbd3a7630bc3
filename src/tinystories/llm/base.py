"""The one async LLM interface, and what every backend shares.

A backend implements `LLM.complete(request) -> Completion`, where a request is
chat messages or a plain prompt plus sampling parameters. Failures are
`LLMError`s that say whether a retry can help and, for 429s, how long the
server asked us to wait. Around any backend, `RateLimiter` keeps requests and
tokens per minute under a cap and `call_with_retries` retries with
exponential backoff and full jitter, never sooner than `Retry-After`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Request:
    """What to ask: chat `messages` or a plain `prompt` (exactly one), and sampling parameters."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 400
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def key(self) -> dict[str, Any]:
        """The request as plain data (for cache keys and logs; holds no secrets)."""
        return {
            "messages": self.messages,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }

    def text(self) -> str:
        """All the prompt text (for worst-case token estimates)."""
        if self.messages is not None:
            return "\n".join(m["content"] for m in self.messages)
        return self.prompt or ""


@dataclass
class Completion:
    """One answer: the text, why it stopped, and the tokens the server counted."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    cached: bool = False
    """True when the answer came from the on-disk cache (nothing paid for it this time)."""

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class LLMError(Exception):
    """A failed request; `retryable` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class LLM(Protocol):
    """Any backend: one coroutine per request, safe to call concurrently."""

    name: str
    """Model name as recorded in story records (`source`)."""

    async def complete(self, request: Request) -> Completion: ...

    async def aclose(self) -> None: ...


def worst_case_tokens(request: Request) -> int:
    """An upper bound on the tokens a request can be billed for.

    A byte-level BPE token is at least one byte, so the UTF-8 length bounds the
    prompt; 8 tokens per chat message cover the chat template's markers.
    """
    n_msgs = len(request.messages) if request.messages is not None else 0
    return len(request.text().encode("utf-8")) + 8 * n_msgs + 8 + request.max_tokens


class RateLimiter:
    """Requests-per-minute and tokens-per-minute caps (0 = no cap), as token buckets refilled continuously."""

    def __init__(self, rpm: float = 0, tpm: float = 0, clock: Callable[[], float] = time.monotonic):
        self.rpm, self.tpm, self.clock = rpm, tpm, clock
        # Start full, as providers do: a burst of one minute's allowance is fine.
        self._req, self._tok = float(rpm), float(tpm)
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        dt, self._last = now - self._last, now
        if self.rpm:
            self._req = min(self.rpm, self._req + dt * self.rpm / 60)
        if self.tpm:
            self._tok = min(self.tpm, self._tok + dt * self.tpm / 60)

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of `tokens` tokens fits under both caps, then take it."""
        if not self.rpm and not self.tpm:
            return
        tokens = min(tokens, int(self.tpm)) if self.tpm else 0  # a request larger than the cap still goes
        # One waiter at a time, so requests are admitted in arrival order.
        async with self._lock:
            while True:
                self._refill()
                need_r = 1 - self._req if self.rpm else 0
                need_t = tokens - self._tok if self.tpm else 0
                if need_r <= 0 and need_t <= 0:
                    if self.rpm:
                        self._req -= 1
                    if self.tpm:
                        self._tok -= tokens
                    return
                wait = max(
                    need_r * 60 / self.rpm if self.rpm else 0, need_t * 60 / self.tpm if self.tpm else 0
                )
                await asyncio.sleep(wait)


@dataclass
class RetryPolicy:
    """How often and how patiently to retry a failed request."""

    retries: int = 6
    """Retries after the first try (so `retries + 1` tries at most)."""
    base: float = 1.0
    """First backoff in seconds; doubled each retry, with full jitter."""
    cap: float = 60.0
    """Longest single wait in seconds (a longer Retry-After is still honoured)."""
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Wait before retry number `attempt` (0-based): jittered backoff, at least Retry-After."""
        backoff = self.rng.uniform(0, min(self.cap, self.base * 2**attempt))
        return max(backoff, retry_after or 0.0)


async def call_with_retries(
    fn: Callable[[], Awaitable[Completion]],
    policy: RetryPolicy,
    on_retry: Callable[[LLMError, float], None] | None = None,
) -> Completion:
    """`await fn()`, retrying retryable `LLMError`s as the policy says; the last error is raised."""
    for attempt in range(policy.retries + 1):
        try:
            return await fn()
        except LLMError as e:
            if not e.retryable or attempt == policy.retries:
                raise
            wait = policy.delay(attempt, e.retry_after)
            if on_retry:
                on_retry(e, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
