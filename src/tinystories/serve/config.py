"""The server's settings (`ServeConfig`) and its API key, apart from the app so every part can import them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from tinystories.config import check
from tinystories.errors import UserError

AT_LEAST_1 = {"min": 1}


@dataclass
class ServeConfig:
    """`tinystories serve`: serve runs over an OpenAI-compatible API, with a playground at `/`."""

    run: tuple[str, ...] = field(default=(), metadata={"repeat": True})
    """Run folder(s) to serve (repeat --run for several); each is named after its folder."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 opens the server to the network)."""
    port: int = 8000
    """TCP port."""
    api_key_env: str | None = None
    """Name of an environment variable holding the API key clients must send as `Authorization: Bearer <key>`."""
    device: str = "auto"
    """Torch device of the models: auto (CUDA when present, else the CPU), cpu, cuda, cuda:1."""
    step: int | None = None
    """Checkpoint step to load; default = the latest of each run."""
    max_streams: int = field(default=64, metadata=AT_LEAST_1)
    """Sequences decoded together per model (the running batch); more wait in the queue."""
    max_queue: int = field(default=256, metadata=AT_LEAST_1)
    """Sequences that may wait for a free batch row; a request that does not fit gets 429."""
    max_prompt_tokens: int = field(default=1024, metadata=AT_LEAST_1)
    """Most tokens in one prompt (also cut to the model's context); more gets 400."""
    max_tokens: int = field(default=1024, metadata=AT_LEAST_1)
    """Most new tokens one choice may ask for (`max_tokens`); more gets 400."""
    max_n: int = field(default=8, metadata=AT_LEAST_1)
    """Most choices per request (`n`, times the number of prompts); more gets 400."""
    max_body_bytes: int = field(default=1_000_000, metadata=AT_LEAST_1)
    """Largest request body; more gets 413."""
    step_slice_ms: float = 20.0
    """Decode steps run for at least this long before the server sends what they made (longer: more tokens per event)."""
    max_events_per_s: float = field(default=1000.0, metadata={"min": 1})
    """Stream events sent per second in all, at most: with many live streams the slice grows to keep under it."""
    engine: Literal["process", "inline"] = "process"
    """Where the model steps: `process`, a process of its own (the HTTP work runs meanwhile, on another core);
    `inline`, the HTTP process's event loop (one process, one core)."""
    log_level: str = "info"
    """uvicorn's log level (critical, error, warning, info, debug)."""

    def __post_init__(self) -> None:
        check(self)
        if not 0 <= self.port < 65536:
            raise UserError(f"--port must be in 0..65535, got {self.port}")


def api_key(cfg: ServeConfig) -> str | None:
    """The key clients must send, read from the environment variable cfg.api_key_env (None = no key)."""
    if cfg.api_key_env is None:
        return None
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise UserError(f"--api-key-env {cfg.api_key_env}: that environment variable is not set or empty")
    return key
