"""The model: one GPT-style decoder covering both TinyStories families.

GPT-Neo (the paper's released checkpoints) and Llama (llama2.c's reproductions)
are not separate classes. They are presets (see `tinystories.presets`) over a
handful of independent switches in `ModelConfig`: the norm (LayerNorm | RMSNorm),
positions (learned | RoPE), the MLP (GELU | SwiGLU), the attention score scale
(1/sqrt(head_dim) | none), a per-layer attention window, bias switches, grouped
key/value heads and a tied classifier.

Reading order: config -> loss -> positions -> attention -> MLP -> block -> GPT
-> KV cache. Shapes: B batch, T new tokens, S keys visible to attention, C
d_model, H query heads, K key/value heads, D head_dim, F d_ff, V vocab_size.

Hooks: `forward(..., hooks={name: fn})` calls `fn(tensor)` at the named site; a
returned tensor replaces the activation, None only observes. Names follow
TransformerLens (`blocks.3.attn.hook_pattern`, `ln_final.hook_normalized`; the
full list is `GPT.hook_sites()`); `hook_embed` is the token embedding, before
learned positions are added. With `hooks=None` a site costs one call and one `if`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tinystories import kernels
from tinystories.errors import UserError

IGNORE_INDEX = -1
"""Target id that the loss skips (padding, prompt tokens in instruct training)."""

Hooks = Mapping[str, Callable[[torch.Tensor], "torch.Tensor | None"]]


# --- configuration ----------------------------------------------------------


@dataclass
class ModelConfig:
    """Architecture of a decoder. Defaults are GPT-Neo's switches; use `presets` for real sizes."""

    vocab_size: int = 50257
    """Number of token ids (rows of the embedding and of the classifier)."""
    max_seq_len: int = 512
    """Longest sequence trained on; learned positions have exactly this many rows."""
    d_model: int = 64
    """Width of the residual stream."""
    n_layer: int = 8
    """Number of transformer blocks."""
    n_head: int = 16
    """Number of query heads per attention layer."""
    n_kv_head: int | None = None
    """Number of key/value heads (grouped-query attention); None = n_head."""
    d_ff: int | None = None
    """MLP hidden width; None = family rule: 4*d_model for gelu_tanh, llama2.c's rule for swiglu."""
    ff_multiple_of: int = 32
    """SwiGLU only, when d_ff is None: the hidden width int(2/3 * 4*d_model) is rounded up to a multiple of this."""
    norm: Literal["layer", "rms"] = "layer"
    """Normalisation before each sublayer and at the end: LayerNorm (with bias) or RMSNorm."""
    norm_eps: float = 1e-5
    """Epsilon added to the variance inside the norm."""
    pos: Literal["learned", "rope"] = "learned"
    """Positions: a learned embedding added to the tokens, or rotary embeddings on queries and keys."""
    rope_theta: float = 10000.0
    """RoPE base; frequency i of a head is theta ** (-2i / head_dim)."""
    mlp: Literal["gelu_tanh", "swiglu"] = "gelu_tanh"
    """MLP kind: Linear-GELU(tanh approximation)-Linear, or SwiGLU (silu(gate) * up, then down)."""
    attn_scale: Literal["sqrt", "none"] = "none"
    """Attention scores are multiplied by 1/sqrt(head_dim) ("sqrt") or left unscaled ("none", as GPT-Neo)."""
    windows: tuple[int | None, ...] = ()
    """Per-layer attention window: key j is visible to query i iff 0 <= i-j < window; None = global; () = all global."""
    qkv_bias: bool = False
    """Bias on the query, key and value projections."""
    attn_out_bias: bool = True
    """Bias on the attention output projection."""
    mlp_bias: bool = True
    """Biases on the MLP's linear layers."""
    tie_embeddings: bool = True
    """The classifier reuses the token embedding matrix (no separate lm_head weight)."""
    dropout: float = 0.0
    """Dropout on embeddings, attention probabilities and sublayer outputs during training."""
    init_std: float = 0.02
    """Std of the normal init; residual output projections use init_std / sqrt(2 * n_layer)."""

    def __post_init__(self) -> None:
        self.windows = tuple(_parse_window(w) for w in self.windows)
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layer", "n_head", "ff_multiple_of"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"model option {name} must be a positive integer, got {getattr(self, name)!r}")
        choices = {"norm": ("layer", "rms"), "pos": ("learned", "rope"),
                   "mlp": ("gelu_tanh", "swiglu"), "attn_scale": ("sqrt", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"model option {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.d_model % self.n_head:
            raise UserError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise UserError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.d_ff is not None and self.d_ff < 1:
            raise UserError(f"d_ff must be a positive integer or unset, got {self.d_ff}")
        if self.pos == "rope" and self.head_dim % 2:
            raise UserError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if len(self.windows) not in (0, self.n_layer):
            raise UserError(f"windows has {len(self.windows)} entries; give one per layer ({self.n_layer}) or none")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads, n_kv_head resolved."""
        return self.n_kv_head or self.n_head

    @property
    def ff_dim(self) -> int:
        """MLP hidden width, d_ff resolved by the family rule when unset."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "gelu_tanh":
            return 4 * self.d_model
        # llama2.c: 2/3 of 4*d keeps SwiGLU's three matrices near the parameter count of two.
        hidden = int(2 * (4 * self.d_model) / 3)
        return self.ff_multiple_of * math.ceil(hidden / self.ff_multiple_of)

    def layer_window(self, layer: int) -> int | None:
        """Attention window of `layer` (None = global)."""
        return self.windows[layer] if self.windows else None


def _parse_window(w: int | str | None) -> int | None:
    # Windows also arrive as command-line or TOML text: "256", "none".
    if isinstance(w, str):
        w = None if w.strip().lower() in ("none", "global", "") else int(w) if w.strip().isdigit() else w
    if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
        raise UserError(f"an attention window must be a positive integer or none, got {w!r}")
    return w


class ModelOutput(NamedTuple):
    logits: torch.Tensor | None
    """(B, T, V), (B, 1, V) or None, as the `logits` argument asked."""
    loss: torch.Tensor | None
    """Mean cross-entropy over targets that are not IGNORE_INDEX; None without targets."""


def _hook(hooks: Hooks | None, prefix: str, name: str, x: torch.Tensor) -> torch.Tensor:
    # The name is only built when hooks were given, so the hook-free path allocates nothing.
    if hooks is None:
        return x
    fn = hooks.get(prefix + name)
    if fn is None:
        return x
    out = fn(x)
    return x if out is None else out


# --- loss -------------------------------------------------------------------

LOSS_CHUNK_ELEMENTS = 2**23
"""Logit elements materialised at once by the chunked loss (32 MiB in fp32, in each of two buffers)."""

GPU_LOSS_CHUNK_ELEMENTS = 2**28
"""The same on a GPU (1 GiB in fp32): there a chunk costs a dozen kernel launches, not cache misses, so few large ones win."""


def _chunked_ce(h, weight, targets, rows, with_grads):
    """Summed cross-entropy of h @ weight.T, `rows` rows at a time; optionally its gradients.

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
    grad_w = None
    n_max = min(rows, h.shape[0])
    plain = h.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled(h.device.type)
    logits_buf = torch.empty(n_max, weight.shape[0], dtype=torch.float32, device=h.device) if plain else None
    logp_buf = torch.empty(n_max, weight.shape[0], dtype=torch.float32, device=h.device)
    for s in range(0, h.shape[0], rows):
        hc, tc, vc = h[s : s + rows], safe[s : s + rows], valid[s : s + rows]
        n = hc.shape[0]
        # (n, V), in the autocast dtype when autocast is on
        raw = torch.mm(hc, weight.T, out=logits_buf[:n]) if plain else hc @ weight.T
        logp = torch.log_softmax(raw.float(), dim=-1, out=logp_buf[:n])  # (n, V)
        picked = logp.gather(1, tc[:, None])[:, 0]  # (n,) log-probability of the target
        total = total - torch.where(vc, picked, 0.0).sum()
        if with_grads:
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
    def forward(ctx, h, weight, targets, rows):
        total, count, grad_h, grad_w = _chunked_ce(h, weight, targets, rows, with_grads=True)
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
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
        return _LinearCrossEntropy.apply(h, weight, targets, rows)
    total, count, _, _ = _chunked_ce(h, weight, targets, rows, with_grads=False)
    return total / count


# --- positions --------------------------------------------------------------


def rope_tables(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for rotary embeddings at positions `pos` ((T,) or (B, T)) -> (..., T, 1, D) each, fp32.

    Rotate-half layout (as HF Llama): dimension i pairs with i + D/2, both at frequency i.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float) / head_dim))
    freqs = pos.float()[..., None] * inv_freq  # (..., T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)[..., None, :]  # (..., T, 1, D): broadcasts over heads
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, heads, D), in rotate-half layout, by the angles in cos/sin (the reference form)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _attention_mask(positions: torch.Tensor, kv_len: int, window: int | None) -> torch.Tensor:
    """(..., S) bool: which of keys 0..S-1 a query at each position sees (causal, within `window`)."""
    dist = positions[..., None] - torch.arange(kv_len, device=positions.device)  # i - j
    mask = dist >= 0
    if window is not None:
        mask &= dist < window
    return mask


def rope_rotations(length: int, head_dim: int, theta: float) -> torch.Tensor:
    """(length, D/2, 2) float32: cos and sin of position t at frequency i, the same numbers as `rope_tables`."""
    cos, sin = rope_tables(torch.arange(length), head_dim, theta)  # (length, 1, D)
    return torch.stack((cos[:, 0, : head_dim // 2], sin[:, 0, : head_dim // 2]), dim=-1)


def pair_order(n_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a (n_heads * D)-row projection reordered so each head's RoPE pairs (i, i + D/2) sit side by side."""
    half = head_dim // 2
    within = torch.arange(head_dim).view(2, half).T.reshape(-1)  # 0, D/2, 1, D/2 + 1, ...
    return (torch.arange(n_heads)[:, None] * head_dim + within).reshape(-1)


def rotate_pairs(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, heads, D), in pair order (see `pair_order`), by the angles in `rotations`.

    rotations: (..., D/2, 2) cos and sin, broadcastable to (B, T, heads, D/2, 2).
    Seen as unit complex numbers, one complex multiply does what rotate-half
    needs four passes and a concatenation for.
    """
    if torch.compiler.is_compiling():
        # Inductor has no complex kernels; the same products in real arithmetic fuse into one loop.
        x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, T, heads, D/2) each
        c, s = rotations.unbind(-1)
        return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2).to(x.dtype)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()  # complex needs fp32 / fp64
    pairs = torch.view_as_complex(work.unflatten(-1, (-1, 2)))  # (B, T, heads, D/2)
    out = torch.view_as_real(pairs * torch.view_as_complex(rotations)).flatten(-2)
    return out if out.dtype == x.dtype else out.to(x.dtype)


# --- attention ----------------------------------------------------------------

_SDPA_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)
"""SDPA takes fewer key/value heads than query heads itself (enable_gqa) from torch 2.5 on."""


@dataclass
class _Step:
    """What every layer of one forward shares; built in GPT.forward, never kept."""

    rope: tuple[torch.Tensor, torch.Tensor] | None  # rotations (T, heads, D/2, 2) or (B, T, 1, D/2, 2); qkv rows
    masks: dict[int | None, torch.Tensor | None]  # window -> bool mask (True = visible); None: see `Attention`
    cache: KVCache | None
    past: int  # cached tokens of every row when `slots` is None (rows in step); else the longest row's
    slots: tuple[torch.Tensor, torch.Tensor] | None  # rows out of step only: flat cache slots of the new keys and
    # values, (B*K*T,) each, in the order (b, k, t); see KVCache.kv
    kv_len: int  # S: keys visible to this step, cached ones included
    positions: torch.Tensor  # (T,) shared by all rows, or (B, T)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # Skipped outright at p = 0 (the default): even a no-op dropout call costs a dispatch per site.
    return F.dropout(x, p, training=True) if training and p > 0 else x


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.prefix = f"blocks.{layer}.attn."
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.window = config.layer_window(layer)
        self.scale = 1.0 / math.sqrt(self.head_dim) if config.attn_scale == "sqrt" else 1.0
        self.dropout = config.dropout
        # One fused projection: a single large matmul is faster than three small ones on CPU.
        self.qkv = nn.Linear(config.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=config.qkv_bias)
        self.out = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.attn_out_bias)

    def forward(self, x: torch.Tensor, step: _Step, hooks: Hooks | None) -> torch.Tensor:
        B, T, _ = x.shape
        H, K, D = self.n_head, self.n_kv_head, self.head_dim
        if step.rope is None:
            q, k, v = self.qkv(x).split([H * D, K * D, K * D], dim=-1)
            q, k = q.view(B, T, H, D), k.view(B, T, K, D)
        else:
            # The query and key rows are taken in RoPE pair order (i next to i + D/2): the rotation is
            # then one complex multiply over contiguous memory (3x cheaper than rotate-half here,
            # forward and backward). Attention only uses dot products q.k, which the same reordering
            # of both leaves unchanged; cached keys are kept in this order too.
            rotations, rows = step.rope
            bias = None if self.qkv.bias is None else self.qkv.bias.index_select(0, rows)
            weight = self.qkv.weight.index_select(0, rows)  # index_select: 3x cheaper than weight[rows] here
            qk, v = F.linear(x, weight, bias).split([(H + K) * D, K * D], dim=-1)
            q, k = rotate_pairs(qk.view(B, T, H + K, D), rotations).split([H, K], dim=2)  # (B, T, H|K, D)
        v = v.view(B, T, K, D)

        dropout = self.dropout if self.training else 0.0
        if (step.cache is None and dropout == 0.0 and not torch.compiler.is_compiling() and kernels.trainable(q, k)
                and (hooks is None or self.prefix + "hook_pattern" not in hooks)):
            # fp32 on the CPU, whole sequences: the C kernel, forward and backward (kernels.py); 2-4x
            # PyTorch's flash kernel at head dims of 4-16, whose inner products are too short for it
            # (even at 48). torch.compile cannot trace into it, so compiled models keep SDPA.
            y = kernels.causal_attention(q, k, v, self.window, self.scale)  # (B, T, H, D)
            z = _hook(hooks, self.prefix, "hook_z", y)
            return _dropout(self.out(z.reshape(B, T, H * D)), self.dropout, self.training)  # (B, T, C)

        if step.cache is None:
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, K, S, D)
        else:
            keys, values = step.cache.keys[self.layer], step.cache.values[self.layer]  # (B, K, max_len, D)
            if step.slots is None:  # every row at the same position: a plain slice copy
                keys[:, :, step.past : step.past + T] = k.transpose(1, 2)
                values[:, :, step.past : step.past + T] = v.transpose(1, 2)
            else:  # rows at different positions: index_copy_ into the flattened slots
                flat = step.cache.kv[self.layer].view(-1, D)
                flat.index_copy_(0, step.slots[0], k.transpose(1, 2).reshape(-1, D).to(keys.dtype))
                flat.index_copy_(0, step.slots[1], v.transpose(1, 2).reshape(-1, D).to(values.dtype))
            k, v = keys[:, :, : step.kv_len], values[:, :, : step.kv_len]  # (B, K, S, D)
            if k.dtype != q.dtype:  # a cache kept in another precision
                k, v = k.to(q.dtype), v.to(q.dtype)
        q = q.transpose(1, 2)  # (B, H, T, D)

        # mask None: T > 1 means plain causal (S == T); T == 1 means every one of the S keys is visible.
        mask = step.masks[self.window]
        if hooks is not None and self.prefix + "hook_pattern" in hooks:
            if K != H:  # query head h reads key/value head h // (H / K)
                k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)  # (B, H, S, D)
            y = self._explicit(q, k, v, mask, dropout, hooks)
        elif K != H and T == 1:
            # One new token (decoding): the H / K query heads that share a key/value head act as that
            # many queries against it, so the cache is read once per key/value head and never copied
            # (2x faster than enable_gqa at this shape). A mask, when there is one, is per row only.
            y = F.scaled_dot_product_attention(
                q.reshape(B, K, H // K, D), k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale
            ).reshape(B, H, 1, D)
        elif K == H or _SDPA_GQA:
            # enable_gqa: SDPA reads each key/value head for its H / K query heads, with no copies.
            gqa = {"enable_gqa": True} if K != H else {}
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, dropout_p=dropout, scale=self.scale, **gqa
            )  # (B, H, T, D)
        else:  # torch < 2.5
            k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)  # (B, H, S, D)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, dropout_p=dropout, scale=self.scale
            )
        z = _hook(hooks, self.prefix, "hook_z", y.transpose(1, 2))  # (B, T, H, D)
        return _dropout(self.out(z.reshape(B, T, H * D)), self.dropout, self.training)  # (B, T, C)

    def _explicit(self, q, k, v, mask, dropout, hooks):
        """Attention with the probabilities materialised, so a hook can read or replace them."""
        T, S = q.shape[-2], k.shape[-2]
        if mask is None and T > 1:  # the causal case SDPA handles with is_causal; here S == T
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        pattern = scores.float().softmax(dim=-1).to(q.dtype)
        pattern = _hook(hooks, self.prefix, "hook_pattern", pattern)
        pattern = F.dropout(pattern, dropout, training=dropout > 0)
        return pattern @ v  # (B, H, T, D)


# --- MLP and block ------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.prefix = f"blocks.{layer}.mlp."
        self.gated = config.mlp == "swiglu"
        # SwiGLU's gate and up projections are fused into one matmul: rows [gate; up].
        n_in = 2 * config.ff_dim if self.gated else config.ff_dim
        self.fc = nn.Linear(config.d_model, n_in, bias=config.mlp_bias)
        self.proj = nn.Linear(config.ff_dim, config.d_model, bias=config.mlp_bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, hooks: Hooks | None) -> torch.Tensor:
        h = self.fc(x)  # (B, T, F) or (B, T, 2F)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(_hook(hooks, self.prefix, "hook_pre", gate)) * up  # hook_pre = the gate's input
        else:
            h = F.gelu(_hook(hooks, self.prefix, "hook_pre", h), approximate="tanh")
        h = _hook(hooks, self.prefix, "hook_post", h)  # (B, T, F)
        return _dropout(self.proj(h), self.dropout, self.training)  # (B, T, C)


def _norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rms":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.prefix = f"blocks.{layer}."
        self.ln1 = _norm(config)
        self.attn = Attention(config, layer)
        self.ln2 = _norm(config)
        self.mlp = MLP(config, layer)

    def forward(self, x: torch.Tensor, step: _Step, hooks: Hooks | None) -> torch.Tensor:
        p = self.prefix
        x = _hook(hooks, p, "hook_resid_pre", x)  # (B, T, C)
        x = x + _hook(hooks, p, "hook_attn_out", self.attn(self.ln1(x), step, hooks))
        x = _hook(hooks, p, "hook_resid_mid", x)
        x = x + _hook(hooks, p, "hook_mlp_out", self.mlp(self.ln2(x), hooks))
        return _hook(hooks, p, "hook_resid_post", x)


# --- the model ------------------------------------------------------------------


class GPT(nn.Module):
    """Decoder-only transformer configured by `ModelConfig`.

    Parameters: `tok_emb`, `pos_emb` (learned positions only), `blocks.{l}.ln1`,
    `.attn.qkv` (rows: H query heads, then K key heads, then K value heads),
    `.attn.out`, `.ln2`, `.mlp.fc` (SwiGLU: rows [gate; up]), `.mlp.proj`,
    `ln_final`, `lm_head` (untied classifier only).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.pos == "learned" else None
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_final = _norm(config)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.pos == "rope":
            # Constants derived from the config, built once rather than every forward (a decode step is
            # short enough for that to show): each position's rotation, and the qkv rows in RoPE pair
            # order (see Attention). Not in the state dict.
            self.register_buffer("rope_rotations", rope_rotations(config.max_seq_len, config.head_dim,
                                                                  config.rope_theta), persistent=False)
            qk_rows = (config.n_head + config.kv_heads) * config.head_dim  # value rows follow, as they are
            rows = torch.cat([pair_order(config.n_head + config.kv_heads, config.head_dim),
                              torch.arange(qk_rows, qk_rows + config.kv_heads * config.head_dim)])
            self.register_buffer("qkv_pair_rows", rows, persistent=False)
        # Parameters prepared for `decode`, built on first use (see _decode_weights).
        self._decode_params: list[nn.Parameter] | None = None
        self._decode_cache: _DecodeWeights | None = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: weights N(0, init_std), residual output projections scaled down, biases 0, norms 1."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm | nn.RMSNorm):
                module.reset_parameters()
        # Each block adds two outputs to the residual stream; this keeps its variance from growing with depth.
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, 0.0, std / math.sqrt(2 * self.config.n_layer))
            nn.init.normal_(block.mlp.proj.weight, 0.0, std / math.sqrt(2 * self.config.n_layer))

    @property
    def classifier_weight(self) -> torch.Tensor:
        """(V, C): the token embedding when tied, else lm_head's weight."""
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def hook_sites(self) -> list[str]:
        """Every hook name `forward` accepts, in the order they run."""
        per_block = ["hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                     "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]
        blocks = [f"blocks.{layer}.{name}" for layer in range(self.config.n_layer) for name in per_block]
        return ["hook_embed", *blocks, "ln_final.hook_normalized"]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        logits: Literal["all", "last", "none"] | torch.Tensor = "all",
        cache: KVCache | None = None,
        hooks: Hooks | None = None,
    ) -> ModelOutput:
        """Run the decoder on idx (B, T).

        targets (B, T): next-token ids, IGNORE_INDEX (-1) skipped; the loss is
        computed in chunks (training should pass logits="none"). logits: "all"
        (B, T, V), "last" (B, 1, V), "none", or a (B,) long tensor of per-row
        positions within the T tokens (B, 1, V). cache: new tokens of row b take
        positions cache.lengths[b] + t; lengths advance by T. hooks: see module doc.
        """
        B, T = idx.shape
        if T == 1 and cache is not None and hooks is None and targets is None and not _is_none(logits) and (
            self._decoding()
        ):
            return ModelOutput(self.decode(idx[:, 0], cache)[:, None], None)  # (B, 1, V)
        if hooks is not None:
            unknown = sorted(set(hooks) - set(self.hook_sites()))
            if unknown:
                raise UserError(f"unknown hook site(s): {', '.join(unknown)} (see GPT.hook_sites())")
        step = self._plan(B, T, idx.device, cache)

        x = _hook(hooks, "", "hook_embed", self.tok_emb(idx))  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(step.positions)
        x = _dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x, step, hooks)
        x = _hook(hooks, "", "ln_final.hook_normalized", self.ln_final(x))  # (B, T, C)
        if cache is not None:
            cache.lengths += T

        loss = None
        if targets is not None:
            loss = chunked_cross_entropy(x.reshape(B * T, -1), self.classifier_weight, targets.reshape(B * T))
        if isinstance(logits, torch.Tensor):
            x = x[torch.arange(B, device=x.device), logits][:, None]  # (B, 1, C)
        elif logits == "last":
            x = x[:, -1:]
        elif logits == "none":
            return ModelOutput(None, loss)
        elif logits != "all":
            raise ValueError(f"logits must be 'all', 'last', 'none' or a (B,) tensor, got {logits!r}")
        return ModelOutput(F.linear(x, self.classifier_weight), loss)

    def _decoding(self) -> bool:
        """Whether a one-token forward may take `decode`: nothing needs autograd, dropout or tracing."""
        return (
            not torch.is_grad_enabled()
            and not (self.training and self.config.dropout > 0)
            and not torch.compiler.is_compiling()
        )

    def decode(self, tokens: torch.Tensor, cache: KVCache, static: bool = False) -> torch.Tensor:
        """Logits (B, V) for the token after `tokens` (B,): one new token per row, at position cache.lengths[b].

        Computes what `forward(tokens[:, None], cache=cache, logits="last")` does;
        forward calls it when no gradient, hook, loss or dropout is involved. Why a
        separate path: a decode step of a small model is a few hundred kernels of
        a few microseconds each, so what surrounds them (module calls, mask
        building, transposing weights, reordering the RoPE rows, Python-level
        tensor methods) costs as much as the arithmetic. Operands are prepared
        once (`_decode_weights`), and a layer is: the norm, one matmul for q, k
        and v, attention, the output matmul with the residual add folded in, and
        the MLP likewise.

        Attention, two ways. fp32 on the CPU: the C kernels of `kernels.py`
        rotate q and k, write the cache and attend in one call per layer, and
        RMSNorm and SwiGLU are one call each; the logits agree with forward's
        to float32 rounding. Otherwise (other devices and dtypes, or kernels
        off): the same PyTorch kernels as forward on the same operands, so the
        logits are bitwise the same: one complex multiply rotating q and k, one indexed
        copy into the cache, and SDPA with no mask unless rows are at different
        positions or a local layer's window hides keys.

        `static`: the shapes do not depend on the lengths and nothing is read back
        to the host, as a CUDA graph needs (`sample._GraphStep`): every row
        attends over the whole cache through a mask. The caller keeps each
        length below `cache.max_len`. The logits agree with the other path to
        rounding (masking keys instead of slicing them changes the kernels).
        """
        cfg = self.config
        B = tokens.shape[0]
        H, K, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
        prepared = _decode_weights(self)
        if static:
            kv_len, shortest, longest = cache.max_len, -1, 0  # rows "at different positions": always a mask
        else:
            lengths = cache.lengths.tolist()  # the host needs the longest row to size attention: one sync
            shortest, longest = min(lengths), max(lengths)
            kv_len = longest + 1
        if kv_len > cache.max_len:
            raise UserError(f"KV cache holds {cache.max_len} positions; this step needs {kv_len}")
        if cfg.pos == "learned" and kv_len > cfg.max_seq_len:
            raise UserError(f"sequence of {kv_len} tokens exceeds the model's max_seq_len {cfg.max_seq_len}")
        pos = cache.lengths  # (B,)

        x = torch.embedding(prepared.embedding, tokens)  # (B, C)
        if prepared.positions is not None:
            x = x + torch.embedding(prepared.positions, pos)
        # fp32 on the CPU: a C kernel rotates, writes the cache and attends in one call per layer (kernels.py).
        fast = not static and kernels.usable(x, cache.kv[0])
        if fast:
            rope = prepared.rope
            if rope is not None and kv_len > len(rope):  # a cache longer than max_seq_len: extend the table
                rope = torch.view_as_complex(rope_rotations(kv_len, D, cfg.rope_theta))
            table = None if rope is None else torch.view_as_real(rope)  # (positions, D/2, 2)
            threads = kernels.threads_for(B * H * kv_len * D)  # an upper bound of the keys read
        else:
            slots = (cache.head_slots() + pos[:, None]).view(-1)  # (B*2K,) flat slots of the new keys, then values
            rotation = None
            if prepared.rope is not None:
                table = prepared.rope
                if kv_len > len(table):  # a cache longer than max_seq_len: extend the table, as forward does
                    table = torch.view_as_complex(rope_rotations(kv_len, D, cfg.rope_theta).to(tokens.device))
                # Broadcast over the heads: the same kernel, and so the same rounding, as forward's.
                rotation = table[pos].unsqueeze(1)  # (B, 1, D/2)
            # Each layer's attention mask: none when every key is visible, as forward decides, so that both paths
            # run the same kernel (slicing a window's keys instead of masking them changes the rounding).
            masks: dict[int | None, torch.Tensor | None] = {}
            for window in prepared.windows:
                if shortest != longest:
                    masks[window] = _attention_mask(pos, kv_len, window)[:, None, None]  # (B, 1, 1, S)
                elif window is None or window >= kv_len:  # every row at position `longest`, every key visible
                    masks[window] = None
                else:
                    masks[window] = _attention_mask(torch.arange(longest, kv_len, device=pos.device), kv_len, window)  # (1, S)

        norm = prepared.norm
        if fast and cfg.norm == "rms":  # PyTorch's RMSNorm is about ten kernels on the CPU; this is one call
            def norm(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
                return kernels.rms_norm(x, wb[0], cfg.norm_eps)

        for layer, kv, flat, keys, values in zip(prepared.layers, cache.kv, cache.flat, cache.keys, cache.values):
            h = norm(x, layer.norm1)
            qkv = torch.mm(h, layer.qkv) if layer.qkv_bias is None else torch.addmm(layer.qkv_bias, h, layer.qkv)
            if fast:
                y = kernels.decode_attention(qkv, kv, pos, table, H, layer.window, prepared.scale, threads)  # (B, H*D)
            else:
                heads = qkv.view(B, H + 2 * K, D)
                if rotation is None:
                    q = heads.narrow(1, 0, H)  # (B, H, D)
                    new = heads.narrow(1, H, 2 * K).reshape(B * 2 * K, D)  # keys, then values
                else:
                    qk = heads.narrow(1, 0, H + K)
                    if qk.dtype not in (torch.float32, torch.float64):
                        qk = qk.float()  # complex numbers need fp32 or fp64
                    turned = torch.view_as_complex(qk.view(B, H + K, D // 2, 2)) * rotation
                    turned = torch.view_as_real(turned).view(B, H + K, D)
                    if turned.dtype != x.dtype:
                        turned = turned.to(x.dtype)
                    q = turned.narrow(1, 0, H)
                    new = torch.cat((turned.narrow(1, H, K), heads.narrow(1, H + K, K)), dim=1).view(B * 2 * K, D)
                flat.index_copy_(0, slots, new if new.dtype == flat.dtype else new.to(flat.dtype))
                mask = masks[layer.window]
                k, v = keys.narrow(2, 0, kv_len), values.narrow(2, 0, kv_len)  # (B, K, S, D)
                if k.dtype != x.dtype:  # a cache kept in another precision
                    k, v = k.to(x.dtype), v.to(x.dtype)
                # The H / K query heads sharing a key/value head act as that many queries against it.
                y = F.scaled_dot_product_attention(q.view(B, K, H // K, D), k, v, attn_mask=mask,
                                                   scale=prepared.scale).view(B, H * D)
            x = _residual(x, y, layer.out, layer.out_bias)
            h = norm(x, layer.norm2)
            h = torch.mm(h, layer.fc) if layer.fc_bias is None else torch.addmm(layer.fc_bias, h, layer.fc)
            if prepared.gated and fast:  # SwiGLU in one C call
                h = kernels.silu_mul(h)  # (B, F)
            elif prepared.gated:  # SwiGLU: columns [gate; up]
                half = h.shape[1] // 2
                h = F.silu(h.narrow(1, 0, half)) * h.narrow(1, half, half)  # (B, F)
            else:
                h = F.gelu(h, approximate="tanh")
            x = _residual(x, h, layer.proj, layer.proj_bias)
        x = norm(x, prepared.norm_final)
        cache.lengths += 1
        return torch.mm(x, prepared.classifier)  # (B, V)

    def _positions(self, T: int, device: torch.device, cache: KVCache | None) -> torch.Tensor:
        """Positions of the new tokens: (T,) without a cache, (B, T) with one."""
        new = torch.arange(T, device=device)
        return new if cache is None else cache.lengths[:, None] + new

    def _plan(self, B: int, T: int, device: torch.device, cache: KVCache | None) -> _Step:
        """Positions, rotary tables, attention masks and cache slots, shared by all layers of one forward."""
        cfg = self.config
        shortest = longest = 0
        if cache is not None:
            shortest, longest = torch.stack(torch.aminmax(cache.lengths)).tolist()  # one host sync per forward
        kv_len = longest + T
        if cache is not None and kv_len > cache.max_len:
            raise UserError(f"KV cache holds {cache.max_len} positions; this step needs {kv_len}")
        if cfg.pos == "learned" and kv_len > cfg.max_seq_len:
            raise UserError(f"sequence of {kv_len} tokens exceeds the model's max_seq_len {cfg.max_seq_len}")
        # In step (every row holds as many tokens; always so without a cache), all rows share one set of
        # positions: the cache is written by slicing, and often no mask is needed at all.
        in_step = shortest == longest
        pos = torch.arange(longest, kv_len, device=device) if in_step else self._positions(T, device, cache)

        masks: dict[int | None, torch.Tensor | None] = {}
        for window in {cfg.layer_window(layer) for layer in range(cfg.n_layer)}:
            covers = window is None or window >= kv_len  # no key falls out of the window
            if (longest == 0 and (window is None or window >= T)) or (T == 1 and in_step and covers):
                masks[window] = None  # plain causal (SDPA's is_causal fast path), or one query seeing all keys
                continue
            mask = _attention_mask(pos, kv_len, window)  # (T, S) or (B, T, S)
            masks[window] = mask if pos.dim() == 1 else mask[:, None]  # (T, S) or (B, 1, T, S)

        rope = None
        if cfg.pos == "rope":
            table = self.rope_rotations  # (max_seq_len, D/2, 2); rebuilt past its end, or when cast off fp32
            if kv_len > len(table) or table.dtype != torch.float32:
                table = rope_rotations(kv_len, cfg.head_dim, cfg.rope_theta).to(device)
            if pos.dim() == 2:
                rotations = table[pos][:, :, None]  # (B, T, 1, D/2, 2)
            elif T == 1:
                rotations = table[longest : longest + 1, None]  # (1, 1, D/2, 2)
            else:
                # Materialised for every head: a product of two same-shaped operands vectorises fully,
                # one broadcast over heads (D/2 = 4 numbers at a time) does not.
                heads = cfg.n_head + cfg.kv_heads
                rotations = table[longest:kv_len, None].expand(T, heads, cfg.head_dim // 2, 2).contiguous()
            rope = (rotations, self.qkv_pair_rows)

        slots = None
        if cache is not None and not in_step:
            # Flat index of key slot (b, k, position) in a layer's (B, 2K, max_len, D) cache seen as
            # (B*2K*max_len, D), in the order the new keys are laid out: (b, k, t). Values sit K heads further.
            K, M = cfg.kv_heads, cache.max_len
            base = (torch.arange(B, device=device)[:, None] * 2 * K + torch.arange(K, device=device)) * M  # (B, K)
            key_slots = (base[:, :, None] + pos[:, None, :]).reshape(-1)  # (B*K*T,)
            slots = (key_slots, key_slots + K * M)
        return _Step(rope=rope, masks=masks, cache=cache, past=longest, slots=slots, kv_len=kv_len, positions=pos)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied classifier counted once, as the embedding).

        non_embedding=True leaves out the token and position embeddings. An untied
        classifier (lm_head) is a matmul every token pays for, so it stays in the
        non-embedding count; a tied one is the token embedding and is left out.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward) at sequence length seq_len (default max_seq_len).

        6 * N + 12 * sum over layers of (H * D * keys_l), where N counts the
        weights of every matmul (non-embedding parameters plus the classifier,
        tied or not), and keys_l is the number of keys a query attends to in
        layer l, averaged over the T positions: (T + 1) / 2 for a global causal
        layer, less for a windowed one. The 12 is 2 matmuls (q.k and p.v) x 2
        FLOPs per multiply-add x 3 (forward and the two backward matmuls).
        """
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        n = self.num_params(non_embedding=True)
        if self.lm_head is None:
            n += self.tok_emb.weight.numel()
        attn = 0.0
        for layer in range(cfg.n_layer):
            w = min(cfg.layer_window(layer) or T, T)
            # sum_{i<T} min(i + 1, w) = w(w+1)/2 + (T - w) * w
            keys = (w * (w + 1) / 2 + (T - w) * w) / T
            attn += 12 * cfg.n_head * cfg.head_dim * keys
        return 6 * n + attn


# --- KV cache -------------------------------------------------------------------


class KVCache:
    """Keys and values of past tokens, per layer, with a length per row.

    Rows advance independently: row b's next token goes to slot lengths[b], and
    slots at or beyond lengths[b] are never attended to, so a right-padded
    prefill is fixed by setting lengths[b] back to the real length, and a row is
    emptied for a new sequence by `reset`. Plain tensors, owned by the caller.
    In RoPE models each key head's dimensions are stored in pair order (see
    `pair_order`), as attention computes them; values are stored as they are.

    Each layer's keys and values live in one tensor, `kv[layer]` (B, 2K, max_len, D):
    heads [0, K) are keys, [K, 2K) values, so a decode step writes both with one
    copy; `keys[layer]` and `values[layer]` are views of its two halves.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        if config.pos == "learned" and max_len > config.max_seq_len:
            raise UserError(f"a KV cache of {max_len} positions exceeds max_seq_len {config.max_seq_len}")
        shape = (batch_size, 2 * config.kv_heads, max_len, config.head_dim)  # (B, 2K, S, D)
        dtype = dtype or torch.get_default_dtype()
        self.max_len = max_len
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        """(B,) tokens held per row; the next token of row b takes position lengths[b]."""
        self._split()

    def _split(self) -> None:
        K = self.kv[0].shape[1] // 2 if self.kv else 0
        self.keys = [t[:, :K] for t in self.kv]  # (B, K, max_len, D) views
        self.values = [t[:, K:] for t in self.kv]
        self.flat = [t.view(-1, t.shape[-1]) for t in self.kv]  # (B*2K*max_len, D): one row per slot
        self._head_slots: torch.Tensor | None = None

    def head_slots(self) -> torch.Tensor:
        """(B, 2K) long: the row in `flat[layer]` of slot 0 of each row and head (keys, then values)."""
        if self._head_slots is None:
            B, heads, M, _ = self.kv[0].shape
            device = self.lengths.device
            self._head_slots = (torch.arange(B, device=device)[:, None] * heads + torch.arange(heads, device=device)) * M
        return self._head_slots

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def rows(self, start: int, stop: int) -> KVCache:
        """A KVCache over rows [start, stop), sharing this one's tensors (writes, lengths included, land here)."""
        view = KVCache.__new__(KVCache)
        view.max_len = self.max_len
        view.kv = [t[start:stop] for t in self.kv]
        view.lengths = self.lengths[start:stop]
        view._split()
        return view

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i] (beam search); index may repeat rows or change B."""
        self.kv = [t.index_select(0, index) for t in self.kv]
        self.lengths = self.lengths.index_select(0, index)
        self._split()

    def reset(self, rows: torch.Tensor | list[int] | None = None) -> None:
        """Empty the given rows (indices or a (B,) bool mask; all when None) to start new sequences."""
        if rows is None:
            self.lengths.zero_()
            return
        rows = torch.as_tensor(rows, device=self.lengths.device)
        self.lengths[rows if rows.dtype == torch.bool else rows.long()] = 0  # a mask or row indices


# --- one-token decoding ---------------------------------------------------------


def _is_none(logits: str | torch.Tensor) -> bool:
    return isinstance(logits, str) and logits == "none"


def _residual(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x + h @ weight (+ bias): without a bias the add is folded into the matmul (addmm), one kernel fewer."""
    if bias is None:
        return torch.addmm(x, h, weight)
    return x + torch.addmm(bias, h, weight)


class _DecodeLayer(NamedTuple):
    """One block's parameters as `GPT.decode` uses them: matmul operands as (in, out) views, ready for mm."""

    norm1: tuple[torch.Tensor, torch.Tensor | None]  # weight, bias (None for RMSNorm)
    qkv: torch.Tensor  # (C, (H + 2K) * D); RoPE models: query and key columns in pair order (a copy)
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # (H * D, C)
    out_bias: torch.Tensor | None
    norm2: tuple[torch.Tensor, torch.Tensor | None]
    fc: torch.Tensor  # (C, F), or (C, 2F) for SwiGLU
    fc_bias: torch.Tensor | None
    proj: torch.Tensor  # (F, C)
    proj_bias: torch.Tensor | None
    window: int | None


class _DecodeWeights(NamedTuple):
    key: tuple  # storage address and version counter of every parameter they were built from
    sources: list[torch.Tensor]  # those storages, kept alive so that no new parameter can reuse an address
    layers: list[_DecodeLayer]
    embedding: torch.Tensor  # (V, C)
    positions: torch.Tensor | None  # (max_seq_len, C), learned positions only
    rope: torch.Tensor | None  # (max_seq_len, D/2) complex: each position's rotation
    norm: Callable[[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]], torch.Tensor]
    norm_final: tuple[torch.Tensor, torch.Tensor | None]
    classifier: torch.Tensor  # (C, V)
    windows: set[int | None]
    scale: float  # of the attention scores
    gated: bool  # SwiGLU MLP


