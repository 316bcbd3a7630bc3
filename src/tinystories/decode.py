"""One-token decoding: the KV cache, and the lean step the sampler runs for every new token.

A decode step of a small model is a few hundred kernels of a few microseconds
each, so what surrounds them in the general forward (module calls, mask
building, transposing weights, reordering the RoPE rows) costs as much as the
arithmetic. `decode_step` computes what `GPT.forward` computes for one new token
per row, on operands prepared once (`prepared_weights`); tests hold the two to
bitwise equality wherever both run PyTorch's kernels. The sampler chooses
between them with `next_logits`.

Also here: the thread policy of a step on the CPU (`step_threads`), the
CUDA-graph capture of a step on the GPU (`GraphStep`), and the reasons a
generated sequence finishes (FINISH_*), shared by the sampler and beam search.

Shapes: B rows, S keys visible, C d_model, H query heads, K key/value heads,
D head_dim, F d_ff, V vocab_size.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tinystories import kernels
from tinystories.errors import UserError
from tinystories.model import GPT, ModelConfig, attention_mask, rope_rotations

FINISH_STOP = "stop"
"""The sequence produced end-of-text."""
FINISH_LENGTH = "length"
"""The sequence produced max_new_tokens tokens."""
FINISH_CONTEXT = "context"
"""The sequence filled the model's context (max_seq_len); nothing more fits."""


# --- KV cache -------------------------------------------------------------------


class KVCache:
    """Keys and values of past tokens, per layer, with a length per row.

    Rows advance independently: row b's next token goes to slot lengths[b], and
    slots at or beyond lengths[b] are never attended to, so a right-padded
    prefill is fixed by setting lengths[b] back to the real length, and a row is
    emptied for a new sequence by `reset`. Plain tensors, owned by the caller.
    In RoPE models each key head's dimensions are stored in pair order (see
    `model.pair_order`), as attention computes them; values are stored as they are.

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


# --- weights prepared for the step ----------------------------------------------------

class _DecodeLayer(NamedTuple):
    """One block's parameters as `decode_step` uses them: matmul operands as (in, out) views, ready for mm."""

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
    params: list[nn.Parameter]  # the model's parameters at its first decode step, in order
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


_PREPARED: weakref.WeakKeyDictionary[GPT, _DecodeWeights] = weakref.WeakKeyDictionary()
"""Each model's prepared weights (see `prepared_weights`), dropped with the model."""


