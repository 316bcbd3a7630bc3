"""Parity with Hugging Face GPTNeoForCausalLM and LlamaForCausalLM, weights copied both ways."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinystories.convert import hf
from tinystories.errors import UserError
from tinystories.model import GPT, ModelConfig
from tinystories.presets import preset

transformers = pytest.importorskip("transformers")

V = 97


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (biases and norm weights too), so that every mapping is exercised."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2 if "emb" in name or "wte" in name or "wpe" in name else 0.1)


def hf_model(cls_name: str, hf_config) -> torch.nn.Module:
    hf_config._attn_implementation = "eager"  # the reference: explicit softmax, no fused kernels
    return getattr(transformers, cls_name)(hf_config).eval()


def compare(ours: GPT, theirs: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours(x).logits - theirs(x).logits).abs().max().item()


def neo_config(window: int, n_layer: int = 2) -> ModelConfig:
    return preset("neo-1m", d_model=32, n_layer=n_layer, n_head=4, vocab_size=V,
                  windows=tuple(None if i % 2 == 0 else window for i in range(n_layer)))


@pytest.mark.parametrize("window,T", [(256, 512), (4, 32)])
def test_neo_parity_hf_to_ours(window, T):
    cfg = neo_config(window)
    theirs = hf_model("GPTNeoForCausalLM", hf.neo_config_to_hf(cfg))
    assert theirs.config.attention_layers == ["global", "local"] and theirs.config.window_size == window
    randomize(theirs)
    ours = GPT(hf.neo_config_from_hf(theirs.config)).eval()
    assert ours.config == cfg
    ours.load_state_dict(hf.neo_state_dict_from_hf(theirs.state_dict(), cfg))
    x = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(0))
    assert compare(ours, theirs, x) < 1e-4
    # The local layer's window is what makes them agree: without it they do not.
    all_global = GPT(dataclasses.replace(cfg, windows=())).eval()
    all_global.load_state_dict(ours.state_dict())
    assert compare(all_global, theirs, x) > 1e-2


@pytest.mark.parametrize("window,T", [(256, 512), (4, 32)])
def test_neo_parity_ours_to_hf(window, T):
    cfg = neo_config(window)
    ours = GPT(cfg).eval()
    randomize(ours, seed=1)
    theirs = hf_model("GPTNeoForCausalLM", hf.neo_config_to_hf(cfg))
    theirs.load_state_dict(hf.neo_state_dict_to_hf(ours.state_dict(), cfg))
    x = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    assert compare(ours, theirs, x) < 1e-4


@pytest.mark.parametrize("tied", [True, False])
def test_llama_parity_both_ways(tied):
    cfg = preset("llama-260k", d_model=64, n_layer=2, n_head=8, n_kv_head=2, vocab_size=V, max_seq_len=128,
                 tie_embeddings=tied, rope_theta=500.0)
    x = torch.randint(0, V, (2, 96), generator=torch.Generator().manual_seed(2))

    theirs = hf_model("LlamaForCausalLM", hf.llama_config_to_hf(cfg))
    randomize(theirs, seed=2)
    ours = GPT(hf.llama_config_from_hf(theirs.config)).eval()
    assert ours.config.tie_embeddings == tied and ours.config.ff_dim == cfg.ff_dim
    ours.load_state_dict(hf.llama_state_dict_from_hf(theirs.state_dict(), ours.config))
    assert compare(ours, theirs, x) < 1e-4

    ours = GPT(cfg).eval()
    randomize(ours, seed=3)
    theirs = hf_model("LlamaForCausalLM", hf.llama_config_to_hf(cfg))
    theirs.load_state_dict(hf.llama_state_dict_to_hf(ours.state_dict(), cfg))
    assert compare(ours, theirs, x) < 1e-4


def test_llama_with_biases_round_trips():
    cfg = preset("llama-260k", d_model=32, n_layer=1, n_head=4, n_kv_head=2, vocab_size=V,
                 qkv_bias=True, attn_out_bias=True, mlp_bias=True)
    ours = GPT(cfg).eval()
    randomize(ours, seed=4)
    theirs = hf_model("LlamaForCausalLM", hf.llama_config_to_hf(cfg))
    theirs.load_state_dict(hf.llama_state_dict_to_hf(ours.state_dict(), cfg))
    assert compare(ours, theirs, torch.randint(0, V, (1, 16))) < 1e-4
    back = hf.llama_state_dict_from_hf(theirs.state_dict(), hf.llama_config_from_hf(theirs.config))
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_neo_one_layer_and_config_dict():
    """A 1-layer model (the paper's 1-layer 21M) and a config.json dict as input."""
    cfg = preset("neo-1l-21m", d_model=32, n_head=4, vocab_size=V)
    hf_config = hf.neo_config_to_hf(cfg)
    assert hf_config.attention_layers == ["global"]
    assert hf.neo_config_from_hf(hf_config.to_dict()) == cfg


def test_old_checkpoint_buffers_are_ignored_and_strays_rejected():
    cfg = neo_config(4)
    sd = hf.neo_state_dict_to_hf(GPT(cfg).state_dict(), cfg)
    sd["transformer.h.0.attn.attention.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    sd["transformer.h.0.attn.attention.masked_bias"] = torch.tensor(-1e9)
    hf.neo_state_dict_from_hf(sd, cfg)
    sd["transformer.h.2.ln_1.weight"] = torch.ones(32)
    with pytest.raises(UserError, match="does not use"):
        hf.neo_state_dict_from_hf(sd, cfg)
    del sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(UserError, match="lacks"):
        hf.neo_state_dict_from_hf(sd, cfg)


def test_configs_without_an_hf_equivalent_are_refused():
    with pytest.raises(UserError, match="GPT-Neo"):
        hf.neo_config_to_hf(preset("llama-260k"))
    with pytest.raises(UserError, match="Llama"):
        hf.llama_config_to_hf(preset("neo-1m"))
    with pytest.raises(UserError, match="window"):
        hf.neo_config_to_hf(preset("neo-1m", n_layer=3, windows=(None, 4, 8)))


def test_param_counts_match_hf_for_every_preset():
    from tinystories.flops import count_params
    from tinystories.presets import preset_names

    for name in preset_names():
        cfg = preset(name)
        neo = name.startswith("neo")
        hf_config = (hf.neo_config_to_hf if neo else hf.llama_config_to_hf)(cfg)
        with torch.device("meta"):
            theirs = getattr(transformers, "GPTNeoForCausalLM" if neo else "LlamaForCausalLM")(hf_config)
        assert count_params(cfg) == theirs.num_parameters(), name
        assert count_params(cfg, non_embedding=True) == theirs.num_parameters(exclude_embeddings=True), name
