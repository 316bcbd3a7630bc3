"""The model: config validation, hooks, KV cache and the decode step, chunked loss, parameter and FLOP counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinystories import kernels
from tinystories import loss as loss_module
from tinystories.decode import KVCache, decode_step, next_logits
from tinystories.errors import UserError
from tinystories.flops import count_params, flops_per_token
from tinystories.loss import chunked_cross_entropy
from tinystories.model import GPT, ModelConfig
from tinystories.presets import preset, preset_names

V = 61


def neo_small(**kw) -> ModelConfig:
    """GPT-Neo switches, tiny: layer 0 global, layer 1 local with window 4, layer 2 global."""
    values = dict(d_model=32, n_layer=3, n_head=4, vocab_size=V, max_seq_len=64, windows=(None, 4, None))
    return preset("neo-1m", **{**values, **kw})


def llama_small(**kw) -> ModelConfig:
    """Llama switches, tiny, grouped-query attention (4 query heads share 2 key/value heads)."""
    values = dict(d_model=32, n_layer=2, n_head=4, n_kv_head=2, vocab_size=V, max_seq_len=64)
    return preset("llama-260k", **{**values, **kw})


def mixed_small(**kw) -> ModelConfig:
    """The switches are independent: RoPE, RMSNorm and grouped-query attention with a local first layer."""
    return llama_small(**{"windows": (4, None), **kw})


FAMILIES = {"neo": neo_small, "llama": llama_small, "mixed": mixed_small}


def make(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():  # random biases and norm weights, so that every parameter matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --- config -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        dict(d_model=30, n_head=4),
        dict(n_head=4, n_kv_head=3),
        dict(windows=(None, 4)),
        dict(windows=(None, 0, None)),
        dict(windows=(None, "wide", None)),
        dict(norm="batch"),
        dict(pos="rope", d_model=36, n_head=4, n_kv_head=None),  # odd head_dim
        dict(dropout=1.0),
        dict(n_layer=0, windows=()),
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(UserError):
        neo_small(**bad)


def test_config_derived_sizes():
    cfg = neo_small()
    assert cfg.head_dim == 8 and cfg.kv_heads == 4 and cfg.ff_dim == 4 * 32
    assert llama_small(d_ff=50).ff_dim == 50
    assert neo_small(windows=[None, 4, None]).windows == (None, 4, None)  # lists from TOML become tuples
    assert neo_small(windows=("none", "4", "global")).windows == (None, 4, None)  # command-line text


def test_swiglu_hidden_rule_matches_llama2c_checkpoint():
    """llama2.c's stories260K header stores its hidden_dim; our rule must give it from dim and multiple_of 4."""
    import struct

    from conftest import testdata_path

    header = testdata_path("llama2c/stories260K.bin").read_bytes()[:28]
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, _seq_len = struct.unpack("7i", header)
    cfg = preset("llama-260k")
    assert (cfg.d_model, cfg.ff_dim, cfg.n_layer, cfg.n_head, cfg.kv_heads, cfg.vocab_size) == (
        dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab))


# --- hooks ----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_pattern_path_equals_sdpa(family):
    cfg = FAMILIES[family]()
    model, x = make(cfg), tokens(2, 24)  # T=24 > window 4
    seen = {}
    hooks = {f"blocks.{i}.attn.hook_pattern": (lambda p, i=i: seen.__setitem__(i, p)) for i in range(cfg.n_layer)}
    with torch.no_grad():
        plain = model(x).logits
        explicit = model(x, hooks=hooks).logits
    assert (plain - explicit).abs().max() < 1e-5
    assert sorted(seen) == list(range(cfg.n_layer))
    for layer, pattern in seen.items():
        assert pattern.shape == (2, cfg.n_head, 24, 24)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(2, cfg.n_head, 24))
        i, j = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
        window = cfg.layer_window(layer) or 10**9
        hidden = (j > i) | (i - j >= window)
        assert pattern[..., hidden].abs().max() == 0


