"""The model: one GPT-style decoder covering both TinyStories families.

GPT-Neo (the paper's released checkpoints) and Llama (llama2.c's reproductions)
are not separate classes. They are presets (see `tinystories.presets`) over a
handful of independent switches in `ModelConfig`: the norm (LayerNorm | RMSNorm),
positions (learned | RoPE), the MLP (GELU | SwiGLU), the attention score scale
(1/sqrt(head_dim) | none), a per-layer attention window, bias switches, grouped
key/value heads and a tied classifier.

Reading order: config -> positions (RoPE) -> attention -> MLP -> block -> GPT.
Shapes: B batch, T new tokens, S keys visible to attention, C d_model, H query
heads, K key/value heads, D head_dim, F d_ff, V vocab_size.

Elsewhere: the chunked loss is `tinystories.loss`, the KV cache and the lean
one-token step the sampler runs are `tinystories.decode`, and parameter and
FLOP counts are `tinystories.flops`.

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
from typing import Literal, NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from tinystories import kernels
from tinystories.errors import UserError
from tinystories.loss import chunked_cross_entropy

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


# --- positions --------------------------------------------------------------


def rope_tables(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for rotary embeddings at positions `pos` ((T,) or (B, T)) -> (..., T, 1, D) each, fp32.

    Rotate-half layout (as HF Llama): dimension i pairs with i + D/2, both at frequency i.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float) / head_dim))
    freqs = pos.float()[..., None] * inv_freq  # (..., T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)[..., None, :]  # (..., T, 1, D): broadcasts over heads
    return angles.cos(), angles.sin()


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


class Cache(Protocol):
    """What the forward reads and writes of a KV cache (`tinystories.decode.KVCache`)."""

    max_len: int  # positions a row holds
    lengths: torch.Tensor  # (B,) tokens held per row
    kv: list[torch.Tensor]  # per layer (B, 2K, max_len, D): key heads, then value heads
    keys: list[torch.Tensor]  # per layer (B, K, max_len, D), views of kv
    values: list[torch.Tensor]


def attention_mask(positions: torch.Tensor, kv_len: int, window: int | None) -> torch.Tensor:
    """(..., S) bool: which of keys 0..S-1 a query at each position sees (causal, within `window`)."""
    dist = positions[..., None] - torch.arange(kv_len, device=positions.device)  # i - j
    mask = dist >= 0
    if window is not None:
        mask &= dist < window
    return mask


@dataclass
class _Step:
    """What every layer of one forward shares; built in GPT.forward, never kept."""

    rope: tuple[torch.Tensor, torch.Tensor] | None  # rotations (T, heads, D/2, 2) or (B, T, 1, D/2, 2); qkv rows
    masks: dict[int | None, torch.Tensor | None]  # window -> bool mask (True = visible); None: see `Attention`
    cache: Cache | None
    past: int  # cached tokens of every row when `slots` is None (rows in step); else the longest row's
    slots: tuple[torch.Tensor, torch.Tensor] | None  # rows out of step only: flat cache slots of the new keys and
    # values, (B*K*T,) each, in the order (b, k, t); see Cache.kv
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

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  dropout: float, hooks: Hooks) -> torch.Tensor:
        """Attention with the probabilities materialised, so a hook can read or replace them.

        q (B, H, T, D), k and v (B, H, S, D); mask as in `_Step.masks`.
        """
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


def _norm(config: ModelConfig) -> nn.LayerNorm | nn.RMSNorm:
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

    # Buffers of RoPE models (see __init__), declared for the type checker.
    rope_rotations: torch.Tensor
    qkv_pair_rows: torch.Tensor

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
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: weights N(0, init_std), residual output projections scaled down, biases 0, norms 1."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm | nn.RMSNorm):
                module.reset_parameters()
        # Each block adds two outputs to the residual stream; this keeps its variance from growing with depth.
        for block in self.layers():
            nn.init.normal_(block.attn.out.weight, 0.0, std / math.sqrt(2 * self.config.n_layer))
            nn.init.normal_(block.mlp.proj.weight, 0.0, std / math.sqrt(2 * self.config.n_layer))

    def layers(self) -> list[Block]:
        """The blocks, in order (iterating `blocks`, an nn.ModuleList, gives them typed as plain Modules)."""
        return cast("list[Block]", list(self.blocks))

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
        cache: Cache | None = None,
        hooks: Hooks | None = None,
    ) -> ModelOutput:
        """Run the decoder on idx (B, T).

        targets (B, T): next-token ids, IGNORE_INDEX (-1) skipped; the loss is
        computed in chunks (training should pass logits="none"). logits: "all"
        (B, T, V), "last" (B, 1, V), "none", or a (B,) long tensor of per-row
        positions within the T tokens (B, 1, V). cache (a `decode.KVCache`): new
        tokens of row b take positions cache.lengths[b] + t; lengths advance by T.
        hooks: see module doc. One new token per row is what `decode.decode_step`
        computes faster; the sampler calls it itself.
        """
        B, T = idx.shape
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

    def _positions(self, T: int, device: torch.device, cache: Cache | None) -> torch.Tensor:
        """Positions of the new tokens: (T,) without a cache, (B, T) with one."""
        new = torch.arange(T, device=device)
        return new if cache is None else cache.lengths[:, None] + new

    def _plan(self, B: int, T: int, device: torch.device, cache: Cache | None) -> _Step:
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
            mask = attention_mask(pos, kv_len, window)  # (T, S) or (B, T, S)
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

