"""Sampling: a KV-cached engine where sequences join and leave a running batch.

Layers, bottom up:

- `filtered_probs` / `_weights`: temperature, top-k and top-p for a batch of
  rows, each with its own settings, vectorised.
- `Sampler`: a fixed pool of `max_batch` cache rows. `add(prompt, params)`
  prefills the prompt into a free row; `step()` samples one token for every
  live sequence and runs one batched forward to get the next logits; finished
  sequences free their row for the next `add`. This is what a server or the LLM
  judge drives.
- `complete` / `generate`: run a list of prompts to the end through a Sampler
  (more prompts than rows simply wait for a free row).
- `IncrementalDecoder` / `stream_text`: text as it comes, never half a UTF-8
  character.
- `beam_search`: beams over one prompt, reordering the cache each step.
- `SampleConfig` / `sample`: the `tinystories sample` command.

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tinystories import kernels
from tinystories.errors import UserError
from tinystories.model import GPT, KVCache, _decode_weights

FINISH_STOP = "stop"
"""The sequence produced end-of-text."""
FINISH_LENGTH = "length"
"""The sequence produced max_new_tokens tokens."""
FINISH_CONTEXT = "context"
"""The sequence filled the model's context (max_seq_len); nothing more fits."""
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


# --- temperature, top-k, top-p ------------------------------------------------------


_TOP_CANDIDATES = 64
"""Candidates looked at first by top-k / top-p (grown 4x while a row's cut-off lies beyond them)."""


def _weights(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, filtered: bool) -> torch.Tensor:
    """Per-row sampling weights (B, V), in vocabulary order and not normalised, from scaled logits.

    scaled (B, V) float, temperature applied; it is overwritten (the weights are
    computed in place: at a 50,257-token vocabulary every pass counts). top_k
    (B,) long, 0 = off; top_p (B,). Top-k is applied first, then top-p on the
    renormalised survivors (the usual order). filtered=False: no row filters,
    weights exp(logit - max). A full sort of a 50,257-token
    vocabulary costs far more than a forward, so only the best candidates are
    sorted (torch.topk), 64 at first, 4x more while some row's cut-off is not
    yet inside them; the result is exact either way. Rows that do not filter
    keep every token, so their draw does not depend on their neighbours.
    """
    if not filtered:
        return scaled.sub_(scaled.amax(dim=-1, keepdim=True)).exp_()
    B, V = scaled.shape
    active = (top_k > 0) | (top_p < 1.0)  # (B,)
    k = torch.where(top_k > 0, top_k.clamp(max=V), V)  # (B,), V = no top-k
    lse_all = torch.logsumexp(scaled, dim=-1)  # (B,)
    n = min(V, max(_TOP_CANDIDATES, int(top_k.max())))
    while True:
        vals, ids = scaled.topk(n, dim=-1)  # (B, n), best first
        rank = torch.arange(n, device=scaled.device)
        in_k = rank < k[:, None]  # (B, n)
        # Renormalising over the top k needs all k values; rows with k > n wait for a larger n.
        lse_k = torch.logsumexp(vals.masked_fill(~in_k, float("-inf")), dim=-1)
        lse = torch.where(k <= n, lse_k, lse_all)  # (B,)
        p = (vals - lse[:, None]).exp() * in_k  # (B, n) probabilities after top-k
        before = p.cumsum(dim=-1) - p  # probability of the better candidates
        # A candidate survives while the better ones have not yet reached p; the best always does.
        keep = in_k & ((before < top_p[:, None]) | (rank == 0))
        mass = p.sum(dim=-1)
        resolved = ~active | (k <= n) | ((k == V) & (mass >= top_p))
        if n == V or bool(resolved.all()):
            break
        n = min(V, 4 * n)
    keep_v = torch.zeros(B, V, dtype=torch.bool, device=scaled.device).scatter_(1, ids, keep)
    keep_v |= ~active[:, None]
    scaled.masked_fill_(~keep_v, float("-inf"))
    return scaled.sub_(scaled.amax(dim=-1, keepdim=True)).exp_()


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 when it already is (half-precision logits are upcast to sample)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def filtered_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """The distribution a sampler draws from: (B, V) probabilities, each row summing to 1."""
    B = logits.shape[0]
    w = _weights(_fp32(logits) / temperature, torch.full((B,), top_k), torch.full((B,), float(top_p)), True)
    return w / w.sum(dim=-1, keepdim=True)