def test_hook_sites_shapes():
    cfg = llama_small()
    model, x = make(cfg), tokens(2, 10)
    shapes = {}
    hooks = {name: (lambda t, name=name: shapes.__setitem__(name, tuple(t.shape))) for name in model.hook_sites()}
    with torch.no_grad():
        model(x, hooks=hooks)
    B, T, C, H, D, Fd = 2, 10, cfg.d_model, cfg.n_head, cfg.head_dim, cfg.ff_dim
    expected = {"hook_embed": (B, T, C), "ln_final.hook_normalized": (B, T, C)}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        expected |= {p + n: (B, T, C) for n in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid",
                                                 "hook_mlp_out", "hook_resid_post")}
        expected |= {p + "attn.hook_pattern": (B, H, T, T), p + "attn.hook_z": (B, T, H, D),
                     p + "mlp.hook_pre": (B, T, Fd), p + "mlp.hook_post": (B, T, Fd)}
    assert shapes == expected


def test_hooks_observe_the_residual_stream():
    cfg = neo_small()
    model, x = make(cfg), tokens(2, 12)
    got = {}

    def keep(name):
        return lambda t: got.__setitem__(name, t.clone())

    names = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid",
             "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]
    with torch.no_grad():
        model(x, hooks={n: keep(n) for n in names})
        pos = model.pos_emb.weight[:12]
    torch.testing.assert_close(got["hook_embed"], model.tok_emb.weight[x])
    torch.testing.assert_close(got["blocks.0.hook_resid_pre"], got["hook_embed"] + pos)
    torch.testing.assert_close(got["blocks.0.hook_resid_mid"], got["blocks.0.hook_resid_pre"] + got["blocks.0.hook_attn_out"])
    torch.testing.assert_close(got["blocks.0.hook_resid_post"], got["blocks.0.hook_resid_mid"] + got["blocks.0.hook_mlp_out"])
    torch.testing.assert_close(got["blocks.1.hook_resid_pre"], got["blocks.0.hook_resid_post"])


def test_replacing_hooks_change_the_output():
    cfg = neo_small()
    model, x = make(cfg), tokens(2, 12)
    last = f"blocks.{cfg.n_layer - 1}.hook_resid_post"
    with torch.no_grad():
        plain = model(x).logits
        ablated = model(x, hooks={"blocks.0.hook_attn_out": torch.zeros_like}).logits
        # A zero residual stream normalises to the final LayerNorm's bias, so every position gets the same logits.
        zeroed = model(x, hooks={last: torch.zeros_like}).logits
        expected = model.ln_final.bias @ model.tok_emb.weight.T
    assert (plain - ablated).abs().max() > 1e-3
    torch.testing.assert_close(zeroed, expected.expand_as(zeroed))


def test_unknown_hook_site_is_an_error():
    model = make(neo_small())
    with pytest.raises(UserError, match="hook_resid_pr"):
        model(tokens(1, 4), hooks={"blocks.0.hook_resid_pr": print})


# --- KV cache -------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("steps_by", ["forward", "patterns", "decode_step"])
def test_incremental_decoding_equals_full_forward(family, steps_by):
    cfg = FAMILIES[family]()
    model, x = make(cfg), tokens(2, 20)  # 20 > window 4: the local layer's window slides
    hooks = {f"blocks.{i}.attn.hook_pattern": lambda p: None for i in range(cfg.n_layer)}
    hooks = hooks if steps_by == "patterns" else None
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache(cfg, batch_size=2, max_len=32)
        steps = [model(x[:, :7], cache=cache, hooks=hooks).logits]
        for t in range(7, 20):
            if steps_by == "decode_step":
                steps.append(decode_step(model, x[:, t], cache)[:, None])
            else:
                steps.append(model(x[:, t : t + 1], cache=cache, hooks=hooks).logits)
    assert cache.lengths.tolist() == [20, 20]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("steps_by", ["forward", "decode_step"])
