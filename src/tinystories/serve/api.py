"""The HTTP side of `tinystories serve`: OpenAI-shaped endpoints over the model worker.

Every request body is checked field by field before any work is queued
(`requests.py`); a mistake is answered with a 4xx in OpenAI's error shape. A
request's choices are queued as jobs for the worker (`engine.py`); their token
events come back on the event loop, are turned into text (`choices.py`) and are sent as
server-sent events or gathered into one answer. A client that goes away cancels
its jobs, which frees their rows before the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tinystories import rundir
from tinystories.errors import UserError
from tinystories.interp.hooks import capture
from tinystories.sample import (
    IncrementalDecoder,
    SampleParams,
    Sampler,
    StepEvent,
    prompt_ids,
)
from tinystories.serve.choices import Choice, chat_logprobs, completion_logprobs
from tinystories.serve.config import ServeConfig, api_key
from tinystories.serve.engine import Job, QueueFull, Worker
from tinystories.serve.remote import RemoteWorker
from tinystories.serve.requests import (
    ApiError,
    attention_spec,
    bad_param,
    chat_spec,
    check_body,
    completion_spec,
    read_json_body,
)

log = logging.getLogger("tinystories.serve")
STATIC = Path(__file__).parent / "static"


def _error_response(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


# --- the served models ---------------------------------------------------------------


@dataclass
class Served:
    name: str
    model: Any
    tokenizer: Any
    step: int
    created: int

    @property
    def context(self) -> int:
        return self.model.config.max_seq_len


@dataclass
class State:
    cfg: ServeConfig
    key: str | None
    runs: dict[str, Path]
    models: dict[str, Served] = field(default_factory=dict)
    worker: Worker | RemoteWorker | None = None
    load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.worker is not None


def _run_names(runs: tuple[str, ...]) -> dict[str, Path]:
    if not runs:
        raise UserError("--run is required: the run folder(s) to serve")
    out: dict[str, Path] = {}
    for r in runs:
        path = Path(r)
        if not path.is_dir():
            raise UserError(f"no run folder at {path}")
        rundir.find_checkpoint(path)  # a clear error now rather than after the server started
        name = path.resolve().name
        if name in out:
            raise UserError(f"two runs are named {name!r} (models are named after their folders)")
        out[name] = path
    return out


def _load(state: State, loop: asyncio.AbstractEventLoop) -> None:
    """Load every run on a thread (/health answers 503 meanwhile), then start the worker on the loop.

    The HTTP side keeps its own copy of each model (names, tokenizer, the attention view); with
    `--engine process` the engine process loads the runs again and does all the generating.
    """
    cfg = state.cfg
    try:
        for name, path in state.runs.items():
            loaded = rundir.load_run(path, step=cfg.step, device=cfg.device)
            state.models[name] = Served(name, loaded.model, loaded.tokenizer, loaded.step, int(time.time()))
        worker: Worker | RemoteWorker
        if cfg.engine == "process":
            worker = RemoteWorker({name: str(path) for name, path in state.runs.items()}, cfg.step, cfg.device,
                                  cfg.max_streams, cfg.max_queue, cfg.step_slice_ms / 1000, cfg.max_events_per_s,
                                  torch.get_num_threads())
            worker.on_exit = functools.partial(setattr, state, "load_error")
        else:
            samplers = {name: Sampler(m.model, cfg.max_streams, eot_id=m.tokenizer.eot_id)
                        for name, m in state.models.items()}
            worker = Worker(samplers, cfg.max_queue, cfg.step_slice_ms / 1000, cfg.max_events_per_s)
    except Exception as e:  # reported by /health and every request
        state.load_error = f"{type(e).__name__}: {e}"
        log.error("loading failed: %s", state.load_error)
        return

    def start() -> None:  # on the event loop, which the worker (or its handle) runs on
        # Everything loaded so far (torch, the models) lives as long as the server: moved out of the
        # garbage collector's way, a full collection under load takes a few ms instead of ~0.1 s.
        gc.freeze()
        worker.start()
        state.worker = worker
        log.info("serving %s (engine: %s)", ", ".join(state.models), cfg.engine)

    loop.call_soon_threadsafe(start)


def _put(queue: asyncio.Queue, index: int, events: list[StepEvent] | BaseException) -> None:
    # A job's delivery, run on the event loop: its events (or the error that ended it), tagged with its choice.
    queue.put_nowait((index, events))


def _sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON object."""
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


