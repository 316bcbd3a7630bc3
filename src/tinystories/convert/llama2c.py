"""llama2.c checkpoints: read version 0 and version 1 `.bin` files into our model, write version 0.

v0 (legacy; what `stories260K.bin` uses): a header of 7 int32
`(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len)`, then
fp32 weights in this order: token embedding (V, C); attention RMSNorm weights
of all layers (L, C); wq (L, C, C); wk (L, KD, C); wv (L, KD, C); wo (L, C, C);
FFN RMSNorm weights (L, C); w1 (L, F, C); w2 (L, C, F); w3 (L, F, C); final
RMSNorm (C); two RoPE tables (seq_len, D/2) each (cos, sin; run.c skips them);
and, when vocab_size in the header is negative, a separate classifier (V, C).

v1: a 256-byte header: uint32 magic 0x616b3432 ("ak42"), int32 version 1, the
same 7 int32 (vocab_size positive), a uint8 "classifier shared" flag, zero
padding; then fp32 weights: attention RMSNorms (L, C); FFN RMSNorms (L, C);
final RMSNorm (C); token embedding (V, C); wq; wk; wv; wo; w1; w2; w3 (all
layers each, shapes as above); the classifier (V, C) when not shared. No RoPE
tables.

llama2.c rotates interleaved pairs (2i, 2i+1) of each head; our RoPE rotates
halves (i, i + D/2). Permuting the output rows of wq and wk inside each head
(even rows first, then odd rows) turns one into the other and leaves every
attention score unchanged; export applies the inverse permutation.

llama2.c's run.c hard-codes RMSNorm epsilon 1e-5 and RoPE theta 10000, has no
biases and no attention windows; export refuses models it would run wrongly.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np
import torch

from tinystories.errors import UserError
from tinystories.model import GPT, ModelConfig
from tinystories.presets import LLAMA

BOS_ID = 1
"""llama2.c's beginning-of-sequence token; its sampler also stops when it comes up again."""

MAGIC_V1 = 0x616B3432
"""First uint32 of a version 1+ file ("ak42")."""
V1_HEADER_BYTES = 256

_MAX_DIM = 1 << 20  # no real model comes near; catches garbage headers before any allocation

StateDict = dict[str, torch.Tensor]


def rope_rows(n_heads: int, head_dim: int) -> torch.Tensor:
    """Row order that takes a projection from llama2.c's interleaved RoPE layout to rotate-half."""
    within = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])  # (D,)
    return (torch.arange(n_heads)[:, None] * head_dim + within).flatten()  # (n_heads * D,)


def _layer_shapes(dim: int, hidden: int, n_layers: int, kv_dim: int) -> dict[str, tuple[int, ...]]:
    return {
        "rms_att": (n_layers, dim), "wq": (n_layers, dim, dim), "wk": (n_layers, kv_dim, dim),
        "wv": (n_layers, kv_dim, dim), "wo": (n_layers, dim, dim), "rms_ffn": (n_layers, dim),
        "w1": (n_layers, hidden, dim), "w2": (n_layers, dim, hidden), "w3": (n_layers, hidden, dim),
    }


