"""Checking the request bodies of `tinystories serve`, field by field, before any work is queued.

A wrong type, an unknown field or a value over a limit is an `ApiError`,
answered with a 4xx in OpenAI's error shape,
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from tinystories.serve.config import ServeConfig

MAX_STOP = 4
"""Stop strings per request at most (as OpenAI's API)."""
MAX_TOP_LOGPROBS = 5
"""Alternatives per token at most (`logprobs` of /v1/completions, `top_logprobs` of chat)."""


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


def bad_param(param: str, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


def _int(lo: int, hi: int | None = None, limit: str | None = None) -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad_param(name, f"expected an integer, got {_type_name(v)}")
        if v < lo:
            raise bad_param(name, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            why = f" (the server's {limit})" if limit else ""
            raise bad_param(name, f"must be <= {hi}{why}, got {v}")
        return v
    return check


def _num(lo: float, hi: float, lo_open: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise bad_param(name, f"expected a number, got {_type_name(v)}")
        v = float(v)
        if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
            raise bad_param(name, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v:g}")
        return v
    return check


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise bad_param(name, f"expected a boolean, got {_type_name(v)}")
    return v


def _str(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise bad_param(name, f"expected a string, got {_type_name(v)}")
    return v


def _zero(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v != 0:
        raise bad_param(name, "only 0 is supported", code="unsupported_value")
    return 0.0


def _empty(name: str, v: Any) -> None:
    if v not in (None, {}, ""):
        raise bad_param(name, "not supported", code="unsupported_value")


def _stop(name: str, v: Any) -> list[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad_param(name, "expected a string or an array of strings")
    if len(items) > MAX_STOP:
        raise bad_param(name, f"at most {MAX_STOP} stop strings, got {len(items)}")
    if any(s == "" for s in items):
        raise bad_param(name, "stop strings must not be empty")
    return items


def _stream_options(name: str, v: Any) -> bool:
    if not isinstance(v, dict) or set(v) - {"include_usage"}:
        raise bad_param(name, 'expected {"include_usage": true|false}')
    return _bool(name + ".include_usage", v.get("include_usage", False))


def _prompt(name: str, v: Any) -> list[str | list[int]]:
    """A string, an array of strings, an array of token ids, or an array of arrays of token ids."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v:
        if all(isinstance(x, str) for x in v):
            return list(v)
        if all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return [list(v)]
        if all(isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
               for x in v):
            return [list(x) for x in v]
    raise bad_param(name, "expected a string, an array of strings, or (arrays of) token ids")


def _messages(name: str, v: Any) -> list[dict[str, str]]:
    if not isinstance(v, list) or not v:
        raise bad_param(name, "expected a non-empty array of messages")
    out = []
    for i, m in enumerate(v):
        where = f"{name}[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise bad_param(where, 'expected {"role": ..., "content": ...}')
        if set(m) - {"role", "content", "name"}:
            raise bad_param(where, f"unknown field(s) {', '.join(sorted(set(m) - {'role', 'content', 'name'}))}")
        if m["role"] not in ("system", "developer", "user", "assistant"):
            raise bad_param(where + ".role", f"unknown role {m['role']!r}")
        content = m["content"]
        if isinstance(content, list):  # content parts: only text parts mean something to a story model
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad_param(where + ".content", "only text content parts are supported")
            content = "".join(p["text"] for p in content)
        elif not isinstance(content, str):
            raise bad_param(where + ".content", f"expected a string, got {_type_name(content)}")
        out.append({"role": m["role"], "content": content})
    return out


def check_body(body: dict[str, Any], spec: dict[str, tuple[Callable[[str, Any], Any], Any]]) -> dict[str, Any]:
    """Each field of `body` through its checker; absent or null fields take their default; unknown ones fail."""
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", param=unknown[0], code="unknown_field")
    out = {}
    for name, (check, default) in spec.items():
        v = body.get(name)
        out[name] = default if v is None else check(name, v)
    return out


def _common_spec(cfg: ServeConfig) -> dict[str, tuple[Callable[[str, Any], Any], Any]]:
    return {
        "model": (_str, None),
        "temperature": (_num(0.0, 2.0), 1.0),
        "top_p": (_num(0.0, 1.0, lo_open=True), 1.0),
        "top_k": (_int(0), 0),
        "n": (_int(1, cfg.max_n, "--max-n"), 1),
        "stop": (_stop, []),
        "seed": (_int(-(2**63), 2**63 - 1), None),
        "stream": (_bool, False),
        "stream_options": (_stream_options, False),
        "user": (_str, None),
        "presence_penalty": (_zero, 0.0),
        "frequency_penalty": (_zero, 0.0),
        "logit_bias": (lambda n, v: _empty(n, v), None),
    }


def completion_spec(cfg: ServeConfig) -> dict[str, tuple[Callable[[str, Any], Any], Any]]:
    return {
        **_common_spec(cfg),
        "prompt": (_prompt, [""]),
        "max_tokens": (_int(1, cfg.max_tokens, "--max-tokens"), 16),
        "logprobs": (_int(0, MAX_TOP_LOGPROBS), None),
        "echo": (_bool, False),
        "best_of": (_int(1), None),
        "suffix": (lambda n, v: _empty(n, v), None),
    }


def chat_spec(cfg: ServeConfig) -> dict[str, tuple[Callable[[str, Any], Any], Any]]:
    return {
        **_common_spec(cfg),
        "messages": (_messages, None),
        "max_tokens": (_int(1, cfg.max_tokens, "--max-tokens"), None),
        "max_completion_tokens": (_int(1, cfg.max_tokens, "--max-tokens"), None),
        "logprobs": (_bool, False),
        "top_logprobs": (_int(0, MAX_TOP_LOGPROBS), None),
    }


def attention_spec() -> dict[str, tuple[Callable[[str, Any], Any], Any]]:
    return {"model": (_str, None), "text": (_str, ""), "layer": (_int(0), 0), "head": (_int(0), 0)}


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"request body of {size} bytes is over the server's limit of {limit}",
                       code="request_too_large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is over the server's limit of {limit} bytes", code="request_too_large")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON in the request body: {e}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_type_name(obj)}", code="invalid_json")
    return obj
