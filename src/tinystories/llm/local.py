"""An in-process model: a GGUF file through llama.cpp (`[llama]` extra), or a Hugging Face model folder.

Generation runs in a worker thread, one request at a time (one model, one
set of weights), so the event loop stays free for writing results.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from tinystories.errors import UserError
from tinystories.llm.base import Completion, LLMError, Request


class LocalLLM:
    """`LLM` over a model loaded into this process."""

    def __init__(self, model: str, *, n_ctx: int = 2048, threads: int | None = None, seed: int = 0):
        path = Path(model)
        if not path.exists():
            raise UserError(f"--model {model}: no such file or folder (the local backend needs a model path)")
        self.name = path.stem if path.is_file() else path.name
        self._lock = threading.Lock()
        if path.suffix == ".gguf":
            try:
                import llama_cpp
            except ImportError:
                self._kind, self._model, self._tok = "hf", *_load_hf(path)
            else:
                self._kind = "llama"
                # One thread per physical core (about half the logical ones): more threads than
                # free cores make llama.cpp's spinning workers slower, not faster.
                n_threads = threads or max(1, (os.cpu_count() or 2) // 2)
                self._model = llama_cpp.Llama(
                    model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, seed=seed, verbose=False
                )
        else:
            self._kind, self._model, self._tok = "hf", *_load_hf(path)

    def _generate(self, request: Request) -> Completion:
        with self._lock:
            if self._kind == "llama":
                return self._llama(request)
            return self._hf(request)

    def _llama(self, request: Request) -> Completion:
        params: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            params["seed"] = request.seed
        if request.messages is not None:
            out = self._model.create_chat_completion(messages=request.messages, **params)
            text = out["choices"][0]["message"]["content"]
        else:
            out = self._model.create_completion(prompt=request.prompt or "", **params)
            text = out["choices"][0]["text"]
        usage = out.get("usage") or {}
        return Completion(
            text=text or "",
            finish_reason=out["choices"][0].get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            model=self.name,
        )

    def _hf(self, request: Request) -> Completion:
        import torch

        tok = self._tok
        if request.messages is not None and getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(request.messages, add_generation_prompt=True, return_tensors="pt")
            if not isinstance(ids, torch.Tensor):  # newer transformers return a BatchEncoding
                ids = ids["input_ids"]
        else:
            ids = tok(request.text(), return_tensors="pt")["input_ids"]
        if request.seed is not None:
            torch.manual_seed(request.seed)
        with torch.no_grad():
            out = self._model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=request.max_tokens,
                do_sample=request.temperature > 0,
                temperature=request.temperature if request.temperature > 0 else None,
                top_p=request.top_p,
                pad_token_id=tok.eos_token_id,
            )
        new = out[0, ids.shape[1] :]
        finished = tok.eos_token_id is not None and bool((new == tok.eos_token_id).any())
        return Completion(
            text=tok.decode(new, skip_special_tokens=True),
            finish_reason="stop" if finished or len(new) < request.max_tokens else "length",
            prompt_tokens=int(ids.shape[1]),
            completion_tokens=len(new),
            model=self.name,
        )

    async def complete(self, request: Request) -> Completion:
        try:
            return await asyncio.to_thread(self._generate, request)
        except (RuntimeError, ValueError) as e:
            raise LLMError(f"local model failed: {e}", retryable=False) from None

    async def aclose(self) -> None:
        return None


def _load_hf(path: Path) -> tuple[Any, Any]:
    """A transformers model and tokenizer from a folder, or from a GGUF file (needs the `gguf` package)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise UserError("the local backend needs llama-cpp-python (extra [llama]) or transformers") from None
    try:
        if path.suffix == ".gguf":
            kw = {"gguf_file": path.name}
            return (
                AutoModelForCausalLM.from_pretrained(str(path.parent), **kw).eval(),
                AutoTokenizer.from_pretrained(str(path.parent), **kw),
            )
        return AutoModelForCausalLM.from_pretrained(str(path)).eval(), AutoTokenizer.from_pretrained(
            str(path)
        )
    except (OSError, ValueError, ImportError) as e:
        raise UserError(f"cannot load model {path}: {e}") from None
