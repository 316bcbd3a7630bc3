"""Activation capture: batched, right-padded capture equals each story run alone; no logits; layer names."""

from __future__ import annotations

import pytest
import torch

from tinystories.errors import UserError
from tinystories.interp.hooks import batches, capture, iter_activations, resolve_layer
from tinystories.model import GPT, ModelConfig

SITES = ["blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["neo", "llama"])
def model(request):
    torch.manual_seed(0)
    if request.param == "neo":
        cfg = ModelConfig(vocab_size=50, max_seq_len=40, d_model=32, n_layer=2, n_head=4, windows=(None, 6),
                          init_std=0.3)
    else:
        cfg = ModelConfig(vocab_size=50, max_seq_len=40, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                          norm="rms", pos="rope", mlp="swiglu", attn_scale="sqrt", init_std=0.3)
    return GPT(cfg).eval()


def stories(n=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 17, 9, 30, 17, 1, 25][:n]
    return [torch.randint(0, 50, (L,), generator=g).tolist() for L in lengths]


def alone(model, story):
    got = {}

    def keeper(site):
        def fn(x):
            got[site] = x[0].detach().clone()

        return fn

    hooks = {s: keeper(s) for s in SITES}
    model(torch.tensor([story]), logits="none", hooks=hooks)
    return got


def test_batched_capture_equals_each_story_alone(model):
    data = stories()
    # A budget of 40 padded positions forces several batches with padding inside each.
    got = capture(model, data, SITES, batch_tokens=40)
    for i, story in enumerate(data):
        ref = alone(model, story)
        L = len(story)
        assert got["blocks.0.attn.hook_pattern"][i].shape == (4, L, L)
        assert got["blocks.1.mlp.hook_post"][i].shape[0] == L
        assert got["blocks.1.hook_resid_post"][i].shape == (L, 32)
        for s in SITES:
            torch.testing.assert_close(got[s][i], ref[s], atol=1e-5, rtol=1e-4)
        # Attention rows are distributions over the story's own (causal) keys.
        pat = got["blocks.0.attn.hook_pattern"][i]
        torch.testing.assert_close(pat.sum(-1), torch.ones(4, L))
        assert pat.triu(1).abs().max() == 0


def test_batches_respect_the_budget_and_cover_every_story():
    lengths = [5, 50, 7, 7, 30, 2, 49]
    groups = batches(lengths, 60)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 60


def test_no_logits_are_computed(model, monkeypatch):
    calls = []
    original = model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("logits"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    list(iter_activations(model, stories(), SITES[:1]))
    assert calls and all(c == "none" for c in calls)


def test_layer_names_and_errors(model):
    assert resolve_layer(model, -1) == 1
    assert resolve_layer(model, -2) == 0
    with pytest.raises(UserError, match="layer 2 does not exist"):
        resolve_layer(model, 2)
    with pytest.raises(UserError, match="unknown hook site"):
        capture(model, stories(2), ["blocks.9.mlp.hook_post"])
    with pytest.raises(UserError, match="empty story"):
        capture(model, [[]], SITES)
