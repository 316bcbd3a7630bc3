"""Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server, Ollama) through the `openai` SDK.

The API key is read from an environment variable at start-up and held only in
memory: it is never written to job files, caches or logs. The SDK's own retries
are off; `base.call_with_retries` does them, so that `Retry-After` and the job's
budget see every attempt.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from typing import Any

from tinystories.errors import UserError
from tinystories.llm.base import Completion, LLMError, Request

POOL_SIZE = 32
"""Connections per HTTP pool."""


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def api_key_from_env(env: str, base_url: str | None) -> str:
    """The key in `$env`; a local server (base URL given) may run without one."""
    key = os.environ.get(env, "")
    if key:
        return key
    if base_url:
        return "unused"  # the SDK insists on some key; local servers ignore it
    raise UserError(f"no API key: set the environment variable {env} (or pass --base-url for a local server)")


class OpenAICompat:
    """`LLM` over the openai SDK's AsyncOpenAI: chat completions, or plain completions with chat=False."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        chat: bool = True,
        timeout: float = 120.0,
        max_connections: int = 64,
    ):
        try:
            import openai
        except ImportError:
            raise UserError("the openai package is missing: pip install openai") from None
        try:  # openai 3 runs on httpx2, older releases on httpx
            import httpx2 as httpx
        except ImportError:
            import httpx  # type: ignore[no-redef,import-not-found]
        self.name = model
        self.chat = chat
        self._openai = openai
        self._httpx = httpx
        key = api_key_from_env(api_key_env, base_url)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        try:
            # aiohttp as the SDK's transport (extra openai[aiohttp]): the SDK's advice for high
            # concurrency, and a fraction of httpx's CPU per request at hundreds of connections.
            http = openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
            pools = [http]
        except RuntimeError:
            # httpx's pool scans all its connections whenever a request starts or ends (O(connections)
            # CPU per request); several small pools used in turn keep that scan short.
            n_pools = max(1, -(-max_connections // POOL_SIZE))
            per = -(-max_connections // n_pools)
            pools = [
                openai.DefaultAsyncHttpxClient(
                    limits=httpx.Limits(max_connections=per, max_keepalive_connections=per), timeout=timeout
                )
                for _ in range(n_pools)
            ]
        self.clients = [
            openai.AsyncOpenAI(
                base_url=base_url or None, api_key=key, timeout=timeout, max_retries=0, http_client=http
            )
            for http in pools
        ]
        # The SDK's telemetry headers (platform, versions, retry count, timeout) are left out, removed
        # the SDK's own way (Omit): no server needs them, and every header costs CPU in each layer of
        # the SDK's request building, which is most of the client's CPU per story at high concurrency.
        telemetry = [h for h in self.clients[0].default_headers if h.lower().startswith("x-stainless")]
        telemetry += ["X-Stainless-Retry-Count", "X-Stainless-Read-Timeout"]
        self._options: dict[str, Any] = {"headers": dict.fromkeys(telemetry, openai.Omit())}
        self._next = 0

    def _client(self) -> Any:
        self._next = (self._next + 1) % len(self.clients)
        return self.clients[self._next]

    async def complete(self, request: Request) -> Completion:
        oa = self._openai
        params: dict[str, Any] = {
            "model": self.name,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            params["seed"] = request.seed
        client = self._client()
        # The SDK's generic `post` (its documented route for any endpoint) with the body as we built it:
        # the typed `create` spends more CPU converting the request and response than the HTTP exchange.
        if self.chat:
            path = "/chat/completions"
            params["messages"] = request.messages or [{"role": "user", "content": request.prompt or ""}]
        else:
            path = "/completions"
            params["prompt"] = request.prompt if request.prompt is not None else request.text()
        try:
            raw = await client.post(path, cast_to=self._httpx.Response, body=params, options=self._options)
            body = json.loads(raw.content)
            choice = body["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
        except oa.APIStatusError as e:
            code = e.status_code
            retryable = code in (408, 409, 429) or code >= 500
            raise LLMError(
                f"HTTP {code} from the server: {_short(e.message)}",
                retryable=retryable,
                retry_after=_retry_after(e.response.headers) if e.response is not None else None,
            ) from None
        except oa.APITimeoutError as e:
            cause = e.__cause__
            # The aiohttp transport reports a refused connection as a connect timeout: say which it was.
            if cause is not None and "Connect" in type(cause).__name__:
                raise LLMError(f"connection failed: {_short(str(cause))}", retryable=True) from None
            raise LLMError("request timed out", retryable=True) from None
        except oa.APIConnectionError as e:
            raise LLMError(f"connection failed: {_short(str(e))}", retryable=True) from None
        except (
            oa.APIResponseValidationError,
            ValueError,
            KeyError,
            IndexError,
            AttributeError,
            TypeError,
        ) as e:
            # Malformed JSON or a body without the fields a completion has.
            raise LLMError(f"malformed response: {type(e).__name__}", retryable=True) from None
        if not isinstance(text, str):
            raise LLMError("malformed response: no text in the first choice", retryable=True)
        usage = body.get("usage") or {}
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=body.get("model") or self.name,
        )

    async def aclose(self) -> None:
        for c in self.clients:
            await c.close()


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."
