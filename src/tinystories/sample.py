"""Sampling: a KV-cached engine where sequences join and leave a running batch.

Layers, bottom up:

- `tinystories.draw`: temperature, top-k and top-p for a batch of rows, each
  with its own settings, vectorised, and the inverse-CDF draw.
- `Sampler`: a fixed pool of `max_batch` cache rows. `add(prompt, params)`
  prefills the prompt into a free row; `step()` samples one token for every
  live sequence and runs one batched decode step (`tinystories.decode`) to get
  the next logits; finished sequences free their row for the next `add`. This
  is what a server or the LLM judge drives.
- `complete` / `generate`: run a list of prompts to the end through a Sampler
  (more prompts than rows simply wait for a free row).
- `IncrementalDecoder` / `stream_text`: text as it comes, never half a UTF-8
  character.
- `SampleConfig` / `sample`: the `tinystories sample` command (beam search:
  `tinystories.beam`).

Prompts: the dataset stores each story as `[eot] + tokens`, so a text prompt is
`[eot] + encode(text)` (`prompt_ids`); the empty prompt is `[eot]` alone.

Randomness: each sequence owns a `torch.Generator` seeded from its params.
Every sampled token consumes exactly one uniform number from that generator
(inverse-CDF sampling), so a sequence's tokens do not depend on what else is in
the batch, nor on the batch size.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tinystories.beam import BeamResult, beam_search
from tinystories.decode import (
    FINISH_CONTEXT,
    FINISH_LENGTH,
    FINISH_STOP,
    GraphStep,
    KVCache,
    graphs_wanted,
    next_logits,
    step_threads,
)
from tinystories.draw import draw, fp32, token_weights
from tinystories.errors import UserError
from tinystories.flops import count_params
from tinystories.io import atomic_write_json
from tinystories.model import GPT
from tinystories.options import RunOptions, SamplingOptions
from tinystories.rundir import compiled, load_run, with_device

MAX_LOGPROBS = 20
"""Most alternatives a sequence may ask log-probabilities for."""


# --- per-sequence settings ------------------------------------------------------


@dataclass
class SampleParams:
    """How one sequence is sampled."""

    temperature: float = 1.0
    """Softmax temperature; 0 = greedy (argmax)."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 = no limit."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches p; 1 = all."""
    max_new_tokens: int = 256
    """Stop after this many new tokens (end-of-text included)."""
    stop_at_eot: bool = True
    """Stop when the model produces end-of-text."""
    seed: int | None = None
    """Seed of this sequence's own random generator; None = a fresh random seed."""
    logprobs: int | None = None
    """Also report each token's log-probability and those of the k most likely tokens (k = 0..20); None = off."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0 or math.isinf(self.temperature):
            raise UserError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise UserError(f"logprobs must be in 0..{MAX_LOGPROBS}, got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# --- the engine -----------------------------------------------------------------


class TokenLogprobs(NamedTuple):
    """A token's log-probability under the model (temperature 1, no top-k / top-p) and the best alternatives'."""

    logprob: float
    top: list[tuple[int, float]]
    """(token id, log-probability) of the most likely tokens, best first."""


class StepEvent(NamedTuple):
    seq_id: int
    token: int
    finish_reason: str | None
    """None while the sequence goes on; else FINISH_STOP, FINISH_LENGTH or FINISH_CONTEXT."""
    logprobs: TokenLogprobs | None = None
    """Set when the sequence's SampleParams.logprobs is not None."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


_UNIFORM_BLOCK = 64
"""Uniform numbers drawn from a sequence's generator at a time (one per future token)."""


@dataclass
class _Seq:
    seq_id: int
    row: int
    params: SampleParams
    length: int  # tokens in the cache row after the next feed: prompt + generated
    generated: int = 0
    generator: torch.Generator | None = None


