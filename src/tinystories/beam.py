"""Beam search: the most likely continuation of one prompt, its beams sharing one KV cache.

Deterministic, so `tinystories sample --beams N` runs one search per distinct
prompt (the paper's authors used 5 beams).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tinystories.decode import FINISH_CONTEXT, FINISH_LENGTH, FINISH_STOP, KVCache, next_logits
from tinystories.errors import UserError
from tinystories.model import GPT


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
    logits = next_logits(model, idx, cache)  # (1, V)
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
        logits = next_logits(model, fed, cache)  # (k, V)
    done += [hypothesis(t, s, len(t), reason) for t, s in zip(live, scores.tolist())]
    return max(done, key=lambda r: r.score)