_DRAW_BLOCK = 1024
"""Vocabulary block of the two-level inverse-CDF draw."""


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: the first column whose cumulative probability exceeds u * total; (B, N), (B,) -> (B,).

    Rows need not be normalised. For a large vocabulary a full cumulative sum is
    one of the dearest passes of a step, so the draw goes in two levels: block
    totals pick a block of _DRAW_BLOCK columns, a cumulative sum inside it picks
    the column. A column with probability 0 is never drawn.
    """
    B, N = probs.shape
    if N <= 4 * _DRAW_BLOCK:
        return _draw_in(probs, u * probs.sum(dim=-1))
    full = N // _DRAW_BLOCK
    sums = probs[:, : full * _DRAW_BLOCK].reshape(B, full, _DRAW_BLOCK).sum(dim=-1)  # (B, full)
    sums = torch.cat([sums, probs[:, full * _DRAW_BLOCK :].sum(dim=-1, keepdim=True)], dim=1)  # (B, full + 1)
    cdf = sums.cumsum(dim=-1)
    x = u * cdf[:, -1]  # (B,)
    block = _draw_in(sums, x, cdf)  # (B,)
    x = x - (cdf.gather(1, (block - 1).clamp(min=0)[:, None])[:, 0] * (block > 0))
    cols = block[:, None] * _DRAW_BLOCK + torch.arange(_DRAW_BLOCK, device=probs.device)  # (B, block)
    inside = probs.gather(1, cols.clamp(max=N - 1)) * (cols < N)  # (B, block)
    return block * _DRAW_BLOCK + _draw_in(inside, x)


def _draw_in(probs: torch.Tensor, x: torch.Tensor, cdf: torch.Tensor | None = None) -> torch.Tensor:
    """The first column whose cumulative probability exceeds x; x is kept below the row total so
    rounding can never pick a trailing column of probability 0."""
    cdf = probs.cumsum(dim=-1) if cdf is None else cdf  # (B, N)
    total = cdf[:, -1]
    x = torch.minimum(x, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x[:, None], right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


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


PARALLEL_MIN_FLOPS = 64e6
"""Forward FLOPs a decode step needs before it is worth more than one intra-op thread."""


@contextmanager
def _threads_for(flops: float, device: torch.device) -> Iterator[None]:
    """Run a step on one intra-op thread when its work is below PARALLEL_MIN_FLOPS (CPU only).

    A decode step of a small model is a few hundred microsecond-sized kernels.
    Some of them (SDPA, matmuls) open a parallel region anyway, and each region
    costs a thread wake-up and a barrier: more than the work it splits, and far
    more when another process holds the other core (the waiting thread spins
    until it is scheduled). Bigger steps keep every thread the caller set.
    """
    before = torch.get_num_threads()
    if device.type != "cpu" or before == 1 or flops >= PARALLEL_MIN_FLOPS:
        yield
        return
    torch.set_num_threads(1)
    budget = kernels.thread_budget.set(before)  # the attention kernel is one region per layer: it keeps them
    try:
        yield
    finally:
        kernels.thread_budget.reset(budget)
        torch.set_num_threads(before)


def _graphs_wanted(device: torch.device) -> bool:
    """Decode steps replay a CUDA graph on CUDA devices unless TINYSTORIES_CUDA_GRAPHS=0."""
    return device.type == "cuda" and os.environ.get("TINYSTORIES_CUDA_GRAPHS", "1") != "0"


class _GraphStep:
    """The decode step of every row of a cache, captured once as a CUDA graph and then replayed.

    A decode step of a small model is a few hundred short kernels, and launching
    them from Python takes longer than the GPU needs to run them; a replay
    launches them all at once. The graph covers all rows of the cache at fixed
    shapes (`GPT.decode(static=True)`): free rows take a dummy token at length 0,
    which the caller empties again, as in the uncaptured step.
    """

    def __init__(self, model: GPT, cache: KVCache):
        self.tokens = torch.zeros(cache.batch_size, dtype=torch.long, device=cache.lengths.device)  # (B,)
        saved = cache.lengths.clone()
        # Capture needs the kernels warmed up (and their workspaces allocated) on a side stream first. The
        # warm-up writes keys and values only into each row's next slot, which the first real step overwrites.
        side = torch.cuda.Stream(device=cache.lengths.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                model.decode(self.tokens, cache, static=True)
                cache.lengths.copy_(saved)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model.decode(self.tokens, cache, static=True)  # (B, V), refilled by each replay
        cache.lengths.copy_(saved)
        self.weights_key = _decode_weights(model).key  # the graph reads these very tensors

    def stale(self, model: GPT) -> bool:
        """Whether the model's parameters changed since the capture (the graph would read the old ones)."""
        return _decode_weights(model).key != self.weights_key

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding tokens (n,) to rows [0, n) and a dummy token to the rest."""
        n = tokens.shape[0]
        self.tokens[:n].copy_(tokens)
        self.tokens[n:].zero_()
        self.graph.replay()
        return self.logits


class Sampler:
    """Batched, KV-cached generation through which sequences join and leave.

    `add` prefills a prompt into a free cache row and returns a sequence id;
    `step` produces one token for every live sequence; a finished sequence's row
    is freed at once, and `remove` frees one early. Forwards cover rows
    [0, highest live row], so a full pool runs at full batch and a draining one
    shrinks.
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
        self._fresh: dict[int, torch.Tensor] = {}  # row -> (V,) logits from its prefill
        self._logits: torch.Tensor | None = None  # (rows, V) from the last step's forward
        self._rows: list[_Seq | None] = [None] * max_batch
        self._seqs: dict[int, _Seq] = {}
        self._live_plan: _Live | None = None  # built on the first step after a change of members
        self._next_id = 0
        self._vocab = V
        self._graph: _GraphStep | None = None  # built on the first decode step on CUDA (_graphs_wanted)
        # Forward FLOPs per token (2 per weight of every matmul, the classifier included); see _threads_for.
        self._token_flops = 2 * (model.num_params(non_embedding=True) + V * self.config.d_model)

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
            ids.append(seq.seq_id)
        # Prefill runs of neighbouring rows together.
        order = sorted(zip(free, prompts))
        run: list[tuple[int, Sequence[int]]] = []
        for item in order:
            if run and item[0] != run[-1][0] + 1:
                self._prefill(run)
                run = []
            run.append(item)
        self._prefill(run)
        return ids

    def _prefill(self, run: list[tuple[int, Sequence[int]]]) -> None:
        """Right-padded prefill of prompts into rows run[0][0] ... (consecutive rows)."""
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
        with _threads_for(idx.numel() * self._token_flops, self.device):
            out = self.model(idx, logits=last, cache=view).logits  # (n, 1, V)
        view.lengths.copy_(last + 1)  # undo the padding's advance
        for i, (row, _) in enumerate(run):
            self._fresh[row] = out[i, 0]

    def remove(self, seq_id: int) -> None:
        """Free a sequence's row (a client went away, or it finished); unknown ids are ignored."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        self._rows[seq.row] = None
        self._live_plan = None
        self._fresh.pop(seq.row, None)
        self._live[seq.row] = 0
        self.cache.lengths[seq.row] = 0

    # -- one token for everyone --

    def _next_uniforms(self, plan: _Live) -> torch.Tensor:
        """One uniform number per row in [0, hi), from each sequence's own generator; (hi,)."""
        for seq in plan.drawn:
            # Every live sequence has consumed `generated` numbers; a block is drawn when one runs out.
            if seq.generated % _UNIFORM_BLOCK == 0:
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
        """Sample one token for each live sequence, then run the forward that prepares the next step."""
        if not self._seqs:
            return []
        with _threads_for(self._plan().hi * self._token_flops, self.device):
            return self._step()

    @torch.inference_mode()
    def _step(self) -> list[StepEvent]:
        plan = self._plan()
        logits = self._gather_logits(plan.hi)  # (hi, V)
        logp = None
        if plan.top_logprobs >= 0:  # before sampling, which overwrites the logits
            logp = torch.log_softmax(_fp32(logits), dim=-1)  # (hi, V)
        if plan.all_greedy:
            tokens = logits.argmax(dim=-1)  # (hi,)
        else:
            tokens = self._sample(logits, plan)
        token_list = tokens.tolist()  # the one host sync of a step
        lps = None if logp is None else self._logprobs(logp, tokens, plan.top_logprobs)

        events = []
        for seq in plan.seqs:
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

        self._logits = None
        if self._seqs:
            hi = self._plan().hi
            if _graphs_wanted(self.device):
                if self._graph is None or self._graph.stale(self.model):
                    self._graph = _GraphStep(self.model, self.cache)
                self._logits = self._graph(tokens[:hi])  # (max_batch, V); rows past hi are free
                self.cache.lengths.mul_(self._live)  # free rows took a dummy token; keep them empty
                return events
            view = self._view(hi)
            out = self.model(tokens[:hi, None], logits="last", cache=view).logits  # (hi, 1, V)
            if len(self._seqs) < hi:
                view.lengths.mul_(self._live[:hi])  # free rows took a dummy token; keep them empty
            self._logits = out[:, 0]
        return events

    @staticmethod
    def _logprobs(logp: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[list, list, list]:
        """Per row: the chosen token's log-probability, and the top k ids and log-probabilities; as lists."""
        chosen = logp.gather(1, tokens[:, None])[:, 0].tolist()
        if k == 0:
            return chosen, [[] for _ in chosen], [[] for _ in chosen]
        top_lps, top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1)  # (hi, k)
        return chosen, top_ids.tolist(), top_lps.tolist()

    def _gather_logits(self, hi: int) -> torch.Tensor:
        """Next-token logits of rows [0, hi): last step's forward, with freshly prefilled rows patched in."""
        have = 0 if self._logits is None else self._logits.shape[0]
        if not self._fresh and have >= hi:
            return self._logits[:hi]
        logits = torch.zeros(hi, self._vocab, device=self.device, dtype=self._fresh_dtype())
        if have:
            logits[: min(have, hi)] = self._logits[:hi]
        for row, row_logits in self._fresh.items():
            logits[row] = row_logits
        self._fresh.clear()
        return logits

    def _fresh_dtype(self) -> torch.dtype:
        if self._logits is not None:
            return self._logits.dtype
        return next(iter(self._fresh.values())).dtype

    def _sample(self, logits: torch.Tensor, plan: _Live) -> torch.Tensor:
        """Sampled tokens for rows [0, hi), greedy rows keeping their argmax; (hi,). Overwrites `logits`."""
        hi = plan.hi
        greedy = None
        if plan.is_greedy is not None:
            greedy = (plan.is_greedy, logits.argmax(dim=-1))  # before the in-place passes below
        scaled = _fp32(logits)  # the logits themselves when already fp32: they are scratch now
        if plan.tempered:
            scaled = scaled.div_(self._temperature[:hi, None])
        weights = _weights(scaled, self._top_k[:hi], self._top_p[:hi], plan.filtered)
        sampled = _draw(weights, self._next_uniforms(plan))  # (hi,)
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


