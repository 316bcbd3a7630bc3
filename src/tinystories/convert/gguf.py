"""GGUF for llama.cpp (and so Ollama and LM Studio): Llama-family runs with their tokenizer, written
with the `gguf` package that llama.cpp publishes.

llama.cpp's `llama` architecture is ours with RMSNorm, RoPE, SwiGLU and 1/sqrt(d)
attention, no biases and no attention windows. It rotates adjacent pairs
(2i, 2i+1) of each head, as llama2.c does; our RoPE rotates halves (i, i + D/2),
as Hugging Face's Llama does. So the rows of wq and wk are permuted inside each
head back to interleaved pairs, the same permutation as the llama2.c export
(llama.cpp's own converter applies it to Hugging Face checkpoints).

The tokenizer goes inside the file:

- a SentencePiece-style vocabulary (llama2.c's tok512, a SentencePiece
  `.model`) becomes `tokenizer.ggml.model = "llama"`: pieces, scores that order
  merges as our tokenizer.json ranks them, piece types (byte pieces, control
  tokens), BOS/EOS/UNK and the dummy-prefix space;
- a byte-level BPE with GPT-2's split rule (ours, GPT-2's) becomes `"gpt2"`:
  the tokens, the merges and `pre = "gpt-2"`.

Our models are trained on `[end-of-text] + story` and stop at end-of-text, so
that token is written as both BOS (llama.cpp adds it in front of a prompt) and
EOS (llama.cpp stops there); for llama2.c vocabularies that is `<s>`, as in
run.c.

Types: `f32` (exact), `f16` (matrices in half precision) and `q8_0` (matrices
in 8-bit blocks of 32). Norm weights always stay f32, as llama.cpp's converter
keeps them. A matrix whose rows are not a multiple of 32 cannot be q8_0; it is
written as f16 and the summary says which.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinystories.convert.llama2c import llama_family_problems, rope_rows
from tinystories.data.llama2c_tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN, is_sentencepiece_json
from tinystories.data.tokenizer import is_gpt2_pretokenizer
from tinystories.errors import UserError
from tinystories.io import atomic_save
from tinystories.model import ModelConfig

StateDict = dict[str, torch.Tensor]

GGUF_TYPES = ("f32", "f16", "q8_0")
ARCH = "llama"


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the gguf package: pip install 'tinystories[gguf]'") from None
    return gguf


def check_gguf_exportable(cfg: ModelConfig) -> None:
    """UserError when llama.cpp's llama architecture cannot run `cfg` as it is."""
    if cfg.pos == "learned":
        raise UserError("llama.cpp has no GPT-Neo architecture, so GPT-Neo models cannot be written as GGUF "
                        "(export them with --format hf)")
    problems = llama_family_problems(cfg)
    if problems:
        raise UserError("this model cannot be written as GGUF: " + "; ".join(problems))


def gguf_tensors(cfg: ModelConfig, sd: StateDict) -> dict[str, np.ndarray]:
    """llama.cpp tensor name -> float32 array (PyTorch's (out, in) shape), q/k rows in interleaved RoPE order."""

    check_gguf_exportable(cfg)
    dim, D, ff = cfg.d_model, cfg.head_dim, cfg.ff_dim
    kv_dim = cfg.kv_heads * D
    q_back, k_back = torch.argsort(rope_rows(cfg.n_head, D)), torch.argsort(rope_rows(cfg.kv_heads, D))
    t = {"token_embd.weight": sd["tok_emb.weight"]}
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"blk.{i}."
        qkv, fc = sd[ours + "attn.qkv.weight"], sd[ours + "mlp.fc.weight"]
        t |= {
            theirs + "attn_norm.weight": sd[ours + "ln1.weight"],
            theirs + "attn_q.weight": qkv[:dim][q_back],
            theirs + "attn_k.weight": qkv[dim : dim + kv_dim][k_back],
            theirs + "attn_v.weight": qkv[dim + kv_dim :],
            theirs + "attn_output.weight": sd[ours + "attn.out.weight"],
            theirs + "ffn_norm.weight": sd[ours + "ln2.weight"],
            theirs + "ffn_gate.weight": fc[:ff],
            theirs + "ffn_up.weight": fc[ff:],
            theirs + "ffn_down.weight": sd[ours + "mlp.proj.weight"],
        }
    t["output_norm.weight"] = sd["ln_final.weight"]
    if not cfg.tie_embeddings:  # without it llama.cpp uses token_embd, as our tied models do
        t["output.weight"] = sd["lm_head.weight"]
    return {k: v.detach().to(torch.float32).cpu().contiguous().numpy() for k, v in t.items()}


# --- the tokenizer ------------------------------------------------------------------


