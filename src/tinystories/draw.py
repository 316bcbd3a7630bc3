"""From logits to a token: temperature, top-k and top-p for a batch of rows, and the inverse-CDF draw.

Each row has its own settings, and everything is vectorised over the rows. A
row's draw consumes exactly one uniform number, so a sequence's tokens do not
depend on what else is in the batch (see `tinystories.sample`).
"""

from __future__ import annotations

import torch

_TOP_CANDIDATES = 64
"""Candidates looked at first by top-k / top-p (grown 4x while a row's cut-off lies beyond them)."""


def token_weights(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, filtered: bool) -> torch.Tensor:
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


def fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 when it already is (half-precision logits are upcast to sample)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def filtered_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """The distribution a sampler draws from: (B, V) probabilities, each row summing to 1."""
    B = logits.shape[0]
    w = token_weights(fp32(logits) / temperature, torch.full((B,), top_k), torch.full((B,), float(top_p)), True)
    return w / w.sum(dim=-1, keepdim=True)


_DRAW_BLOCK = 1024
"""Vocabulary block of the two-level inverse-CDF draw."""


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
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
