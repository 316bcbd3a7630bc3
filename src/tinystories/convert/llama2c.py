"""llama2.c checkpoints and tokenizers: read the legacy (v0) `.bin` format into our model.

v0 layout (what `stories260K.bin` uses): a header of 7 int32
`(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len)`, then
fp32 weights in this order: token embedding (V, C); attention RMSNorm weights
of all layers (L, C); wq (L, C, C); wk (L, KD, C); wv (L, KD, C); wo (L, C, C);
FFN RMSNorm weights (L, C); w1 (L, F, C); w2 (L, C, F); w3 (L, F, C); final
RMSNorm (C); two RoPE tables (seq_len, D/2) each, unused here; and, when
vocab_size in the header is negative, a separate classifier (V, C).

llama2.c rotates interleaved pairs (2i, 2i+1) of each head; our RoPE rotates
halves (i, i + D/2). Permuting the output rows of wq and wk inside each head
(even rows first, then odd rows) turns one into the other and leaves every
attention score unchanged.

Tokenizer (`tok512.bin`, `tokenizer.bin`): int32 max_token_length, then per
token: f32 score, int32 byte length, the bytes.
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


def rope_rows(n_heads: int, head_dim: int) -> torch.Tensor:
    """Row order that takes a projection from llama2.c's interleaved RoPE layout to rotate-half."""
    within = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])  # (D,)
    return (torch.arange(n_heads)[:, None] * head_dim + within).flatten()  # (n_heads * D,)


def load_llama2c(path: str | os.PathLike) -> GPT:
    """A `GPT` (float32, eval mode) with the weights of a llama2.c v0 checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"llama2.c checkpoint not found: {path}")
    data = path.read_bytes()
    if len(data) < 28:
        raise UserError(f"{path} is too short to be a llama2.c checkpoint")
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("<7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len) <= 0 or dim % n_heads:
        raise UserError(f"{path}: not a llama2.c v0 checkpoint (header {dim, hidden, n_layers, n_heads})")
    D = dim // n_heads
    kv_dim = n_kv_heads * D
    w = np.frombuffer(data, dtype="<f4", offset=28)
    sizes = {
        "emb": (vocab, dim), "rms_att": (n_layers, dim), "wq": (n_layers, dim, dim),
        "wk": (n_layers, kv_dim, dim), "wv": (n_layers, kv_dim, dim), "wo": (n_layers, dim, dim),
        "rms_ffn": (n_layers, dim), "w1": (n_layers, hidden, dim), "w2": (n_layers, dim, hidden),
        "w3": (n_layers, hidden, dim), "rms_final": (dim,), "freq_real": (seq_len, D // 2),
        "freq_imag": (seq_len, D // 2),
    }
    if not shared:
        sizes["wcls"] = (vocab, dim)
    need = sum(int(np.prod(s)) for s in sizes.values())
    if need != len(w):
        raise UserError(f"{path}: {len(w)} weights after the header, the header implies {need} (not v0 format?)")
    t: dict[str, torch.Tensor] = {}
    at = 0
    for name, shape in sizes.items():
        n = int(np.prod(shape))
        t[name] = torch.from_numpy(w[at : at + n].copy()).view(shape)
        at += n

    cfg = ModelConfig(**{**LLAMA, "vocab_size": vocab, "max_seq_len": seq_len, "d_model": dim, "n_layer": n_layers,
                         "n_head": n_heads, "n_kv_head": n_kv_heads, "d_ff": hidden, "tie_embeddings": shared})
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
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or missing:
        raise RuntimeError(f"llama2.c import does not cover the model: missing {missing}, extra {unexpected}")
    return model.eval()


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