def gguf_vocab(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer.ggml.* fields for one of our tokenizers (SentencePiece-style or GPT-2-style byte-level BPE)."""
    if tokenizer.pruned:
        raise UserError("a pruned tokenizer (vocab_map.json) cannot be written into a GGUF: llama.cpp's tokenizers "
                        "cannot erase tokens as the pruned vocabulary does")
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    vocab = model.get("vocab")
    if model.get("type") != "BPE" or not isinstance(vocab, dict):
        raise UserError("only BPE tokenizers can be written into a GGUF (SentencePiece-style or GPT-2-style)")
    added = {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()} | added
    n = tokenizer.vocab_size
    missing = [i for i in range(n) if i not in by_id]
    if missing:
        raise UserError(f"token id {missing[0]} is missing from the tokenizer")
    tokens = [by_id[i] for i in range(n)]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    eot = tokenizer.eot_id
    if is_sentencepiece_json(spec):
        # llama.cpp merges the adjacent pair whose joined piece scores highest: score = -(rank of its first merge).
        rank: dict[str, int] = {}
        for m in merges:
            rank.setdefault(m.replace(" ", ""), len(rank))
        scores, types = [], []
        for i, text in enumerate(tokens):
            if text in ("<s>", "</s>") or (i in added and text != "<unk>"):
                kind = CONTROL
            elif text == "<unk>":
                kind = UNKNOWN
            elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                kind = BYTE
            else:
                kind = NORMAL
            types.append(kind)
            scores.append(-float(rank[text]) if text in rank else (0.0 if kind != NORMAL else -float(len(rank) + i)))
        return {"model": "llama", "tokens": tokens, "scores": scores, "types": types,
                "bos": eot, "eos": eot, "unk": vocab["<unk>"], "add_space_prefix": True}
    if not (is_gpt2_pretokenizer(spec.get("pre_tokenizer")) and tokenizer._byte_level):
        raise UserError("this tokenizer cannot be written into a GGUF: only SentencePiece-style (llama2.c) and "
                        "GPT-2-style byte-level BPE vocabularies map onto llama.cpp's tokenizers")
    types = [CONTROL if i in added else NORMAL for i in range(n)]
    return {"model": "gpt2", "pre": "gpt-2", "tokens": tokens, "types": types, "merges": merges,
            "bos": eot, "eos": eot}


# --- the file -----------------------------------------------------------------------


def write_gguf(path: str | os.PathLike, cfg: ModelConfig, sd: StateDict, tokenizer: Any, gguf_type: str = "f32",
               name: str = "") -> list[str]:
    """Write a llama.cpp GGUF file atomically; returns notes (tensors that could not take the type asked for)."""
    gguf = _gguf()
    if gguf_type not in GGUF_TYPES:
        raise UserError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    check_gguf_exportable(cfg)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise UserError(f"tokenizer has {tokenizer.vocab_size} tokens, the model {cfg.vocab_size}")
    tensors = gguf_tensors(cfg, sd)
    vocab = gguf_vocab(tokenizer)
    qtype = gguf.GGMLQuantizationType
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    block = gguf.GGML_QUANT_SIZES[qtype.Q8_0][0]
    fallback = []

    def encoded(name: str, a: np.ndarray) -> tuple[np.ndarray, Any]:
        if a.ndim == 1 or gguf_type == "f32":
            return a, None
        if gguf_type == "q8_0":
            if a.shape[-1] % block == 0:
                return gguf.quants.quantize(a, qtype.Q8_0), qtype.Q8_0
            fallback.append(f"{name} {tuple(a.shape)}")
        return a.astype(np.float16), None

    def save(tmp: str) -> None:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_name(name or "tinystories")
        w.add_file_type(int(file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.ff_dim)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.kv_heads)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_tokenizer_model(vocab["model"])
        if "pre" in vocab:
            w.add_tokenizer_pre(vocab["pre"])
        w.add_token_list(vocab["tokens"])
        if "scores" in vocab:
            w.add_token_scores(vocab["scores"])
        w.add_token_types(vocab["types"])
        if "merges" in vocab:
            w.add_token_merges(vocab["merges"])
        w.add_bos_token_id(vocab["bos"])
        w.add_eos_token_id(vocab["eos"])
        w.add_pad_token_id(vocab["eos"])
        if "unk" in vocab:
            w.add_unk_token_id(vocab["unk"])
        w.add_add_bos_token(True)  # the model expects [end-of-text] before a story
        w.add_add_eos_token(False)
        if "add_space_prefix" in vocab:
            w.add_add_space_prefix(vocab["add_space_prefix"])
        for tensor_name, array in tensors.items():
            data, raw = encoded(tensor_name, array)
            w.add_tensor(tensor_name, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, save)
    if fallback:
        return [f"q8_0 needs rows that are a multiple of {block} values; written as f16 instead: "
                + ", ".join(fallback)]
    return []