def test_rows_of_different_lengths_share_a_batch(family, steps_by):
    cfg = FAMILIES[family]()
    model = make(cfg)
    prompts = [tokens(1, n, seed=n)[0] for n in (5, 11, 3)]
    more = tokens(3, 4, seed=7)

    def alone(seq):
        with torch.no_grad():
            return model(seq[None]).logits[0, -1]

    with torch.no_grad():
        cache = KVCache(cfg, batch_size=3, max_len=24)
        lengths = torch.tensor([len(p) for p in prompts])
        padded = torch.zeros(3, 11, dtype=torch.long)  # right-padded prefill
        for b, p in enumerate(prompts):
            padded[b, : len(p)] = p
        first = model(padded, cache=cache, logits=lengths - 1).logits  # (3, 1, V)
        cache.lengths.copy_(lengths)
        for b, p in enumerate(prompts):
            assert (first[b, 0] - alone(p)).abs().max() < 1e-5
        seqs = list(prompts)
        for t in range(4):  # each row continues from its own length
            if steps_by == "decode_step":
                out = decode_step(model, more[:, t], cache)[:, None]
            else:
                out = model(more[:, t : t + 1], cache=cache, logits="last").logits
            seqs = [torch.cat([s, more[b, t : t + 1]]) for b, s in enumerate(seqs)]
            for b in range(3):
                assert (out[b, 0] - alone(seqs[b])).abs().max() < 1e-5

        # Row 1 leaves and a new sequence joins in its place while rows 0 and 2 keep going.
        cache.reset([1])
        new = tokens(3, 3, seed=9)
        out = model(new, cache=cache).logits  # (3, 3, V)
        seqs = [torch.cat([seqs[0], new[0]]), new[1], torch.cat([seqs[2], new[2]])]
        assert cache.lengths.tolist() == [len(s) for s in seqs]
        for b in range(3):
            with torch.no_grad():
                ref = model(seqs[b][None]).logits[0, -3:]
            assert (out[b] - ref).abs().max() < 1e-5


@pytest.fixture
def torch_attention(monkeypatch):
    """Decode with PyTorch's attention, not the C kernel (which agrees to rounding, not bitwise)."""
    monkeypatch.setattr(kernels, "ENABLED", False)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention", ["torch", "kernel"])
def test_the_decode_step_is_the_general_forward(family, attention, monkeypatch):
    # With PyTorch's attention the two are bitwise equal; the C kernel agrees to float32 rounding.
    if attention == "torch":
        monkeypatch.setattr(kernels, "ENABLED", False)
    elif not kernels.available():
        pytest.skip("the decode kernel could not be built here (no C compiler?)")
    same = torch.equal if attention == "torch" else lambda a, b: torch.allclose(a, b, rtol=0, atol=2e-5)
    cfg = FAMILIES[family]()
    model = make(cfg)
    with torch.no_grad():
        caches = [KVCache(cfg, batch_size=3, max_len=40) for _ in range(2)]
        for cache in caches:
            model(tokens(3, 9, seed=3), cache=cache, logits="none")
            cache.lengths.copy_(torch.tensor([9, 4, 6]))  # rows out of step: the masked attention
        for t in range(16):  # past the local layer's window of 4
            if t == 8:
                for cache in caches:
                    cache.lengths.fill_(20)  # rows in step: no mask
            step = tokens(3, 1, seed=20 + t)
            fast = decode_step(model, step[:, 0], caches[0])
            slow = model(step, cache=caches[1], logits="last").logits[:, 0]
            assert same(fast, slow), t
    assert torch.equal(caches[0].lengths, caches[1].lengths)
    assert all(same(a, b) for a, b in zip(caches[0].kv, caches[1].kv))


def test_the_decode_step_sees_changed_parameters(torch_attention):
    cfg = llama_small()
    model, other = make(cfg, seed=0), make(cfg, seed=1)
    x = tokens(2, 6)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            fast = decode_step(model, x[:, 0], KVCache(cfg, 2, 8))
            return fast, model(x[:, :1]).logits[:, 0]

    fast, slow = both()
    assert torch.equal(fast, slow)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.mul_(1.5)  # in place: the prepared RoPE-ordered copy must be rebuilt
    fast2, slow2 = both()
    assert torch.equal(fast2, slow2) and not torch.equal(fast2, fast)
    model.load_state_dict(other.state_dict())  # copies into the same storages
    fast3, slow3 = both()
    assert torch.equal(fast3, slow3) and not torch.equal(fast3, fast2)
    model.to(torch.float64)  # new storages
    with torch.no_grad():
        fast4 = decode_step(model, x[:, 0], KVCache(cfg, 2, 8, dtype=torch.float64))
        assert fast4.dtype == torch.float64 and torch.equal(fast4, model(x[:, :1]).logits[:, 0])