def prepared_weights(model: GPT) -> _DecodeWeights:
    """The model's parameters prepared for `decode_step`, rebuilt only when one of them changed.

    A parameter counts as changed when its storage or version counter did
    (in-place updates, load_state_dict, .to()). Not seen: edits made through
    `.data` (they bypass the version counter), and parameters replaced by new
    Parameter objects after the first decode.
    """
    cached = _PREPARED.get(model)
    params = list(model.parameters()) if cached is None else cached.params
    key = tuple([(p.data_ptr(), p._version) for p in params])  # ~10 us: 2% of a step
    if cached is not None and cached.key == key:
        return cached
    cfg = model.config

    def bias(linear: nn.Linear, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        if linear.bias is None or rows is None:
            return linear.bias
        return linear.bias.index_select(0, rows)

    def norm_params(module: nn.LayerNorm | nn.RMSNorm) -> tuple[torch.Tensor, torch.Tensor | None]:
        return module.weight, getattr(module, "bias", None)

    rows = model.qkv_pair_rows if cfg.pos == "rope" else None
    layers = []
    for layer, block in enumerate(model.layers()):
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

    prepared = _PREPARED[model] = _DecodeWeights(
        params=params, key=key, sources=[p.detach() for p in params], layers=layers,
        embedding=model.tok_emb.weight, positions=None if model.pos_emb is None else model.pos_emb.weight,
        rope=rope, norm=norm, norm_final=norm_params(model.ln_final), classifier=model.classifier_weight.t(),
        windows={layer.window for layer in layers}, scale=model.layers()[0].attn.scale, gated=cfg.mlp == "swiglu",
    )
    return prepared

# --- the step -------------------------------------------------------------------


def lean(model: GPT) -> bool:
    """Whether `decode_step` may stand in for the model's forward: nothing needs autograd, dropout or tracing.

    A forward replaced on the instance (`sample --compile` puts it under
    torch.compile) is what the caller asked for, so it runs instead.
    """
    return (
        not torch.is_grad_enabled()
        and not (model.training and model.config.dropout > 0)
        and "forward" not in vars(model)
        and not torch.compiler.is_compiling()
    )


def next_logits(model: GPT, idx: torch.Tensor, cache: KVCache, last: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, V) of the token that follows idx (B, T), fed to the cache at positions cache.lengths[b] + t.

    `last` (B,): the position within the T tokens of each row's last real one
    (right-padded prompts); default the last. One token per row takes
    `decode_step` when `lean(model)`, anything else the general forward.
    """
    if idx.shape[1] == 1 and lean(model):
        return decode_step(model, idx[:, 0], cache)
    return model(idx, logits="last" if last is None else last, cache=cache).logits[:, 0]


def decode_step(model: GPT, tokens: torch.Tensor, cache: KVCache, static: bool = False) -> torch.Tensor:
    """Logits (B, V) for the token after `tokens` (B,): one new token per row, at position cache.lengths[b].

    Computes what `model(tokens[:, None], cache=cache, logits="last")` does
    (`next_logits` chooses between the two), on operands prepared once
    (`prepared_weights`) and with no module calls or Python-level tensor
    methods: a layer is the norm, one matmul for q, k and v, attention, the
    output matmul with the residual add folded in, and the MLP likewise.

    Attention, two ways. fp32 on the CPU: the C kernels of `kernels.py`
    rotate q and k, write the cache and attend in one call per layer, and
    RMSNorm and SwiGLU are one call each; the logits agree with forward's
    to float32 rounding. Otherwise (other devices and dtypes, or kernels
    off): the same PyTorch kernels as forward on the same operands, so the
    logits are bitwise the same: one complex multiply rotating q and k, one indexed
    copy into the cache, and SDPA with no mask unless rows are at different
    positions or a local layer's window hides keys.

    `static`: the shapes do not depend on the lengths and nothing is read back
    to the host, as a CUDA graph needs (`GraphStep`): every row attends over
    the whole cache through a mask. The caller keeps each
    length below `cache.max_len`. The logits agree with the other path to
    rounding (masking keys instead of slicing them changes the kernels).
    """
    cfg = model.config
    B = tokens.shape[0]
    H, K, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
    prepared = prepared_weights(model)
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
                masks[window] = attention_mask(pos, kv_len, window)[:, None, None]  # (B, 1, 1, S)
            elif window is None or window >= kv_len:  # every row at position `longest`, every key visible
                masks[window] = None
            else:
                masks[window] = attention_mask(torch.arange(longest, kv_len, device=pos.device), kv_len, window)  # (1, S)

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


def _residual(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x + h @ weight (+ bias): without a bias the add is folded into the matmul (addmm), one kernel fewer."""
    if bias is None:
        return torch.addmm(x, h, weight)
    return x + torch.addmm(bias, h, weight)


# --- threads and CUDA graphs ----------------------------------------------------------

PARALLEL_MIN_FLOPS = 64e6
"""Forward FLOPs a decode step needs before it is worth more than one intra-op thread."""


@contextmanager
def step_threads(flops: float, device: torch.device) -> Iterator[None]:
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


def graphs_wanted(device: torch.device) -> bool:
    """Decode steps replay a CUDA graph on CUDA devices unless TINYSTORIES_CUDA_GRAPHS=0."""
    return device.type == "cuda" and os.environ.get("TINYSTORIES_CUDA_GRAPHS", "1") != "0"


class GraphStep:
    """The decode step of every row of a cache, captured once as a CUDA graph and then replayed.

    A decode step of a small model is a few hundred short kernels, and launching
    them from Python takes longer than the GPU needs to run them; a replay
    launches them all at once. The graph covers all rows of the cache at fixed
    shapes (`decode_step(static=True)`): free rows take a dummy token at length 0,
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
                decode_step(model, self.tokens, cache, static=True)
                cache.lengths.copy_(saved)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decode_step(model, self.tokens, cache, static=True)  # (B, V), refilled by each replay
        cache.lengths.copy_(saved)
        self.weights_key = prepared_weights(model).key  # the graph reads these very tensors

    def stale(self, model: GPT) -> bool:
        """Whether the model's parameters changed since the capture (the graph would read the old ones)."""
        return prepared_weights(model).key != self.weights_key

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after feeding tokens (n,) to rows [0, n) and a dummy token to the rest."""
        n = tokens.shape[0]
        self.tokens[:n].copy_(tokens)
        self.tokens[n:].zero_()
        self.graph.replay()
        return self.logits
