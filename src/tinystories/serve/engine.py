"""The model worker: one thread that drives every served model's `Sampler` for all clients.

Requests never run a forward themselves. Each choice of a request becomes a
`Job` that waits in its model's queue; between two decode steps the worker
moves waiting jobs into free cache rows (continuous batching: they join the
running batch), runs one `Sampler.step` per model with live sequences, and
hands each step's tokens to the event loop in one call. A finished or
cancelled job leaves the batch at once, so its row is free for the next step.
Other work on a model (the attention view) runs on the same thread between
steps, so a model is only ever used by one thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tinystories.sample import SampleParams, Sampler, StepEvent

log = logging.getLogger("tinystories.serve")


class QueueFull(Exception):
    """More jobs than the queue holds; the request is refused (HTTP 429)."""


@dataclass(eq=False)
class Job:
    """One sequence to generate: a choice of a request."""

    prompt: list[int]
    params: SampleParams
    deliver: Callable[[StepEvent | BaseException], None]
    """Called on the event loop with each token event (or the error that ended the job)."""
    cancelled: bool = False
    seq_id: int | None = None


@dataclass(eq=False)
class _Model:
    sampler: Sampler
    waiting: collections.deque[Job] = field(default_factory=collections.deque)
    live: dict[int, Job] = field(default_factory=dict)  # seq_id -> job


class Worker:
    """Continuous batching over one `Sampler` per model, on one background thread."""

    def __init__(self, samplers: dict[str, Sampler], max_queue: int, call_soon: Callable[..., Any]):
        """`call_soon(fn, arg)` runs fn(arg) on the event loop (loop.call_soon_threadsafe)."""
        self.models = {name: _Model(s) for name, s in samplers.items()}
        self.max_queue = max_queue
        self._call_soon = call_soon
        self._cond = threading.Condition()
        self._cancelled: list[Job] = []
        self._tasks: list[tuple[Callable[[], Any], concurrent.futures.Future]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tinystories-model-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # -- called from the event loop --

    def waiting(self) -> int:
        return sum(len(m.waiting) for m in self.models.values())

    def live(self) -> int:
        return sum(len(m.live) for m in self.models.values())

    def submit(self, model: str, jobs: list[Job]) -> None:
        """Queue a request's jobs together, or raise QueueFull when they do not fit in the queue."""
        with self._cond:
            if self.waiting() + len(jobs) > self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} waiting sequences); try again later")
            self.models[model].waiting.extend(jobs)
            self._cond.notify()

    def cancel(self, jobs: list[Job]) -> None:
        """Free the jobs' rows before the next step (the client went away or a stop string matched)."""
        with self._cond:
            for job in jobs:
                if not job.cancelled:
                    job.cancelled = True
                    self._cancelled.append(job)
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run fn() on the worker thread between two steps; wrap the result with asyncio.wrap_future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._tasks.append((fn, fut))
            self._cond.notify()
        return fut

    # -- the worker thread --

    def _busy(self) -> bool:
        return bool(self._tasks or self._cancelled or any(m.waiting or m.live for m in self.models.values()))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._busy():
                    self._cond.wait()
                if self._stop:
                    return
                tasks, self._tasks = self._tasks, []
                cancelled, self._cancelled = self._cancelled, []
                admitted = {name: self._admit(m) for name, m in self.models.items()}
            for fn, fut in tasks:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # handed to the request that asked
                        fut.set_exception(e)
            for job in cancelled:
                if job.seq_id is not None:
                    for m in self.models.values():
                        if m.live.pop(job.seq_id, None) is job:
                            m.sampler.remove(job.seq_id)
            for name, m in self.models.items():
                try:
                    self._step(m, admitted[name])
                except Exception as e:  # a failed step must not take the server down: its jobs end with the error
                    log.exception("model %s: step failed", name)
                    self._fail(m, e)

    def _admit(self, m: _Model) -> list[Job]:
        """Waiting jobs that get a free row now (still to be prefilled, outside the lock)."""
        out: list[Job] = []
        while m.waiting and len(out) < m.sampler.free_rows:
            job = m.waiting.popleft()
            if not job.cancelled:
                out.append(job)
        return out

    def _step(self, m: _Model, admitted: list[Job]) -> None:
        admitted = [j for j in admitted if not j.cancelled]
        if admitted:
            ids = m.sampler.add_many([j.prompt for j in admitted], [j.params for j in admitted])
            for job, sid in zip(admitted, ids):
                job.seq_id = sid
                m.live[sid] = job
        if not m.live:
            return
        events = m.sampler.step()
        out = []
        for ev in events:
            job = m.live[ev.seq_id]
            if ev.finish_reason is not None:
                del m.live[ev.seq_id]
            if not job.cancelled:
                out.append((job, ev))
        if out:
            self._call_soon(_deliver_all, out)

    def _fail(self, m: _Model, error: Exception) -> None:
        jobs = list(m.live.values())
        for sid in list(m.live):
            m.sampler.remove(sid)
        m.live.clear()
        self._call_soon(_deliver_all, [(j, error) for j in jobs])


def _deliver_all(items: list[tuple[Job, StepEvent | BaseException]]) -> None:
    for job, ev in items:
        if not job.cancelled:
            job.deliver(ev)