def _layout(version: int, dim: int, hidden: int, n_layers: int, n_heads: int, n_kv_heads: int, vocab: int,
            seq_len: int, shared: bool) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every fp32 array after the header, in file order."""
    D = dim // n_heads
    layers = _layer_shapes(dim, hidden, n_layers, n_kv_heads * D)
    if version == 0:
        order = {"emb": (vocab, dim), **{k: layers[k] for k in ("rms_att", "wq", "wk", "wv", "wo", "rms_ffn",
                                                                 "w1", "w2", "w3")},
                 "rms_final": (dim,), "freq_cos": (seq_len, D // 2), "freq_sin": (seq_len, D // 2)}
    else:
        order = {"rms_att": layers["rms_att"], "rms_ffn": layers["rms_ffn"], "rms_final": (dim,),
                 "emb": (vocab, dim), **{k: layers[k] for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")}}
    if not shared:
        order["wcls"] = (vocab, dim)
    return order


def read_llama2c(path: str | os.PathLike) -> tuple[ModelConfig, StateDict]:
    """Config and state dict (ours, float32) of a llama2.c v0 or v1 checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"llama2.c checkpoint not found: {path}")
    data = path.read_bytes()
    if len(data) < 28:
        raise UserError(f"{path} is too short to be a llama2.c checkpoint")
    if struct.unpack_from("<I", data, 0)[0] == MAGIC_V1:
        if len(data) < V1_HEADER_BYTES:
            raise UserError(f"{path} is truncated (a version 1 header is {V1_HEADER_BYTES} bytes)")
        (version,) = struct.unpack_from("<i", data, 4)
        if version != 1:
            raise UserError(f"{path}: llama2.c format version {version} is not supported (only 0 and 1, fp32)")
        header = struct.unpack_from("<7i", data, 8)
        shared = bool(data[36])
        offset = V1_HEADER_BYTES
    else:
        version, offset = 0, 28
        header = struct.unpack_from("<7i", data, 0)
        shared = header[5] > 0
        header = (*header[:5], abs(header[5]), header[6])
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = header
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    bad = [f"{n}={v}" for n, v in zip(names, header) if not 0 < v <= _MAX_DIM]
    if bad or dim % n_heads or n_heads % n_kv_heads or (dim // n_heads) % 2:
        what = ", ".join(bad) or f"dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv_heads} do not divide evenly"
        raise UserError(f"{path}: impossible llama2.c v{version} header ({what}); not a llama2.c checkpoint?")
    layout = _layout(version, dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len, shared)
    need = 4 * sum(int(np.prod(s)) for s in layout.values())
    have = len(data) - offset
    if have != need:
        state = "truncated" if have < need else "longer than its header says"
        raise UserError(f"{path} is {state}: {have} bytes of weights, the v{version} header implies {need}")
    w = np.frombuffer(data, dtype="<f4", offset=offset)
    t: dict[str, torch.Tensor] = {}
    at = 0
    for name, shape in layout.items():
        n = int(np.prod(shape))
        t[name] = torch.from_numpy(w[at : at + n].copy()).view(shape)
        at += n

    cfg = ModelConfig(**{**LLAMA, "vocab_size": vocab, "max_seq_len": seq_len, "d_model": dim, "n_layer": n_layers,
                         "n_head": n_heads, "n_kv_head": n_kv_heads, "d_ff": hidden, "tie_embeddings": shared})
    D = dim // n_heads
    q_rows, k_rows = rope_rows(n_heads, D), rope_rows(n_kv_heads, D)
    sd = {"tok_emb.weight": t["emb"], "ln_final.weight": t["rms_final"]}
    for i in range(n_layers):
        p = f"blocks.{i}."
        sd[p + "ln1.weight"] = t["rms_att"][i]
        sd[p + "attn.qkv.weight"] = torch.cat([t["wq"][i][q_rows], t["wk"][i][k_rows], t["wv"][i]])
        sd[p + "attn.out.weight"] = t["wo"][i]
        sd[p + "ln2.weight"] = t["rms_ffn"][i]
        sd[p + "mlp.fc.weight"] = torch.cat([t["w1"][i], t["w3"][i]])  # [gate; up]
        sd[p + "mlp.proj.weight"] = t["w2"][i]
    if not shared:
        sd["lm_head.weight"] = t["wcls"]
    return cfg, sd


def load_llama2c(path: str | os.PathLike) -> GPT:
    """A `GPT` (float32, eval mode) with the weights of a llama2.c v0 or v1 checkpoint."""
    cfg, sd = read_llama2c(path)
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or missing:
        raise RuntimeError(f"llama2.c import does not cover the model: missing {missing}, extra {unexpected}")
    return model.eval()


def llama_family_problems(cfg: ModelConfig) -> list[str]:
    """What keeps `cfg` from being a plain Llama (the model llama2.c and llama.cpp run); empty when it is one."""
    problems = []
    if (cfg.norm, cfg.pos, cfg.mlp, cfg.attn_scale) != ("rms", "rope", "swiglu", "sqrt"):
        problems.append("it must be a Llama-family model (RMSNorm, RoPE, SwiGLU, 1/sqrt(d) attention)")
    if cfg.qkv_bias or cfg.attn_out_bias or cfg.mlp_bias:
        problems.append("it must have no biases")
    if any(w is not None for w in cfg.windows):
        problems.append("all layers must be global (no attention windows)")
    return problems


def check_llama2c_exportable(cfg: ModelConfig) -> None:
    """UserError when llama2.c's run.c could not run `cfg` as it is."""
    problems = llama_family_problems(cfg)
    if cfg.rope_theta != 10000.0:
        problems.append(f"run.c's RoPE theta is 10000, this model's is {cfg.rope_theta}")
    if cfg.norm_eps != 1e-5:
        problems.append(f"run.c's RMSNorm epsilon is 1e-5, this model's is {cfg.norm_eps}")
    if problems:
        raise UserError("this model cannot be written for llama2.c: " + "; ".join(problems))


def llama2c_v0_bytes(cfg: ModelConfig, sd: StateDict) -> bytes:
    """A llama2.c version 0 `.bin` (what run.c reads) for a Llama-family model's state dict."""
    check_llama2c_exportable(cfg)
    dim, L, D = cfg.d_model, cfg.n_layer, cfg.head_dim
    hidden, kv_dim = cfg.ff_dim, cfg.kv_heads * D
    # Inverse of the import permutation: rotate-half rows back to interleaved pairs.
    q_back, k_back = torch.argsort(rope_rows(cfg.n_head, D)), torch.argsort(rope_rows(cfg.kv_heads, D))

    def layer(fn) -> torch.Tensor:
        return torch.stack([fn(f"blocks.{i}.") for i in range(L)])

    def qkv(p: str) -> torch.Tensor:
        return sd[p + "attn.qkv.weight"]

    # RoPE tables as llama2.c's model.py computes them (run.c skips them; other readers may not).
    freqs = 1.0 / (10000.0 ** (torch.arange(0, D, 2)[: D // 2].float() / D))
    angles = torch.outer(torch.arange(cfg.max_seq_len).float(), freqs)
    arrays = [
        sd["tok_emb.weight"],
        layer(lambda p: sd[p + "ln1.weight"]),
        layer(lambda p: qkv(p)[:dim][q_back]),
        layer(lambda p: qkv(p)[dim : dim + kv_dim][k_back]),
        layer(lambda p: qkv(p)[dim + kv_dim :]),
        layer(lambda p: sd[p + "attn.out.weight"]),
        layer(lambda p: sd[p + "ln2.weight"]),
        layer(lambda p: sd[p + "mlp.fc.weight"][:hidden]),
        layer(lambda p: sd[p + "mlp.proj.weight"]),
        layer(lambda p: sd[p + "mlp.fc.weight"][hidden:]),
        sd["ln_final.weight"],
        torch.cos(angles),
        torch.sin(angles),
    ]
    if not cfg.tie_embeddings:
        arrays.append(sd["lm_head.weight"])
    vocab = cfg.vocab_size if cfg.tie_embeddings else -cfg.vocab_size
    header = struct.pack("<7i", dim, hidden, L, cfg.n_head, cfg.kv_heads, vocab, cfg.max_seq_len)
    body = b"".join(a.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4").tobytes() for a in arrays)
    return header + body


def load_llama2c_vocab(path: str | os.PathLike) -> list[bytes]:
    """The pieces of a llama2.c tokenizer file, as bytes, indexed by token id."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"llama2.c tokenizer not found: {path}")
    data = path.read_bytes()
    pieces, at = [], 4  # skip max_token_length
    while at < len(data):
        (length,) = struct.unpack_from("<i", data, at + 4)  # after the f32 score
        pieces.append(data[at + 8 : at + 8 + length])
        at += 8 + length
    return pieces


_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


def decode_llama2c(pieces: list[bytes], ids: list[int], prev: int = BOS_ID) -> str:
    """Text of `ids` as llama2.c's `run` prints it: a leading space dropped after BOS,
    `<0xXX>` pieces as raw bytes, single bytes other than printable ASCII and whitespace left out."""
    out = bytearray()
    for tok in ids:
        piece = pieces[tok]
        if prev == BOS_ID and piece.startswith(b" "):
            piece = piece[1:]
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            piece = bytes([int(m.group(1), 16)])
        if len(piece) == 1 and not (0x20 <= piece[0] < 0x7F or 9 <= piece[0] <= 13):
            piece = b""  # run.c's safe_printf prints a single byte only if C's isprint or isspace holds
        out += piece
        prev = tok
    return out.decode("utf-8", errors="replace")