@dataclass
class _Live:
    """Who is in the batch and how they sample: rebuilt on `add` / `remove`, read by every `step`.

    A step then runs no Python loop over the sequences beyond the one that hands
    out their tokens (at 64 streams, several such loops cost as much as the sampling itself).
    """

    hi: int  # rows [0, hi) hold every live sequence
    seqs: list[_Seq]  # live sequences in row order
    drawn: list[_Seq]  # the ones that draw uniforms (not greedy)
    all_greedy: bool
    is_greedy: torch.Tensor | None  # (hi,) bool when greedy and sampled rows mix, else None
    filtered: bool  # some row uses top-k or top-p
    tempered: bool  # some sampled row has a temperature other than 1
    top_logprobs: int  # most alternatives a live row wants log-probabilities for; -1 = none asks


class Sampler:
    """Batched, KV-cached generation through which sequences join and leave.

    `add` prefills a prompt into a free cache row and returns a sequence id;
    `step` produces one token for every live sequence; a finished sequence's row
    is freed at once, and `remove` frees one early. Forwards cover rows
    [0, highest live row], so a full pool runs at full batch and a draining one
    shrinks.

    A prompt's last token is not prefilled: it rides in the next step's
    decode forward with everyone else's token, and the sequence's first token
    comes from the step after. A one-token prompt (a story from the start)
    thus costs no forward of its own, which matters when sequences join a
    running batch one or two at a time.
    """

    def __init__(
        self,
        model: GPT,
        max_batch: int,
        max_len: int | None = None,
        eot_id: int | None = None,
        device: torch.device | str | None = None,
    ):
        self.model = model
        self.config = model.config
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.max_len = min(max_len or self.config.max_seq_len, self.config.max_seq_len)
        self.max_batch = max_batch
        self.eot_id = eot_id
        self.cache = KVCache(self.config, max_batch, self.max_len, device=self.device, dtype=param.dtype)
        V = self.config.vocab_size
        # Per-row settings as tensors, written on `add`, so a step builds nothing.
        self._temperature = torch.ones(max_batch, device=self.device)
        self._top_k = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._top_p = torch.ones(max_batch, device=self.device)
        self._uniforms = torch.zeros(max_batch, _UNIFORM_BLOCK, device=self.device)
        self._col = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # next unused uniform per row
        self._arange = torch.arange(max_batch, device=self.device)
        self._views: dict[int, KVCache] = {max_batch: self.cache}  # hi -> cache over rows [0, hi)
        self._live = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # 1 = row in use
        self._pending: dict[int, int] = {}  # row -> its prompt's last token, fed by the next step's forward
        self._logits: torch.Tensor | None = None  # (rows, V) from the last step's forward
        self._rows: list[_Seq | None] = [None] * max_batch
        self._seqs: dict[int, _Seq] = {}
        self._live_plan: _Live | None = None  # built on the first step after a change of members
        self._next_id = 0
        self._vocab = V
        self._graph: GraphStep | None = None  # built on the first decode step on CUDA (graphs_wanted)
        # Forward FLOPs per token (2 per weight of every matmul, the classifier included); see step_threads.
        self._token_flops = 2 * (count_params(self.config, non_embedding=True) + V * self.config.d_model)

    # -- membership --

    def __len__(self) -> int:
        return len(self._seqs)

    @property
    def free_rows(self) -> int:
        return self.max_batch - len(self._seqs)

    def add(self, prompt_ids: Sequence[int], params: SampleParams | None = None) -> int:
        """Prefill `prompt_ids` into a free row; returns the new sequence's id."""
        return self.add_many([prompt_ids], [params or SampleParams()])[0]

    @torch.inference_mode()
    def add_many(self, prompts: Sequence[Sequence[int]], params: Sequence[SampleParams]) -> list[int]:
        """Add several sequences; neighbouring free rows are prefilled in one right-padded forward."""
        if len(prompts) != len(params):
            raise ValueError("one SampleParams per prompt")
        if len(prompts) > self.free_rows:
            raise UserError(f"{len(prompts)} new sequences but only {self.free_rows} free rows")
        for p in prompts:
            if not p:
                raise UserError("an empty prompt: a prompt needs at least the end-of-text token")
            if len(p) >= self.max_len:
                raise UserError(f"a prompt of {len(p)} tokens leaves no room in a context of {self.max_len}")
            if min(p) < 0 or max(p) >= self._vocab:
                raise UserError(f"prompt token ids must be in [0, {self._vocab})")
        free = [r for r, s in enumerate(self._rows) if s is None][: len(prompts)]
        ids = []
        for row, prompt, prm in zip(free, prompts, params):
            seq = _Seq(self._next_id, row, prm, length=len(prompt))
            self._next_id += 1
            if not prm.greedy:
                seed = prm.seed if prm.seed is not None else random.getrandbits(63)
                seq.generator = torch.Generator(device="cpu").manual_seed(seed)
            self._rows[row], self._seqs[seq.seq_id] = seq, seq
            self._live_plan = None
            self._temperature[row] = prm.temperature if not prm.greedy else 1.0
            self._top_k[row] = prm.top_k
            self._top_p[row] = prm.top_p
            self._live[row] = 1
            self._pending[row] = prompt[-1]
            self.cache.lengths[row] = 0
            ids.append(seq.seq_id)
        # All but the last token of each longer prompt; runs of neighbouring rows together.
        order = sorted((row, p[:-1]) for row, p in zip(free, prompts) if len(p) > 1)
        run: list[tuple[int, Sequence[int]]] = []
        for item in order:
            if run and item[0] != run[-1][0] + 1:
                self._prefill(run)
                run = []
            run.append(item)
        if run:
            self._prefill(run)
        return ids

    def _prefill(self, run: list[tuple[int, Sequence[int]]]) -> None:
        """Right-padded prefill of token lists into the caches of rows run[0][0] ... (consecutive rows)."""
        start, stop = run[0][0], run[-1][0] + 1
        lengths = [len(p) for _, p in run]
        T = max(lengths)
        idx = torch.zeros(len(run), T, dtype=torch.long)  # (n, T); the padding id is never attended to
        for i, (_, p) in enumerate(run):
            idx[i, : len(p)] = torch.as_tensor(p, dtype=torch.long)
        idx = idx.to(self.device)
        view = self.cache.rows(start, stop)
        view.lengths.zero_()
        last = torch.as_tensor(lengths, device=self.device) - 1  # (n,)
        with step_threads(idx.numel() * self._token_flops, self.device):
            self.model(idx, logits="none", cache=view)
        view.lengths.copy_(last + 1)  # undo the padding's advance

    def remove(self, seq_id: int) -> None:
        """Free a sequence's row (a client went away, or it finished); unknown ids are ignored."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        self._rows[seq.row] = None
        self._live_plan = None
        self._pending.pop(seq.row, None)
        self._live[seq.row] = 0
        self.cache.lengths[seq.row] = 0

    # -- one token for everyone --

    def _next_uniforms(self, plan: _Live, pending: dict[int, int]) -> torch.Tensor:
        """One uniform number per row in [0, hi), from each sequence's own generator; (hi,).

        Rows in `pending` make no token this step and draw nothing.
        """
        for seq in plan.drawn:
            # Every live sequence has consumed `generated` numbers; a block is drawn when one runs out.
            if seq.generated % _UNIFORM_BLOCK == 0 and seq.row not in pending:
                block = torch.rand(_UNIFORM_BLOCK, generator=seq.generator)
                self._uniforms[seq.row] = block.to(self.device)
                self._col[seq.row] = 0
        col = self._col[: plan.hi]
        u = self._uniforms[: plan.hi].gather(1, col[:, None])[:, 0]
        col.add_(1).remainder_(_UNIFORM_BLOCK)  # free and greedy rows advance too, harmlessly
        return u

    def _plan(self) -> _Live:
        """The live-batch summary, rebuilt only after sequences joined or left."""
        if self._live_plan is None:
            hi = max(s.row for s in self._seqs.values()) + 1
            seqs = [s for s in self._rows[:hi] if s is not None]
            sampled = [s.params for s in seqs if not s.params.greedy]
            is_greedy = None
            if sampled and len(sampled) < len(seqs):
                is_greedy = torch.tensor([s is not None and s.params.greedy for s in self._rows[:hi]],
                                         device=self.device)
            self._live_plan = _Live(
                hi=hi, seqs=seqs, drawn=[s for s in seqs if s.generator is not None], all_greedy=not sampled,
                is_greedy=is_greedy, filtered=any(p.top_k > 0 or p.top_p < 1.0 for p in sampled),
                tempered=any(p.temperature != 1.0 for p in sampled),
                top_logprobs=max((s.params.logprobs for s in seqs if s.params.logprobs is not None), default=-1),
            )
        return self._live_plan

    def _view(self, hi: int) -> KVCache:
        """The cache over rows [0, hi), built once per hi (views share the cache's tensors)."""
        view = self._views.get(hi)
        if view is None:
            view = self._views[hi] = self.cache.rows(0, hi)
        return view

    def step(self) -> list[StepEvent]:
        """Sample one token for each live sequence, then run the forward that prepares the next step.

        A sequence added since the last step makes no token in this one: its prompt's last token is fed now.
        """
        if not self._seqs:
            return []
        with step_threads(self._plan().hi * self._token_flops, self.device):
            return self._step()

    @torch.inference_mode()
    def _step(self) -> list[StepEvent]:
        plan = self._plan()
        pending, self._pending = self._pending, {}
        events: list[StepEvent] = []
        if len(pending) == len(plan.seqs):  # nobody has logits yet: only the forward below
            tokens = torch.zeros(plan.hi, dtype=torch.long, device=self.device)
        else:
            tokens = self._emit(plan, pending, events)
        if pending:  # the prompts' last tokens go in with everyone else's
            rows = list(pending)
            tokens[rows] = torch.tensor([pending[r] for r in rows], device=self.device)

        self._logits = None
        if self._seqs:
            hi = self._plan().hi
            if graphs_wanted(self.device):
                if self._graph is None or self._graph.stale(self.model):
                    self._graph = GraphStep(self.model, self.cache)
                self._logits = self._graph(tokens[:hi])  # (max_batch, V); rows past hi are free
                self.cache.lengths.mul_(self._live)  # free rows took a dummy token; keep them empty
                return events
            view = self._view(hi)
            self._logits = next_logits(self.model, tokens[:hi, None], view)  # (hi, V)
            if len(self._seqs) < hi:
                view.lengths.mul_(self._live[:hi])  # free rows took a dummy token; keep them empty
        return events

    def _emit(self, plan: _Live, pending: dict[int, int], events: list[StepEvent]) -> torch.Tensor:
        """Sample the next token of every row but the pending ones, appending their events; tokens (hi,)."""
        logits = self._gather_logits(plan.hi)  # (hi, V); pending rows' are stale or zero, and unused
        logp = None
        if plan.top_logprobs >= 0:  # before sampling, which overwrites the logits
            logp = torch.log_softmax(fp32(logits), dim=-1)  # (hi, V)
        if plan.all_greedy:
            tokens = logits.argmax(dim=-1)  # (hi,)
        else:
            tokens = self._sample(logits, plan, pending)
        token_list = tokens.tolist()  # the one host sync of a step
        lps = None if logp is None else self._logprobs(logp, tokens, plan.top_logprobs)

        for seq in plan.seqs:
            if seq.row in pending:
                continue
            tok = token_list[seq.row]
            seq.generated += 1
            seq.length += 1
            reason = None
            if seq.params.stop_at_eot and tok == self.eot_id:
                reason = FINISH_STOP
            elif seq.generated >= seq.params.max_new_tokens:
                reason = FINISH_LENGTH
            elif seq.length >= self.max_len:
                reason = FINISH_CONTEXT  # the token is emitted, but there is no slot to feed it
            lp = None
            if lps is not None and seq.params.logprobs is not None:
                chosen, top_ids, top_lps = lps
                k = seq.params.logprobs
                lp = TokenLogprobs(chosen[seq.row], list(zip(top_ids[seq.row][:k], top_lps[seq.row][:k])))
            events.append(StepEvent(seq.seq_id, tok, reason, lp))
            if reason is not None:
                self.remove(seq.seq_id)
        return tokens

    @staticmethod
    def _logprobs(logp: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[list, list, list]:
        """Per row: the chosen token's log-probability, and the top k ids and log-probabilities; as lists."""
        chosen = logp.gather(1, tokens[:, None])[:, 0].tolist()
        if k == 0:
            return chosen, [[] for _ in chosen], [[] for _ in chosen]
        top_lps, top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1)  # (hi, k)
        return chosen, top_ids.tolist(), top_lps.tolist()

    def _gather_logits(self, hi: int) -> torch.Tensor:
        """Next-token logits of rows [0, hi) from the last step's forward; rows it did not cover are zero."""
        last = self._logits
        if last is not None and last.shape[0] >= hi:
            return last[:hi]
        logits = torch.zeros(hi, self._vocab, device=self.device, dtype=next(self.model.parameters()).dtype)
        if last is not None:
            logits[: last.shape[0]] = last
        return logits

    def _sample(self, logits: torch.Tensor, plan: _Live, pending: dict[int, int]) -> torch.Tensor:
        """Sampled tokens for rows [0, hi), greedy rows keeping their argmax; (hi,). Overwrites `logits`."""
        hi = plan.hi
        greedy = None
        if plan.is_greedy is not None:
            greedy = (plan.is_greedy, logits.argmax(dim=-1))  # before the in-place passes below
        scaled = fp32(logits)  # the logits themselves when already fp32: they are scratch now
        if plan.tempered:
            scaled = scaled.div_(self._temperature[:hi, None])
        w = token_weights(scaled, self._top_k[:hi], self._top_p[:hi], plan.filtered)
        sampled = draw(w, self._next_uniforms(plan, pending))  # (hi,)
        if greedy is not None:
            sampled = torch.where(greedy[0], greedy[1], sampled)
        return sampled


# --- whole prompts ------------------------------------------------------------------


@dataclass
class Completion:
    tokens: list[int]
    """New token ids, end-of-text left out."""
    finish_reason: str
    """FINISH_STOP, FINISH_LENGTH or FINISH_CONTEXT."""


def complete(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    params: SampleParams | Sequence[SampleParams] | None = None,
    *,
    eot_id: int | None = None,
    max_batch: int = 64,
    on_token: Callable[[int, int], None] | None = None,
) -> list[Completion]:
    """Run every prompt to its end, at most `max_batch` at a time; one Completion per prompt.

    `params`: one for all prompts or one per prompt. A shared seed is offset by
    the prompt's index, so n copies of a prompt give n different samples.
    `on_token(i, token)` is called for prompt i's tokens as they come (eot too).
    """
    if isinstance(params, SampleParams) or params is None:
        base = params or SampleParams()
        params = [
            dataclasses.replace(base, seed=None if base.seed is None else base.seed + i) for i in range(len(prompts))
        ]
    if len(params) != len(prompts):
        raise ValueError("one SampleParams per prompt")
    if not prompts:
        return []
    sampler = Sampler(model, min(max_batch, len(prompts)), eot_id=eot_id)
    tokens: list[list[int]] = [[] for _ in prompts]
    reasons: list[str] = [""] * len(prompts)
    owner: dict[int, int] = {}  # seq_id -> prompt index
    waiting = 0
    while waiting < len(prompts) or len(sampler):
        n = min(sampler.free_rows, len(prompts) - waiting)
        if n:
            new = sampler.add_many(prompts[waiting : waiting + n], params[waiting : waiting + n])
            owner.update({sid: waiting + j for j, sid in enumerate(new)})
            waiting += n
        for ev in sampler.step():
            i = owner[ev.seq_id]
            if on_token is not None:
                on_token(i, ev.token)
            if ev.finish_reason == FINISH_STOP:
                reasons[i] = ev.finish_reason
            else:
                tokens[i].append(ev.token)
                if ev.finish_reason is not None:
                    reasons[i] = ev.finish_reason
    return [Completion(t, r) for t, r in zip(tokens, reasons)]


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    params: SampleParams | Sequence[SampleParams] | None = None,
    *,
    eot_id: int | None = None,
    max_batch: int = 64,
) -> list[list[int]]:
    """New token ids for each prompt (end-of-text left out); see `complete`."""
    return [c.tokens for c in complete(model, prompts, params, eot_id=eot_id, max_batch=max_batch)]


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a text prompt as the model saw stories in training: [eot] + encode(text)."""
    return [tokenizer.eot_id] + (tokenizer.encode(text) if text else [])


# --- text as it comes ---------------------------------------------------------------


class IncrementalDecoder:
    """Turns tokens, one at a time, into text pieces whose concatenation is the full decode.

    Decoding a token alone can be wrong in two ways: a UTF-8 character split
    over two tokens decodes to U+FFFD, and some tokenizers drop a word's leading
    space at the start of a text. So the text since an anchor a few tokens back
    is decoded each time, and only new characters are given out; a piece that
    ends in U+FFFD waits for the next token.
    """

    CONTEXT = 4
    """Tokens kept before the new ones when the anchor moves, for the leading-space rule."""

    def __init__(self, decode: Callable[[list[int]], str], prefix: Sequence[int] = ()):
        self.decode = decode
        self.ids = list(prefix)
        self.anchor = max(0, len(self.ids) - self.CONTEXT)
        self.emitted = len(self.decode(self.ids[self.anchor :]))  # chars since the anchor already given out

    def push(self, token: int) -> str:
        """Add a token; returns the text it completes (possibly empty)."""
        return self.push_many((token,))

    def push_many(self, tokens: Sequence[int]) -> str:
        """Add several tokens with one decode; returns what their pushes one by one would return, joined."""
        start = len(self.ids)
        self.ids.extend(tokens)
        text = self.decode(self.ids[self.anchor :])
        if text.endswith("\ufffd"):
            if len(tokens) == 1:
                return ""  # an unfinished character; wait for its remaining bytes
            del self.ids[start:]  # one by one, which holds back just the unfinished character
            return "".join(self.push(t) for t in tokens)
        piece = text[self.emitted :]
        self.emitted = len(text)
        if len(self.ids) - self.anchor > 4 * self.CONTEXT:  # keep each decode short
            self.anchor = len(self.ids) - self.CONTEXT
            self.emitted = len(self.decode(self.ids[self.anchor :]))
        return piece

    def flush(self) -> str:
        """Whatever is held back (an unfinished character, as U+FFFD) at the end of the stream."""
        text = self.decode(self.ids[self.anchor :])
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece


def stream_text(
    model: GPT, tokenizer: Any, prompt: str | Sequence[int], params: SampleParams | None = None
) -> Iterator[str]:
    """Text pieces of one completion as they are generated (a text prompt gets the [eot] prefix)."""
    ids = prompt_ids(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    sampler = Sampler(model, 1, eot_id=tokenizer.eot_id)
    sampler.add(ids, params or SampleParams())
    decoder = IncrementalDecoder(tokenizer.decode, ids)
    while len(sampler):
        for ev in sampler.step():
            if ev.finish_reason != FINISH_STOP:
                piece = decoder.push(ev.token)
                if piece:
                    yield piece
    tail = decoder.flush()
    if tail:
        yield tail


# --- the command ---------------------------------------------------------------------


@dataclass
class SampleConfig(RunOptions, SamplingOptions):
    """`tinystories sample`: completions of prompts by a trained run (completion i uses seed + i)."""

    prompt: tuple[str, ...] = ("",)
    """Prompt text(s); each is encoded as [eot] + tokens. Empty = a story from scratch."""
    n: int = field(default=1, metadata={"aliases": ("-n",)})
    """Completions per prompt."""
    beams: int = 0
    """Beam search with this many beams instead of sampling (the paper's authors used 5); 0 = sample."""
    length_penalty: float = 1.0
    """Beam search: score = log-prob / length ** length_penalty."""
    batch: int = 64
    """Sequences decoded together at most."""
    compile: bool = False
    """Run the model under torch.compile (faster decoding after a compile of ~30 s or more; on a CPU it needs a C++ compiler and runs eager without one)."""
    stream: bool | None = None
    """Print tokens as they come; default: when there is one completion and stdout is a terminal."""
    out: str | None = None
    """Also write the completions as JSON to this file (default: only print)."""


def sample(cfg: SampleConfig) -> None:
    """Print completions of cfg.prompt(s) by the run's model."""
    cfg = with_device(cfg)
    if not cfg.run:
        raise UserError("--run is required: the run folder to sample from")
    if cfg.n < 1:
        raise UserError(f"-n must be >= 1, got {cfg.n}")
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    model, tok = loaded.model, loaded.tokenizer
    if cfg.compile:
        # One-token steps then take the compiled forward too, not the decode step (see decode.lean).
        model.forward = compiled(model.forward, torch.device(cfg.device), dynamic=True)  # type: ignore[method-assign]
    texts = [p for p in cfg.prompt for _ in range(cfg.n)]
    ids = [prompt_ids(tok, t) for t in texts]
    base = SampleParams(cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens, seed=cfg.seed)
    stream = cfg.stream if cfg.stream is not None else (len(ids) == 1 and cfg.beams == 0 and sys.stdout.isatty())
    results: list[dict[str, Any]] = []

    if cfg.beams > 0:
        found: dict[str, BeamResult] = {}  # beam search is deterministic: -n copies share one search
        for text, p in zip(texts, ids):
            if text not in found:
                found[text] = beam_search(model, p, cfg.beams, cfg.max_new_tokens, cfg.length_penalty, tok.eot_id)
            beam = found[text]
            results.append({"prompt": text, "tokens": beam.tokens, "finish_reason": beam.finish_reason,
                            "logprob": beam.logprob})
    elif stream:
        for i, (text, p) in enumerate(zip(texts, ids)):
            params = dataclasses.replace(base, seed=cfg.seed + i)
            sys.stdout.write(text)
            sys.stdout.flush()
            c = complete(model, [p], params, eot_id=tok.eot_id,
                         on_token=_printer(tok, p))[0]
            sys.stdout.write("\n\n")
            results.append({"prompt": text, "tokens": c.tokens, "finish_reason": c.finish_reason})
    else:
        for text, c in zip(texts, complete(model, ids, base, eot_id=tok.eot_id, max_batch=cfg.batch)):
            results.append({"prompt": text, "tokens": c.tokens, "finish_reason": c.finish_reason})

    for r, p in zip(results, ids):
        full = tok.decode(p + r["tokens"])
        r["completion"] = full[len(tok.decode(p)) :]
        if not stream:
            print(r["prompt"] + r["completion"] + "\n")
    if cfg.out:
        atomic_write_json(Path(cfg.out), {"run": os.fspath(cfg.run), "step": loaded.step, "samples": results})


def _printer(tok: Any, prompt: list[int]) -> Callable[[int, int], None]:
    decoder = IncrementalDecoder(tok.decode, prompt)

    def on_token(_: int, token: int) -> None:
        if token != tok.eot_id:
            sys.stdout.write(decoder.push(token))
            sys.stdout.flush()

    return on_token