def test_next_logits_takes_the_decode_step_only_where_it_computes_the_same(monkeypatch):
    from tinystories import decode

    cfg = llama_small(dropout=0.1)
    model, x = make(cfg), tokens(2, 5)
    taken = []
    real = decode.decode_step
    monkeypatch.setattr(decode, "decode_step", lambda *a, **kw: taken.append(1) or real(*a, **kw))

    def took(idx: torch.Tensor) -> bool:
        taken.clear()
        out = next_logits(model, idx, KVCache(cfg, 2, 8))
        if not model.training:  # (dropout draws differently each time)
            torch.testing.assert_close(out, model(idx).logits[:, -1])
        return bool(taken)

    with torch.no_grad():
        assert took(x[:, :1]) and not took(x)  # one token per row, or a prefill
        model(x[:, :1], cache=KVCache(cfg, 2, 8))
        assert not taken  # forward itself never switches
        model.train()  # dropout is on: only forward applies it
        assert not took(x[:, :1])
        model.eval()
        model.forward = model.forward  # a forward replaced on the instance (as `sample --compile` does) runs
        assert not took(x[:, :1])
    del model.forward
    assert not took(x[:, :1])  # autograd on


@pytest.mark.parametrize("family", FAMILIES)
def test_reorder_follows_the_rows(family):
    cfg = FAMILIES[family]()
    model, x = make(cfg), tokens(2, 9)
    with torch.no_grad():
        cache = KVCache(cfg, batch_size=2, max_len=16)
        model(x, cache=cache, logits="none")
        index = torch.tensor([1, 0, 1])  # beams: row 1 twice, row 0 once
        cache.reorder(index)
        nxt = tokens(3, 1, seed=5)
        out = decode_step(model, nxt[:, 0], cache)
        ref = model(torch.cat([x[index], nxt], dim=1)).logits[:, -1]
    assert cache.batch_size == 3
    assert (out - ref).abs().max() < 1e-5


def test_cache_overflow_is_a_clear_error():
    cfg = neo_small()
    model = make(cfg)
    cache = KVCache(cfg, batch_size=1, max_len=8)
    with torch.no_grad():
        model(tokens(1, 6), cache=cache)
        with pytest.raises(UserError, match="KV cache"):
            model(tokens(1, 3), cache=cache)
        model(tokens(1, 2), cache=cache)
        with pytest.raises(UserError, match="KV cache"):
            decode_step(model, tokens(1, 1)[:, 0], cache)
    with pytest.raises(UserError, match="max_seq_len"):
        model(tokens(1, cfg.max_seq_len + 1))


# --- loss -----------------------------------------------------------------------


def test_chunked_cross_entropy_and_grads_equal_plain():
    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    w = torch.randn(V, 16, requires_grad=True)
    targets = torch.randint(0, V, (50,))
    targets[::7] = -1
    loss = chunked_cross_entropy(h, w, targets, chunk_rows=7)  # 8 chunks, the last one short
    gh, gw = torch.autograd.grad(loss, (h, w))
    ref = F.cross_entropy(h @ w.T, targets, ignore_index=-1)
    rh, rw = torch.autograd.grad(ref, (h, w))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(h, w, targets, chunk_rows=7), ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_loss_and_grads_equal_plain_cross_entropy(family, monkeypatch):
    monkeypatch.setattr(loss_module, "LOSS_CHUNK_ELEMENTS", 5 * V)  # many chunks of 5 rows
    cfg = FAMILIES[family](tie_embeddings=family == "neo")
    model, x = make(cfg), tokens(3, 16)
    targets = torch.roll(x, -1, dims=1)
    targets[:, -1] = -1
    targets[0, :4] = -1
    loss = model(x, targets, logits="none").loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = F.cross_entropy(model(x).logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(loss, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_training_step_runs():
    cfg = llama_small()
    model, x = make(cfg), tokens(2, 16)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, torch.roll(x, -1, 1), logits="none").loss
    loss.backward()
    with torch.no_grad():
        ref = model(x, torch.roll(x, -1, 1), logits="none").loss
    assert abs(loss.item() - ref.item()) < 0.05 * ref.item()
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in model.parameters())