class _TextChunks:
    """A stream's events without log-probabilities, as `_sse` writes them, from a template made once per stream.

    Under load an event carries a few tokens, and building its dict and encoding
    it whole cost about as much as the tokens' share of a decode step.
    """

    def __init__(self, meta: dict[str, Any], obj: str, kind: str):
        self.head = "data: " + json.dumps({**meta, "object": obj}, separators=(",", ":"))[:-1] + ',"choices":[{"index":'
        self.chat = kind == "chat"

    def __call__(self, index: int, text: str, finish: str | None) -> str:
        if not self.chat:
            body = ',"text":' + json.dumps(text)
        elif text or finish is None:
            body = ',"delta":{"content":' + json.dumps(text) + "}"
        else:
            body = ',"delta":{}'
        end = "null" if finish is None else json.dumps(finish)
        return f'{self.head}{index}{body},"logprobs":null,"finish_reason":{end}}}]}}\n\n'


# --- the endpoints --------------------------------------------------------------------


_INSTRUCT_FIELD = re.compile(r"^(Features|Words|Random sentence|Summary) ?:", re.MULTILINE)


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The story prompt of a conversation: the last user message.

    A message with TinyStories-Instruct fields (`Words: ...`, `Summary: ...`)
    becomes an Instruct entry ending in `Story:` (the model writes the story, as
    it read Instruct records in training); any other message is a story beginning.
    """
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise bad_param("messages", "no user message: the last user message is the story prompt")
    text = users[-1].strip()
    if _INSTRUCT_FIELD.search(text) and "Story:" not in text:
        text += "\nStory:"
    return text


class Api:
    def __init__(self, state: State):
        self.state = state

    # helpers

    def _auth(self, request: Request) -> None:
        key = self.state.key
        if key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                           type_="authentication_error")
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key", type_="authentication_error")

    def _worker(self) -> Worker | RemoteWorker:
        s = self.state
        if s.load_error is not None:
            raise ApiError(503, f"the models failed to load: {s.load_error}", type_="server_error",
                           code="model_load_failed")
        if s.worker is None:
            raise ApiError(503, "the models are still loading; try again shortly", type_="server_error",
                           code="loading")
        return s.worker

    def _model(self, name: str | None) -> Served:
        if name is None:
            raise bad_param("model", "required: one of " + ", ".join(self.state.runs))
        served = self.state.models.get(name)
        if served is None:
            raise ApiError(404, f"the model {name!r} does not exist; served: {', '.join(self.state.runs)}",
                           param="model", code="model_not_found")
        return served

    def _encode(self, served: Served, prompt: str | list[int]) -> list[int]:
        tok = served.tokenizer
        ids = prompt_ids(tok, prompt) if isinstance(prompt, str) else prompt
        if isinstance(prompt, list) and (min(ids) < 0 or max(ids) >= tok.vocab_size):
            raise bad_param("prompt", f"token ids must be in [0, {tok.vocab_size})")
        limit = min(self.state.cfg.max_prompt_tokens, served.context - 1)
        if len(ids) > limit:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; at most {limit} fit (model context "
                           f"{served.context}, --max-prompt-tokens {self.state.cfg.max_prompt_tokens})",
                           param="prompt", code="context_length_exceeded")
        return ids

    async def _start(self, request: Request, kind: str) -> tuple[dict[str, Any], Served, Worker | RemoteWorker]:
        self._auth(request)
        body = await read_json_body(request, self.state.cfg.max_body_bytes)
        args = check_body(body, completion_spec(self.state.cfg) if kind == "completion" else chat_spec(self.state.cfg))
        worker = self._worker()
        served = self._model(args["model"])
        return args, served, worker

    # endpoints

    async def models(self, request: Request) -> Response:
        self._auth(request)
        self._worker()
        data = [{"id": m.name, "object": "model", "created": m.created, "owned_by": "tinystories",
                 "context_length": m.context, "n_layer": m.model.config.n_layer,
                 "n_head": m.model.config.n_head, "step": m.step} for m in self.state.models.values()]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        s = self.state
        if s.load_error is not None:
            return JSONResponse({"status": "error", "error": s.load_error}, status_code=503)
        if s.worker is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(s.models), "running": s.worker.live(),
                             "waiting": s.worker.waiting()})

    async def completions(self, request: Request) -> Response:
        args, served, worker = await self._start(request, "completion")
        if args["best_of"] not in (None, args["n"]):
            raise bad_param("best_of", "only best_of == n is supported", code="unsupported_value")
        prompts = [self._encode(served, p) for p in args["prompt"]]
        if len(prompts) * args["n"] > self.state.cfg.max_n:
            raise bad_param("n", f"{len(prompts)} prompts x n={args['n']} choices is over the server's --max-n "
                       f"{self.state.cfg.max_n}")
        lp = args["logprobs"]
        echo = [served.tokenizer.decode(p) if args["echo"] else "" for p in prompts]
        return await self._run(request, served, worker, args, prompts, args["max_tokens"], lp, "completion", echo)

    async def chat(self, request: Request) -> Response:
        args, served, worker = await self._start(request, "chat")
        if args["messages"] is None:
            raise bad_param("messages", "required")
        text = chat_prompt(args["messages"])
        prompts = [self._encode(served, text)]
        max_tokens = args["max_completion_tokens"] or args["max_tokens"] or self.state.cfg.max_tokens
        lp = (args["top_logprobs"] or 0) if args["logprobs"] else None
        if args["top_logprobs"] is not None and not args["logprobs"]:
            raise bad_param("top_logprobs", "needs logprobs: true")
        return await self._run(request, served, worker, args, prompts, max_tokens, lp, "chat", [""])

    async def attention(self, request: Request) -> Response:
        """Attention of every token over the text, for one layer and head (from the hook site)."""
        self._auth(request)
        body = await read_json_body(request, self.state.cfg.max_body_bytes)
        args = check_body(body, attention_spec())
        self._worker()
        served = self._model(args["model"])
        cfg = served.model.config
        if args["layer"] >= cfg.n_layer:
            raise bad_param("layer", f"the model has {cfg.n_layer} layers (0..{cfg.n_layer - 1})")
        if args["head"] >= cfg.n_head:
            raise bad_param("head", f"the model has {cfg.n_head} heads (0..{cfg.n_head - 1})")
        ids = prompt_ids(served.tokenizer, args["text"])[: served.context]

        def run() -> list[list[float]]:
            site = f"blocks.{args['layer']}.attn.hook_pattern"
            pattern = capture(served.model, [ids], [site])[site][0][args["head"]]  # (T, T)
            return [[round(x, 4) for x in row[: i + 1]] for i, row in enumerate(pattern.tolist())]

        rows = run()  # on the loop's thread, between two slices of decode steps
        decoder = IncrementalDecoder(served.tokenizer.decode, ids[:1])
        pieces = ["\u2039start\u203a"] + [decoder.push(t) for t in ids[1:]]
        return JSONResponse({"model": served.name, "layer": args["layer"], "head": args["head"],
                             "tokens": pieces, "attention": rows})

    # generation

    async def _run(self, request: Request, served: Served, worker: Worker | RemoteWorker, args: dict[str, Any],
                   prompts: list[list[int]], max_tokens: int, logprobs: int | None, kind: str,
                   echo: list[str]) -> Response:
        queue: asyncio.Queue[tuple[int, list[StepEvent] | BaseException]] = asyncio.Queue()
        choices: list[Choice] = []
        jobs: list[Job] = []
        n = args["n"]
        for p_index, ids in enumerate(prompts):
            for k in range(n):
                i = p_index * n + k
                seed = None if args["seed"] is None else args["seed"] + i  # as `tinystories sample`: seed + i
                try:
                    params = SampleParams(args["temperature"], args["top_k"], args["top_p"], max_tokens,
                                          seed=seed, logprobs=logprobs)
                except UserError as e:
                    raise ApiError(400, str(e)) from None
                choices.append(Choice(i, served.tokenizer, ids, args["stop"], logprobs is not None))
                jobs.append(Job(ids, params, functools.partial(_put, queue, i)))
        try:
            worker.submit(served.name, jobs)
        except QueueFull as e:
            raise ApiError(429, str(e), code="queue_full", type_="rate_limit_error") from None
        meta = {"id": ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex[:24],
                "created": int(time.time()), "model": served.name}
        usage_prompt = sum(len(p) for p in prompts)
        if args["stream"]:
            gen = self._stream(worker, jobs, choices, queue, meta, kind, echo, n, args["stream_options"], usage_prompt)
            return StreamingResponse(gen, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._gather(request, worker, jobs, choices, queue, meta, kind, echo, n, usage_prompt)

    @staticmethod
    def _usage(choices: list[Choice], prompt_tokens: int) -> dict[str, int]:
        done = sum(c.tokens for c in choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}

    async def _gather(self, request: Request, worker: Worker | RemoteWorker, jobs: list[Job], choices: list[Choice],
                      queue: asyncio.Queue, meta: dict[str, Any], kind: str, echo: list[str], n: int,
                      prompt_tokens: int) -> Response:
        async def until_disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watch = asyncio.ensure_future(until_disconnect())
        try:
            while any(c.finish is None for c in choices):
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait([get, watch], return_when=asyncio.FIRST_COMPLETED)
                if watch.done():  # checked first: while tokens keep coming, `get` is done at every turn too
                    get.cancel()
                    return Response(status_code=499)  # nobody is listening; the jobs are cancelled below
                i, events = get.result()
                self._feed(worker, jobs, choices, i, events)
        finally:
            watch.cancel()
            worker.cancel([j for j, c in zip(jobs, choices) if c.finish is None or j.seq_id is not None])
        out = []
        for c in choices:
            text, entries = c.take()
            offset = len(echo[c.index // n])
            if kind == "completion":
                lp = completion_logprobs(entries, offset) if c.want_logprobs else None
                out.append({"index": c.index, "text": echo[c.index // n] + text, "logprobs": lp,
                            "finish_reason": c.finish})
            else:
                lp = chat_logprobs(entries) if c.want_logprobs else None
                out.append({"index": c.index, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                            "finish_reason": c.finish})
        obj = "text_completion" if kind == "completion" else "chat.completion"
        return JSONResponse({**meta, "object": obj, "choices": out, "usage": self._usage(choices, prompt_tokens)})

    @staticmethod
    def _feed(worker: Worker | RemoteWorker, jobs: list[Job], choices: list[Choice], i: int,
              events: list[StepEvent] | BaseException) -> None:
        if isinstance(events, BaseException):
            raise ApiError(500, f"generation failed: {events}", type_="server_error", code="server_error")
        c = choices[i]
        if c.finish is not None:
            return  # tokens already in flight after a stop string ended the choice
        c.feed(events)
        if c.finish is not None and events[-1].finish_reason is None:
            worker.cancel([jobs[i]])  # a stop string ended it: free its row now

    async def _stream(self, worker: Worker | RemoteWorker, jobs: list[Job], choices: list[Choice], queue: asyncio.Queue,
                      meta: dict[str, Any], kind: str, echo: list[str], n: int, include_usage: bool,
                      prompt_tokens: int) -> AsyncIterator[str]:
        obj = "text_completion" if kind == "completion" else "chat.completion.chunk"

        def chunk(choice: dict[str, Any]) -> str:
            return _sse({**meta, "object": obj, "choices": [choice]})

        text_chunk = _TextChunks(meta, obj, kind)

        try:
            first = []
            for c in choices:
                if kind == "chat":
                    first.append(chunk({"index": c.index, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}))
                elif echo[c.index // n]:
                    first.append(chunk({"index": c.index, "text": echo[c.index // n], "logprobs": None,
                                        "finish_reason": None}))
            if first:
                yield "".join(first)
            out: list[str] = []
            while any(c.finish is None for c in choices):
                items = [await queue.get()]
                while not queue.empty():  # a slow reader gets what piled up in one write
                    items.append(queue.get_nowait())
                touched: dict[int, Choice] = {}
                try:
                    for i, events in items:
                        self._feed(worker, jobs, choices, i, events)
                        touched[i] = choices[i]
                except ApiError as e:
                    out = [_sse(e.body())]
                    break
                out = []
                for c in touched.values():
                    text, entries = c.take()
                    if not text and not entries and c.finish is None:
                        continue
                    if not c.want_logprobs:
                        out.append(text_chunk(c.index, text, c.finish))
                    elif kind == "completion":
                        lp = completion_logprobs(entries, len(echo[c.index // n]))
                        out.append(chunk({"index": c.index, "text": text, "logprobs": lp,
                                          "finish_reason": c.finish}))
                    else:
                        lp = chat_logprobs(entries)
                        delta = {"content": text} if text or c.finish is None else {}
                        out.append(chunk({"index": c.index, "delta": delta, "logprobs": lp,
                                          "finish_reason": c.finish}))
                if out and any(c.finish is None for c in choices):
                    yield "".join(out)
                    out = []
            # The last tokens, the usage and [DONE] in one write: under load every write costs the same.
            if include_usage:
                out.append(_sse({**meta, "object": obj, "choices": [], "usage": self._usage(choices, prompt_tokens)}))
            out.append("data: [DONE]\n\n")
            yield "".join(out)
        finally:  # also when the client went away: its rows are freed before the next step
            worker.cancel([j for j, c in zip(jobs, choices) if c.finish is None or j.seq_id is not None])

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def build_app(cfg: ServeConfig) -> Starlette:
    """The Starlette app; the runs load on a thread once it starts (GET /health answers 503 until then)."""
    state = State(cfg, api_key(cfg), _run_names(cfg.run))
    api = Api(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        threading.Thread(target=_load, args=(state, loop), name="tinystories-load", daemon=True).start()
        yield
        if state.worker is not None:
            state.worker.stop()

    async def api_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, ApiError)
        return _error_response(e)

    async def http_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return _error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                                        code=code))

    async def server_error(request: Request, e: Exception) -> Response:
        log.exception("unexpected error")
        return _error_response(ApiError(500, "internal server error", type_="server_error", code="server_error"))

    routes = [
        Route("/", api.index),
        Route("/health", api.health),
        Route("/v1/models", api.models),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/attention", api.attention, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.serve = state
    return app
