"""`tinystories serve`: an OpenAI-compatible HTTP server and a story playground for trained runs.

- `config.py`: `ServeConfig` and the API key.
- `engine.py`: the model worker (continuous batching over `sample.Sampler`).
- `remote.py`: the worker in an engine process of its own, and the HTTP side's handle on it.
- `api.py`: the Starlette app (OpenAI-shaped answers and errors, streaming).
- `requests.py`: checking request bodies field by field.
- `choices.py`: a choice's text and log-probabilities as its tokens arrive.
- `static/`: the playground page served at `/`.

Starlette and uvicorn come with the `[serve]` extra and are imported only here.
"""

from __future__ import annotations

from tinystories.errors import UserError
from tinystories.serve.config import ServeConfig, api_key

__all__ = ["ServeConfig", "api_key", "serve"]


def serve(cfg: ServeConfig) -> None:
    """Run the server until interrupted."""
    try:
        import uvicorn

        from tinystories.serve.api import build_app
    except ImportError as e:
        raise UserError(f"serving needs the [serve] extra: pip install 'tinystories[serve]' ({e.name} is missing)") from None
    app = build_app(cfg)
    # uvicorn takes httptools (the [serve] extra has it) over h11 by itself; uvloop, were it installed,
    # measured slower than asyncio's own loop here (the worker hands the loop a turn after every step).
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, loop="asyncio")