def test_logits_selection():
    model, x = make(neo_small()), tokens(3, 8)
    with torch.no_grad():
        full = model(x).logits
        assert model(x, logits="none").logits is None
        torch.testing.assert_close(model(x, logits="last").logits, full[:, -1:])
        pos = torch.tensor([0, 5, 7])
        torch.testing.assert_close(model(x, logits=pos).logits, full[torch.arange(3), pos][:, None])


def test_dropout_only_in_training():
    cfg = neo_small(dropout=0.5)
    model, x = make(cfg), tokens(2, 8)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
        model.train()
        assert not torch.equal(model(x).logits, model(x).logits)


# --- init and counts ------------------------------------------------------------


def test_init_is_gpt2_style():
    cfg = preset("neo-1m", vocab_size=512)
    torch.manual_seed(0)
    model = GPT(cfg)
    resid_std = cfg.init_std / (2 * cfg.n_layer) ** 0.5
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - cfg.init_std) < 0.002
    assert abs(model.blocks[0].mlp.proj.weight.std().item() - resid_std) < 0.001
    assert abs(model.blocks[0].attn.out.weight.std().item() - resid_std) < 0.001
    assert model.blocks[0].mlp.fc.bias.abs().max() == 0 and model.ln_final.weight.min() == 1


def test_num_params_splits_embeddings():
    for cfg in (neo_small(), llama_small(tie_embeddings=False)):
        model = GPT(cfg)
        total = sum(p.numel() for p in model.parameters())
        assert count_params(cfg) == total
        pos = cfg.max_seq_len * cfg.d_model if cfg.pos == "learned" else 0
        assert count_params(cfg, non_embedding=True) == total - cfg.vocab_size * cfg.d_model - pos


@pytest.mark.parametrize("name", preset_names())
@pytest.mark.parametrize("switches", [{}, {"qkv_bias": True, "attn_out_bias": False, "mlp_bias": False,
                                           "tie_embeddings": False, "n_kv_head": 2, "d_ff": 24}])
def test_param_count_from_the_config_is_the_built_models(name, switches):
    cfg = preset(name, **switches)
    with torch.device("meta"):  # shapes only
        model = GPT(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())


def test_flops_per_token_matches_a_flop_counter():
    """6N matches the matmuls torch counts in a training step; attention counts causal (T+1)/2 keys."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = llama_small(n_kv_head=None, windows=())
    model, x = GPT(cfg), tokens(2, 32)
    # The explicit attention path, whose batched matmuls the counter sees (it does not count CPU SDPA).
    hooks = {f"blocks.{i}.attn.hook_pattern": lambda p: None for i in range(cfg.n_layer)}
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, x, logits="none", hooks=hooks).loss.backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    attention = counts["aten.bmm"]
    matmul = counts["aten.mm"]
    n_tok, T = x.numel(), 32
    norms = cfg.d_model * (2 * cfg.n_layer + 1)  # norm weights are parameters but not matmul weights
    dense_6n = 6 * (count_params(cfg, non_embedding=True) + cfg.vocab_size * cfg.d_model - norms)
    assert matmul / n_tok == dense_6n
    # The counter charges SDPA for all T x T scores; causal attention needs (T + 1) / 2 of them per query.
    full_attention = attention / n_tok
    expected = 6 * count_params(cfg, non_embedding=True) + 6 * cfg.vocab_size * cfg.d_model
    expected += full_attention * (T + 1) / (2 * T)
    assert flops_per_token(cfg, T) == pytest.approx(expected)


def test_every_config_field_is_documented():
    import dataclasses

    from tinystories.config import field_docs

    docs = field_docs(ModelConfig)
    assert all(docs.get(f.name) for f in dataclasses.fields(ModelConfig))
