"""Choosing and building an LLM backend from command-line settings (used by `synth` and `eval judge`).

Backends: `openai` (any OpenAI-compatible endpoint through the openai SDK:
OpenAI, vLLM, llama.cpp's server, Ollama) and `local` (a model file or folder
loaded into this process). `auto` means `openai` as soon as a model is named,
else the caller's offline choice (the procedural engine for `synth`).
"""

from __future__ import annotations

from typing import Any

from tinystories.errors import UserError
from tinystories.llm.local import LocalLLM
from tinystories.llm.openai_compat import OpenAICompat

LLM_BACKENDS = ("openai", "local")


def choose_backend(
    backend: str, model: str, *, offline: str | None = None, model_flag: str = "--model", need_model: bool = True
) -> str:
    """The backend `backend` stands for: `auto` resolved, unknown names and a missing model refused.

    `offline` is the backend that needs no model (None: there is none); with
    `need_model=False` an LLM backend may go without a model for now (a resumed
    job reads it from its own files).
    """
    known = (*([offline] if offline else []), *LLM_BACKENDS)
    if backend == "auto":
        if model:
            return "openai"
        if offline:
            return offline
        raise UserError(f"no model to ask: pass {model_flag} (a model name the endpoint serves, or a model file)")
    if backend not in known:
        raise UserError(f"backend {backend!r} is not available; choose one of: auto, {', '.join(known)}")
    if backend != offline and not model and need_model:
        raise UserError(
            f"backend {backend!r} is not available without {model_flag} "
            "(the model name the endpoint serves, or a model file for --backend local)"
        )
    return backend


def make_client(
    backend: str,
    model: str,
    *,
    base_url: str = "",
    api_key_env: str = "OPENAI_API_KEY",
    chat: bool = True,
    timeout: float = 120.0,
    concurrency: int = 16,
    seed: int = 0,
) -> Any:
    """An `LLM` for an LLM backend (`openai` or `local`, as `choose_backend` returns)."""
    if backend == "local":
        return LocalLLM(model, seed=seed)
    if backend != "openai":
        raise UserError(f"backend {backend!r} is not an LLM backend; choose one of: {', '.join(LLM_BACKENDS)}")
    return OpenAICompat(
        model,
        base_url=base_url or None,
        api_key_env=api_key_env,
        chat=chat,
        timeout=timeout,
        max_connections=concurrency,
    )