def _decode_weights(model: GPT) -> _DecodeWeights:
    """The model's parameters prepared for `GPT.decode`, rebuilt only when one of them changed.

    A parameter counts as changed when its storage or version counter did
    (in-place updates, load_state_dict, .to()). Not seen: edits made through
    `.data` (they bypass the version counter), and parameters replaced by new
    Parameter objects after the first decode.
    """
    if model._decode_params is None:
        model._decode_params = list(model.parameters())
    key = tuple([(p.data_ptr(), p._version) for p in model._decode_params])  # ~10 us: 2% of a step
    cached = model._decode_cache
    if cached is not None and cached.key == key:
        return cached
    cfg = model.config

    def bias(linear: nn.Linear, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        if linear.bias is None or rows is None:
            return linear.bias
        return linear.bias.index_select(0, rows)

    def norm_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        return module.weight, getattr(module, "bias", None)

    rows = model.qkv_pair_rows if cfg.pos == "rope" else None
    layers = []
    for layer, block in enumerate(model.blocks):
        qkv = block.attn.qkv.weight
        layers.append(_DecodeLayer(
            norm1=norm_params(block.ln1),
            qkv=(qkv if rows is None else qkv.index_select(0, rows)).t(),
            qkv_bias=bias(block.attn.qkv, rows),
            out=block.attn.out.weight.t(), out_bias=block.attn.out.bias,
            norm2=norm_params(block.ln2),
            fc=block.mlp.fc.weight.t(), fc_bias=block.mlp.fc.bias,
            proj=block.mlp.proj.weight.t(), proj_bias=block.mlp.proj.bias,
            window=cfg.layer_window(layer),
        ))
    rope = None
    if cfg.pos == "rope":
        table = model.rope_rotations  # cast off fp32 with the model: rebuilt in fp32, as forward does
        if table.dtype != torch.float32:
            table = rope_rotations(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta).to(table.device)
        rope = torch.view_as_complex(table)
    # torch.rms_norm / torch.layer_norm: what F.rms_norm / F.layer_norm call, less a Python layer.
    shape, eps = (cfg.d_model,), cfg.norm_eps
    if cfg.norm == "rms":
        def norm(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
            return torch.rms_norm(x, shape, wb[0], eps)
    else:
        def norm(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
            return torch.layer_norm(x, shape, wb[0], wb[1], eps)

    model._decode_cache = _DecodeWeights(
        key=key, sources=[p.detach() for p in model._decode_params], layers=layers,
        embedding=model.tok_emb.weight, positions=None if model.pos_emb is None else model.pos_emb.weight,
        rope=rope, norm=norm, norm_final=norm_params(model.ln_final), classifier=model.classifier_weight.t(),
        windows={layer.window for layer in layers}, scale=model.blocks[0].attn.scale, gated=cfg.mlp == "swiglu",
    )
    return model._decode_cache


def count_params(config: ModelConfig, non_embedding: bool = False) -> int:
    """`GPT.num_params` without allocating weights (the model is built on the meta device)."""
    with torch.device("meta"):
        return GPT(config).num_params(non_embedding=non_embedding)

