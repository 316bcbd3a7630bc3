"""The model worker: one task that drives every served model's `Sampler` for all clients.

Requests never run a forward themselves. Each choice of a request becomes a
`Job` that waits in its model's queue; between two decode steps the worker
moves waiting jobs into free cache rows (continuous batching: they join the
running batch), runs one `Sampler.step` per model with live sequences, and
gathers each job's tokens; at the end of a time slice every job gets the
tokens of that slice at once (its first token and its last, right after their
step). A finished or cancelled job leaves the batch at once, so its row is
free for the next step. Everything runs on the event loop's thread, so a
model is only ever used by one thread: the HTTP server's loop (`--engine
inline`), or the engine process's own (`remote.py`, the default).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tinystories.sample import SampleParams, Sampler, StepEvent

log = logging.getLogger("tinystories.serve")


class QueueFull(Exception):
    """More jobs than the queue holds; the request is refused (HTTP 429)."""


@dataclass(eq=False)
class Job:
    """One sequence to generate: a choice of a request."""

    prompt: list[int]
    params: SampleParams
    deliver: Callable[[list[StepEvent] | BaseException], None]
    """Called with the job's token events of each slice (its first and last at once), or the error that ended it."""
    cancelled: bool = False
    started: bool = False
    """Whether the job's first token has been delivered."""
    seq_id: int | None = None
    pending: list[StepEvent] = field(default_factory=list)
    """Events made in this slice, not yet delivered."""


@dataclass(eq=False)
class _Model:
    sampler: Sampler
    waiting: collections.deque[Job] = field(default_factory=collections.deque)
    live: dict[int, Job] = field(default_factory=dict)  # seq_id -> job


class Worker:
    """Continuous batching over one `Sampler` per model, as a task on an event loop.

    The model runs on the event loop's own thread: a worker thread would fight
    the HTTP side for the interpreter lock at every one of a step's many short
    calls (a small model's step is mostly such calls) and lose most of the
    time. Instead the worker runs steps for up to `slice_s` seconds, giving the
    loop one turn after each step (to read new requests and join them to the
    batch at once), and only then hands each job the tokens of the slice: each
    stream sends them in one event, so the cost of an event (JSON, a socket
    write, waking the stream's task) is shared by all the tokens of a slice.
    That cost is the same whatever the event carries, so with many live jobs
    the slice grows (`max_events_per_s`): the HTTP side's work stays bounded
    (on the same loop, the batch's steps keep the rest of the time).
    """

    def __init__(self, samplers: dict[str, Sampler], max_queue: int, slice_s: float = 0.02,
                 max_events_per_s: float = 1000.0):
        self.models = {name: _Model(s) for name, s in samplers.items()}
        self.max_queue = max_queue
        self.slice_s = slice_s
        self.max_events_per_s = max_events_per_s
        self._cancelled: list[Job] = []
        self._ready: list[Job] = []  # jobs with pending events, in the order they got their first
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start stepping (call on the event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def waiting(self) -> int:
        return sum(len(m.waiting) for m in self.models.values())

    def live(self) -> int:
        return sum(len(m.live) for m in self.models.values())

    def submit(self, model: str, jobs: list[Job]) -> None:
        """Queue a request's jobs together, or raise QueueFull when they do not fit in the queue."""
        if self.waiting() + len(jobs) > self.max_queue:
            raise QueueFull(f"the queue is full ({self.max_queue} waiting sequences); try again later")
        self.models[model].waiting.extend(jobs)
        self._wake.set()

    def cancel(self, jobs: list[Job]) -> None:
        """Free the jobs' rows before the next step (the client went away or a stop string matched)."""
        for job in jobs:
            if not job.cancelled:
                job.cancelled = True
                self._cancelled.append(job)
        self._wake.set()

    def _busy(self) -> bool:
        return bool(self._cancelled or any(m.waiting or m.live for m in self.models.values()))

    async def _run(self) -> None:
        while True:
            if not self._busy():
                self._wake.clear()
                await self._wake.wait()
            # At least slice_s, and long enough that each live job's one event per slice keeps the
            # events under max_events_per_s (64 jobs at the defaults: 64 ms).
            deadline = time.perf_counter() + max(self.slice_s, self.live() / self.max_events_per_s)
            while self._busy():
                self._free_cancelled()
                for name, m in self.models.items():
                    try:
                        self._step(m)
                    except Exception as e:  # a failed step must not take the server down: its jobs get the error
                        log.exception("model %s: step failed", name)
                        self._fail(m, e)
                if time.perf_counter() >= deadline:
                    break
                # One turn of the event loop after each step: new requests are read and joined to
                # the batch within a step or two rather than a slice or two, and a client that went
                # away is noticed. The streams themselves wake only at the end of the slice.
                await asyncio.sleep(0)
            self._deliver()
            # The HTTP side runs now: each stream sends the tokens of the slice in one event.
            await asyncio.sleep(0)

    def _deliver(self) -> None:
        ready, self._ready = self._ready, []
        for job in ready:
            events, job.pending = job.pending, []
            if events and not job.cancelled:
                job.deliver(events)

    def _free_cancelled(self) -> None:
        cancelled, self._cancelled = self._cancelled, []
        for job in cancelled:
            if job.seq_id is None:
                continue  # still waiting: skipped when its turn comes
            for m in self.models.values():
                if m.live.pop(job.seq_id, None) is job:
                    m.sampler.remove(job.seq_id)

    def _step(self, m: _Model) -> None:
        admitted: list[Job] = []
        while m.waiting and len(admitted) < m.sampler.free_rows:
            job = m.waiting.popleft()
            if not job.cancelled:
                admitted.append(job)
        if admitted:
            ids = m.sampler.add_many([j.prompt for j in admitted], [j.params for j in admitted])
            for job, sid in zip(admitted, ids):
                job.seq_id = sid
                m.live[sid] = job
        if not m.live:
            return
        live, ready = m.live, self._ready
        for ev in m.sampler.step():
            job = live[ev.seq_id]
            if ev.finish_reason is not None:
                # A finished job gets its tokens at once: its client can send the next request
                # (and fill the row again) without waiting for the end of the slice.
                del live[ev.seq_id]
                events, job.pending = job.pending, []
                events.append(ev)
                if not job.cancelled:
                    job.deliver(events)
                continue
            if not job.started:
                # The first token goes out at once too: time to first token is a step or two, not a slice.
                job.started = True
                if not job.cancelled:
                    job.deliver([ev])
                continue
            if not job.pending:
                ready.append(job)
            job.pending.append(ev)

    def _fail(self, m: _Model, error: Exception) -> None:
        for sid, job in list(m.live.items()):
            m.sampler.remove(sid)
            if not job.cancelled:
                if job.pending:  # the tokens made before the failure first
                    events, job.pending = job.pending, []
                    job.deliver(events)
                job.deliver(error)
        m.live.clear()


