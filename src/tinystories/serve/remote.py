"""The model worker in a process of its own (`--engine process`, the default).

With the worker on the HTTP side's event loop, every moment spent parsing a
request or writing an event is a moment the model does not step: under load
that was about a fifth of the time (benchmarks/README.md). Here the engine
process runs the same `Worker` on an event loop of its own, and the HTTP
process holds a `RemoteWorker` with the same interface (submit, cancel,
waiting, live), so the HTTP work runs on another core while the model steps.

The two talk over one duplex pipe (`multiprocessing.connection`), in pickled
messages:

- HTTP -> engine: ("submit", model, [(job id, prompt, params)]), ("cancel", [job id]), ("stop", None).
- engine -> HTTP: ("ready", None) or ("failed", message) once the runs are
  loaded, then ("events", [(job id, [(token, finish_reason, logprobs)] or an
  error message)]): everything delivered during one turn of the engine's loop
  in one message (a slice's tokens for every stream, or a first or last token).

Events travel as plain tuples rather than `StepEvent`s: pickling a named tuple
costs several times more, and the engine's time is the model's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import multiprocessing
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from tinystories.sample import StepEvent
from tinystories.serve.engine import Job, QueueFull

log = logging.getLogger("tinystories.serve")


# --- the engine process ------------------------------------------------------------------


def engine_main(conn: Connection, runs: dict[str, str], step: int | None, device: str, max_streams: int,
                slice_s: float, max_events_per_s: float, threads: int) -> None:
    """The engine process: load the runs, say ready, then serve jobs until told to stop or the pipe closes."""
    import torch

    from tinystories import rundir
    from tinystories.sample import Sampler

    # Ctrl-C reaches the whole process group: the HTTP process shuts down and tells this one to stop
    # (or its pipe closes), rather than both printing a KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)  # as the HTTP process has it (a spawned process starts from the defaults)
    try:
        samplers = {}
        for name, path in runs.items():
            loaded = rundir.load_run(path, step=step, device=device)
            samplers[name] = Sampler(loaded.model, max_streams, eot_id=loaded.tokenizer.eot_id)
    except Exception as e:
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    gc.freeze()  # as in the HTTP process: full collections under load stay cheap
    asyncio.run(_serve_jobs(conn, samplers, slice_s, max_events_per_s))


async def _serve_jobs(conn: Connection, samplers: dict[str, Any], slice_s: float, max_events_per_s: float) -> None:
    from tinystories.serve.engine import Worker

    loop = asyncio.get_running_loop()
    worker = Worker(samplers, sys.maxsize, slice_s, max_events_per_s)  # the HTTP side enforces --max-queue
    jobs: dict[int, Job] = {}
    outbox: list[tuple[int, Any]] = []
    done = loop.create_future()

    def flush() -> None:
        conn.send(("events", list(outbox)))
        outbox.clear()

    def deliver(job_id: int, events: list[StepEvent] | BaseException) -> None:
        if not outbox:
            loop.call_soon(flush)  # after the step: the worker gives the loop a turn after each one
        if isinstance(events, BaseException):
            jobs.pop(job_id, None)
            outbox.append((job_id, f"{type(events).__name__}: {events}"))
            return
        if events[-1].finish_reason is not None:
            jobs.pop(job_id, None)
        outbox.append((job_id, [(e.token, e.finish_reason, e.logprobs) for e in events]))

    def on_message() -> None:
        while conn.poll():
            try:
                kind, *args = conn.recv()
            except EOFError:  # the HTTP process is gone
                kind, args = "stop", []
            if kind == "submit":
                model, items = args
                new = {job_id: Job(prompt, params, functools.partial(deliver, job_id))
                       for job_id, prompt, params in items}
                jobs.update(new)
                worker.submit(model, list(new.values()))
            elif kind == "cancel":
                worker.cancel([jobs.pop(i) for i in args[0] if i in jobs])
            else:
                loop.remove_reader(conn.fileno())
                if not done.done():
                    done.set_result(None)
                return

    loop.add_reader(conn.fileno(), on_message)
    worker.start()
    conn.send(("ready", None))
    await done
    worker.stop()


# --- the HTTP side's handle ----------------------------------------------------------------


class EngineFailed(Exception):
    """The engine process could not load the runs, or exited."""


class RemoteWorker:
    """The engine process seen from the HTTP process: `Worker`'s interface, run on the HTTP side's loop.

    A job counts as waiting until its first event arrives, and as live until
    its last; a cancelled job is forgotten at once (its late events are dropped).
    """

    def __init__(self, runs: dict[str, str], step: int | None, device: str, max_streams: int, max_queue: int,
                 slice_s: float, max_events_per_s: float, threads: int):
        """Start the engine process and wait until it has loaded the runs (raises EngineFailed if not)."""
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=engine_main, name="tinystories-engine", daemon=True,
            args=(child, runs, step, device, max_streams, slice_s, max_events_per_s, threads),
        )
        self._process.start()
        child.close()
        try:
            kind, message = self._conn.recv()
        except EOFError:
            self._process.join(5)
            kind, message = "failed", f"the engine process exited (code {self._process.exitcode})"
        if kind != "ready":
            self._process.join(5)
            raise EngineFailed(message)
        self.max_queue = max_queue
        self.on_exit: Callable[[str], None] | None = None
        """Called once with a message if the engine process exits while serving."""
        self._jobs: dict[int, Job] = {}  # submitted and neither finished nor cancelled
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start reading the engine's events (call on the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._conn.fileno(), self._on_message)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._conn.fileno())
        with contextlib.suppress(OSError):  # the engine may be gone already
            self._conn.send(("stop", None))
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()

    def waiting(self) -> int:
        return sum(not job.started for job in self._jobs.values())

    def live(self) -> int:
        return len(self._jobs) - self.waiting()

    def submit(self, model: str, jobs: list[Job]) -> None:
        """Queue a request's jobs together, or raise QueueFull when they do not fit in the queue."""
        if self.waiting() + len(jobs) > self.max_queue:
            raise QueueFull(f"the queue is full ({self.max_queue} waiting sequences); try again later")
        items = []
        for job in jobs:
            job.seq_id = next(self._ids)
            self._jobs[job.seq_id] = job
            items.append((job.seq_id, job.prompt, job.params))
        self._conn.send(("submit", model, items))

    def cancel(self, jobs: list[Job]) -> None:
        """Forget the jobs and have the engine free their rows before its next step."""
        ids = []
        for job in jobs:
            job.cancelled = True
            if job.seq_id is not None and self._jobs.pop(job.seq_id, None) is job:
                ids.append(job.seq_id)
        if ids:
            self._conn.send(("cancel", ids))

    def _on_message(self) -> None:
        while self._conn.poll():
            try:
                _, batch = self._conn.recv()
            except (EOFError, OSError):
                self._exited()
                return
            for job_id, events in batch:
                job = self._jobs.get(job_id)
                if job is None:
                    continue  # cancelled meanwhile
                job.started = True
                if isinstance(events, str):
                    del self._jobs[job_id]
                    job.deliver(RuntimeError(events))
                    continue
                if events[-1][1] is not None:
                    del self._jobs[job_id]
                job.deliver([StepEvent(job_id, token, finish, lp) for token, finish, lp in events])

    def _exited(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._conn.fileno())
        self._process.join(1)
        message = f"the engine process exited (code {self._process.exitcode})"
        log.error(message)
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.deliver(RuntimeError(message))
        if self.on_exit is not None:
            self.on_exit(message)