# --- beam search ------------------------------------------------------------------


@dataclass
class BeamResult:
    tokens: list[int]
    """New token ids, end-of-text left out."""
    logprob: float
    """Sum of the log-probabilities of the new tokens (end-of-text included when it ended the beam)."""
    score: float
    """logprob / (number of new tokens) ** length_penalty: what beams are ranked by."""
    finish_reason: str


@torch.inference_mode()
def beam_search(
    model: GPT,
    prompt: Sequence[int],
    beams: int = 5,
    max_new_tokens: int = 256,
    length_penalty: float = 1.0,
    eot_id: int | None = None,
) -> BeamResult:
    """The most likely continuation found by beam search with `beams` beams.

    Each step every live beam is extended by every token and the extensions are
    scanned best first: one ending in end-of-text becomes a finished hypothesis,
    the others become the next live beams until there are `beams` of them.
    Search stops once `beams` hypotheses are finished, or at max_new_tokens or
    the end of the context (then the live beams count as hypotheses too). The
    best hypothesis by `score` wins: length_penalty 0 ranks by plain
    log-probability, larger values favour longer continuations.
    """
    if beams < 1:
        raise UserError(f"beams must be >= 1, got {beams}")
    cfg = model.config
    param = next(model.parameters())
    device = param.device
    max_len = cfg.max_seq_len
    if not prompt or len(prompt) >= max_len:
        raise UserError(f"a prompt needs 1 to {max_len - 1} tokens, got {len(prompt)}")

    def hypothesis(tokens: list[int], logprob: float, n: int, reason: str) -> BeamResult:
        return BeamResult(tokens, logprob, logprob / max(n, 1) ** length_penalty, reason)

    # The cache starts with one row; reorder grows it to the live beams after the first step.
    cache = KVCache(cfg, 1, max_len, device=device, dtype=param.dtype)
    idx = torch.as_tensor([list(prompt)], dtype=torch.long, device=device)
    logits = model(idx, logits="last", cache=cache).logits[:, 0]  # (1, V)
    live: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64, device=device)  # (k,) summed log-probs of live beams
    done: list[BeamResult] = []
    reason = FINISH_LENGTH
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits.double(), dim=-1)  # (k, V)
        V = logp.shape[-1]
        total = (scores[:, None] + logp).flatten()  # (k * V,)
        best, flat = total.topk(min(2 * beams, total.numel()))
        parents, tokens, kept = [], [], []
        for s, f in zip(best.tolist(), flat.tolist()):
            parent, tok = divmod(f, V)
            if eot_id is not None and tok == eot_id:
                done.append(hypothesis(live[parent], s, len(live[parent]) + 1, FINISH_STOP))
            else:
                parents.append(parent)
                tokens.append(tok)
                kept.append(s)
            if len(done) >= beams or len(parents) == beams:
                break
        if len(done) >= beams or not parents:
            live = []
            break
        live = [live[p] + [t] for p, t in zip(parents, tokens)]
        scores = torch.tensor(kept, dtype=torch.float64, device=device)
        if len(prompt) + step + 1 >= max_len:
            reason = FINISH_CONTEXT  # the new tokens have no cache slot left to be fed into
            break
        if step == max_new_tokens - 1:
            break
        cache.reorder(torch.as_tensor(parents, device=device))
        fed = torch.as_tensor(tokens, device=device)[:, None]  # (k, 1)
        logits = model(fed, logits="last", cache=cache).logits[:, 0]  # (k, V)
    done += [hypothesis(t, s, len(t), reason) for t, s in zip(live, scores.tolist())]
    return max(done, key=lambda r: r.score)


