"""Named model configurations: the paper's GPT-Neo sizes and llama2.c's Llama sizes.

Each family is a set of switch values (`NEO`, `LLAMA`); a preset adds the sizes.
`preset("neo-8m", n_layer=4)` returns a `ModelConfig` with any field overridden.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tinystories.errors import UserError
from tinystories.model import ModelConfig

NEO: dict[str, Any] = dict(
    vocab_size=50257, max_seq_len=512, n_head=16, norm="layer", norm_eps=1e-5, pos="learned",
    mlp="gelu_tanh", attn_scale="none", qkv_bias=False, attn_out_bias=True, mlp_bias=True,
    tie_embeddings=True,
)
"""GPT-Neo as in the paper's released checkpoints (EleutherAI's architecture, HF GPTNeoForCausalLM)."""

LLAMA: dict[str, Any] = dict(
    norm="rms", norm_eps=1e-5, pos="rope", rope_theta=10000.0, mlp="swiglu", attn_scale="sqrt",
    qkv_bias=False, attn_out_bias=False, mlp_bias=False, tie_embeddings=True,
)
"""Llama as in llama2.c (HF LlamaForCausalLM with tied embeddings)."""


def neo_windows(n_layer: int, window: int = 256) -> tuple[int | None, ...]:
    """GPT-Neo's alternating attention: even layers global, odd layers local with `window`."""
    return tuple(None if layer % 2 == 0 else window for layer in range(n_layer))


def _neo(d_model: int, n_layer: int) -> dict[str, Any]:
    return {**NEO, "d_model": d_model, "n_layer": n_layer, "windows": neo_windows(n_layer)}


def _llama(d_model: int, n_layer: int, n_head: int, **sizes: Any) -> dict[str, Any]:
    return {**LLAMA, "d_model": d_model, "n_layer": n_layer, "n_head": n_head, **sizes}


PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "neo-1m": ("paper GPT-Neo, hidden 64, 8 layers", _neo(64, 8)),
    "neo-3m": ("paper GPT-Neo, hidden 128, 8 layers", _neo(128, 8)),
    "neo-8m": ("paper GPT-Neo, hidden 256, 8 layers", _neo(256, 8)),
    "neo-28m": ("paper GPT-Neo, hidden 512, 8 layers", _neo(512, 8)),
    "neo-33m": ("paper GPT-Neo, hidden 768, 4 layers", _neo(768, 4)),
    "neo-1l-21m": ("paper GPT-Neo, hidden 1024, 1 layer", _neo(1024, 1)),
    "neo-2l-33m": ("paper GPT-Neo, hidden 1024, 2 layers", _neo(1024, 2)),
    "llama-260k": (
        "llama2.c stories260K: dim 64, 5 layers, 8 heads, 4 kv heads, vocab 512",
        _llama(64, 5, 8, n_kv_head=4, max_seq_len=512, vocab_size=512, ff_multiple_of=4),
    ),
    "llama-15m": (
        "llama2.c stories15M: dim 288, 6 layers, 6 heads, vocab 32000",
        _llama(288, 6, 6, max_seq_len=256, vocab_size=32000, ff_multiple_of=32),
    ),
    "llama-42m": (
        "llama2.c stories42M: dim 512, 8 layers, 8 heads, vocab 32000",
        _llama(512, 8, 8, max_seq_len=1024, vocab_size=32000, ff_multiple_of=32),
    ),
    "llama-110m": (
        "llama2.c stories110M: dim 768, 12 layers, 12 heads, vocab 32000",
        _llama(768, 12, 12, max_seq_len=1024, vocab_size=32000, ff_multiple_of=32),
    ),
}


def preset_names() -> list[str]:
    """All preset names, GPT-Neo sizes first."""
    return list(PRESETS)


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description) for every preset."""
    return [(name, description) for name, (description, _) in PRESETS.items()]


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named configuration with any `ModelConfig` fields overridden.

    Overriding n_layer of a GPT-Neo preset without giving windows re-derives the
    alternating global/local pattern for the new depth.
    """
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown model option(s) for preset {name}: {', '.join(unknown)}")
    values = dict(PRESETS[name][1])
    if "n_layer" in overrides and "windows" not in overrides and values.get("windows"):
        values["windows"] = neo_windows(overrides["n_layer"])
    values.update(overrides)
    return ModelConfig(**values)
