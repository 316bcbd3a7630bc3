"""The training loss: cross-entropy of the classifier's logits, computed in chunks, fused with its gradients.

At a 32,000-token vocabulary the logits of a batch are the largest tensor of a
training step; here at most one chunk of them exists at a time, in the forward
and in the backward. Shapes: N rows (batch x tokens), C d_model, V vocab_size.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -1
"""Target id that the loss skips (padding, prompt tokens in instruct training)."""

LOSS_CHUNK_ELEMENTS = 2**23
"""Logit elements materialised at once by the chunked loss (32 MiB in fp32, in each of two buffers)."""

GPU_LOSS_CHUNK_ELEMENTS = 2**28
"""The same on a GPU (1 GiB in fp32): there a chunk costs a dozen kernel launches, not cache misses, so few large ones win."""


def _chunked_ce(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int, with_grads: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed cross-entropy of h @ weight.T, `rows` rows at a time, the count of targets; optionally the gradients.

    The gradient of cross-entropy w.r.t. the logits is softmax - onehot, known as
    soon as a chunk's logits exist, so the input gradients are accumulated here
    and the logits are never kept: one matmul per chunk fewer than recomputing
    them in backward.

    Every pass over a chunk's (rows, V) logits counts at a large vocabulary (at
    32,000 they outweigh the rest of the step's elementwise work), so: the
    logits and log-probabilities live in two buffers allocated once per call,
    not per chunk (a fresh 32 MiB tensor is a fresh mmap, page-faulted in
    every time); log_softmax makes one cache-friendly pass per row and exp_ one
    more for the softmax; ignored rows are zeroed in the small (rows, C)
    operands, never in the logits; grad_w accumulates inside the matmul (addmm_).
    """
    valid = targets != IGNORE_INDEX  # (N,)
    safe = targets.clamp(min=0)  # ignored rows still need an index to gather
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if with_grads else None
    grad_w: torch.Tensor | None = None
    n_max = min(rows, h.shape[0])
    plain = h.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled(h.device.type)
    logits_buf = torch.empty(n_max, weight.shape[0], dtype=torch.float32, device=h.device) if plain else None
    logp_buf = torch.empty(n_max, weight.shape[0], dtype=torch.float32, device=h.device)
    for s in range(0, h.shape[0], rows):
        hc, tc, vc = h[s : s + rows], safe[s : s + rows], valid[s : s + rows]
        n = hc.shape[0]
        # (n, V), in the autocast dtype when autocast is on
        raw = torch.mm(hc, weight.T, out=logits_buf[:n]) if logits_buf is not None else hc @ weight.T
        logp = torch.log_softmax(raw.float(), dim=-1, out=logp_buf[:n])  # (n, V)
        picked = logp.gather(1, tc[:, None])[:, 0]  # (n,) log-probability of the target
        total = total - torch.where(vc, picked, 0.0).sum()
        if grad_h is not None:
            g = logp.exp_()  # softmax, in place: the log-probabilities are done with
            g[torch.arange(n, device=g.device), tc] -= 1.0
            g = g.to(raw.dtype)
            keep = vc[:, None].to(hc.dtype)  # (n, 1): ignored rows get no gradient
            grad_h[s : s + rows] = (g @ weight) * keep
            if grad_w is None:
                grad_w = (g.T @ (hc * keep)).float()  # (V, C)
            elif plain:
                grad_w.addmm_(g.T, hc * keep)  # accumulated by the matmul itself: no extra pass over (V, C)
            else:
                grad_w += (g.T @ (hc * keep)).float()
    if with_grads and grad_w is None:  # no rows at all
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
    return total, valid.sum(), grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        total, count, grad_h, grad_w = _chunked_ce(h, weight, targets, rows, with_grads=True)
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        return (grad_h * scale.to(grad_h.dtype), (grad_w * scale).to(ctx.weight_dtype), None, None)


def chunked_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ weight.T against targets, skipping IGNORE_INDEX.

    h (N, C), weight (V, C), targets (N,). Equals F.cross_entropy(h @ weight.T,
    targets, ignore_index=-1), but at most `chunk_rows` x V logits exist at a
    time, in the forward and in the backward.
    """
    budget = GPU_LOSS_CHUNK_ELEMENTS if h.device.type == "cuda" else LOSS_CHUNK_ELEMENTS
    rows = chunk_rows or max(1, budget // weight.shape[0])
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        loss: torch.Tensor = _LinearCrossEntropy.apply(h, weight, targets, rows)
        return loss
    total, count, _, _ = _chunked_ce(h, weight, targets, rows, with_grads=False)
    return total / count