# --- the command ---------------------------------------------------------------------


@dataclass
class SampleConfig:
    """`tinystories sample`: completions of prompts by a trained run."""

    run: str = ""
    """Run folder to sample from."""
    prompt: tuple[str, ...] = ("",)
    """Prompt text(s); each is encoded as [eot] + tokens. Empty = a story from scratch."""
    n: int = field(default=1, metadata={"aliases": ("-n",)})
    """Completions per prompt."""
    max_new_tokens: int = 256
    """New tokens per completion at most."""
    temperature: float = 1.0
    """Softmax temperature; 0 = greedy."""
    top_k: int = 0
    """Sample from the k most likely tokens only; 0 = off."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1 = off."""
    beams: int = 0
    """Beam search with this many beams instead of sampling (the paper's authors used 5); 0 = sample."""
    length_penalty: float = 1.0
    """Beam search: score = log-prob / length ** length_penalty."""
    seed: int = 1337
    """Seed; completion i of the command uses seed + i."""
    step: int | None = None
    """Checkpoint step to load; default = the latest."""
    device: str = "auto"
    """Torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1, mps."""
    batch: int = 64
    """Sequences decoded together at most."""
    compile: bool = False
    """Run the model under torch.compile (faster decoding after a compile of ~30 s or more)."""
    stream: bool | None = None
    """Print tokens as they come; default: when there is one completion and stdout is a terminal."""
    out: str | None = None
    """Also write the completions as JSON to this file (default: only print)."""


def sample(cfg: SampleConfig) -> None:
    """Print completions of cfg.prompt(s) by the run's model."""
    from tinystories.io import atomic_write_json
    from tinystories.rundir import load_run, with_device

    cfg = with_device(cfg)
    if not cfg.run:
        raise UserError("--run is required: the run folder to sample from")
    if cfg.n < 1:
        raise UserError(f"-n must be >= 1, got {cfg.n}")
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    model, tok = loaded.model, loaded.tokenizer
    if cfg.compile:
        model.forward = torch.compile(model.forward, dynamic=True)
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
            r = found[text]
            results.append({"prompt": text, "tokens": r.tokens, "finish_reason": r.finish_reason,
                            "logprob": r.logprob})
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
