"""Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server, Ollama) through the `openai` SDK.

The API key is read from an environment variable at start-up and held only in
memory: it is never written to job files, caches or logs. The SDK's own retries
are off; `base.call_with_retries` does them, so that `Retry-After` and the job's
budget see every attempt.
"""

from __future__ import annotations

import email.utils
import os
import time
from typing import Any

from tinystories.errors import UserError
from tinystories.llm.base import Completion, LLMError, Request


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
            import httpx
        self.name = model
        self.chat = chat
        self._openai = openai
        http = openai.DefaultAsyncHttpxClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=timeout,
        )
        self.client = openai.AsyncOpenAI(
            base_url=base_url or None,
            api_key=api_key_from_env(api_key_env, base_url),
            timeout=timeout,
            max_retries=0,
            http_client=http,
        )

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
        try:
            if self.chat:
                messages = request.messages or [{"role": "user", "content": request.prompt or ""}]
                resp = await self.client.chat.completions.create(messages=messages, **params)
                choice = resp.choices[0]
                text = choice.message.content
            else:
                prompt = request.prompt if request.prompt is not None else request.text()
                resp = await self.client.completions.create(prompt=prompt, **params)
                choice = resp.choices[0]
                text = choice.text
        except oa.APIStatusError as e:
            code = e.status_code
            retryable = code in (408, 409, 429) or code >= 500
            raise LLMError(
                f"HTTP {code} from the server: {_short(e.message)}",
                retryable=retryable,
                retry_after=_retry_after(e.response.headers) if e.response is not None else None,
            ) from None
        except oa.APITimeoutError:
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
        usage = getattr(resp, "usage", None)
        return Completion(
            text=text,
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            model=getattr(resp, "model", "") or self.name,
        )

    async def aclose(self) -> None:
        await self.client.close()


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."
