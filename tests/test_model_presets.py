"""Presets: every name builds, overrides apply, mistakes are one-line errors."""

from __future__ import annotations

import pytest
import torch

from tinystories.config import build, from_toml, to_toml
from tinystories.errors import UserError
from tinystories.flops import count_params
from tinystories.model import GPT, ModelConfig
from tinystories.presets import list_presets, preset, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds(name):
    cfg = preset(name)
    with torch.device("meta"):  # shapes only: the big presets would be slow to initialise
        model = GPT(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters()) > 0
    # The config survives a run folder's config.toml.
    assert build(ModelConfig, from_toml(to_toml({"model": cfg}))["model"]) == cfg


def test_small_presets_run():
    torch.manual_seed(0)
    for name in ("neo-1m", "llama-260k"):
        cfg = preset(name, vocab_size=128) if name == "neo-1m" else preset(name)
        model = GPT(cfg)
        x = torch.randint(0, cfg.vocab_size, (1, 300))
        loss = model(x, x, logits="none").loss
        assert torch.isfinite(loss)


def test_families_are_switches():
    neo, llama = preset("neo-8m"), preset("llama-15m")
    assert (neo.norm, neo.pos, neo.mlp, neo.attn_scale) == ("layer", "learned", "gelu_tanh", "none")
    assert neo.windows == (None, 256) * 4 and neo.n_head == 16 and neo.max_seq_len == 512
    assert (llama.norm, llama.pos, llama.mlp, llama.attn_scale) == ("rms", "rope", "swiglu", "sqrt")
    assert not (llama.qkv_bias or llama.attn_out_bias or llama.mlp_bias)


def test_overrides():
    cfg = preset("neo-3m", n_layer=4, dropout=0.1)
    assert cfg.n_layer == 4 and cfg.windows == (None, 256, None, 256) and cfg.dropout == 0.1
    assert preset("neo-3m", n_layer=3, windows=()).windows == ()
    assert preset("llama-42m", n_kv_head=4).kv_heads == 4


def test_mistakes_are_user_errors():
    with pytest.raises(UserError, match="neo-1m"):
        preset("neo-2m")
    with pytest.raises(UserError, match="d_modle"):
        preset("neo-1m", d_modle=32)
    with pytest.raises(UserError, match="divisible"):
        preset("neo-1m", d_model=100)


def test_listing_names_every_preset():
    assert [name for name, _ in list_presets()] == preset_names()
    assert {"neo-1m", "neo-33m", "neo-1l-21m", "neo-2l-33m", "llama-260k", "llama-110m"} <= set(preset_names())
