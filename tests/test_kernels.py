"""The C attention kernels (decode and training) and RMSNorm against PyTorch, in the model, and their fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinystories import kernels
from tinystories.model import GPT, rope_rotations
from tinystories.presets import preset
from tinystories.sample import SampleParams, generate

needs_kernel = pytest.mark.skipif(not kernels.available(), reason="the decode kernel could not be built here (no C compiler?)")


def tiny_model(name: str) -> GPT:
    """The preset at vocabulary 97, seed 0; neo-1m with local layers of window 8 (as its family has)."""
    over = {"vocab_size": 97, "windows": (None, 8) * 4} if name == "neo-1m" else {"vocab_size": 97}
    torch.manual_seed(0)
    return GPT(preset(name, **over))


def reference(qkv, kv, pos, table, H, window, scale):
    """What the kernel must do, row by row in PyTorch: rotate, write the cache, attend to [lo, p]."""
    B, twoK, _, D = kv.shape
    K = twoK // 2
    heads = qkv.view(B, H + 2 * K, D).clone()
    out = torch.empty(B, H, D)
    for b in range(B):
        p = int(pos[b])
        if table is not None:
            pairs = torch.view_as_complex(heads[b, : H + K].reshape(H + K, D // 2, 2).contiguous())
            turned = pairs * torch.view_as_complex(table[p].contiguous())
            heads[b, : H + K] = torch.view_as_real(turned).reshape(H + K, D)
        kv[b, :, p] = heads[b, H:]
        lo = max(0, p + 1 - window) if window else 0
        k, v = kv[b, :K, lo : p + 1], kv[b, K:, lo : p + 1]  # (K, n, D)
        q = heads[b, :H].view(K, H // K, D)
        out[b] = F.scaled_dot_product_attention(q, k, v, scale=scale).reshape(H, D)
    return out.view(B, H * D), heads.view(B, -1)


@needs_kernel
@pytest.mark.parametrize("D", [4, 8, 16, 48, 64, 12])
@pytest.mark.parametrize(("H", "K"), [(4, 4), (4, 2), (8, 2)])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("rope", [True, False])
def test_kernel_equals_pytorch(D, H, K, window, rope):
    torch.manual_seed(D * 100 + H * 10 + K)
    B, M = 5, 40
    pos = torch.tensor([0, 1, 7, 8, 39])  # the first slot, both sides of the window, of 8 keys, the last slot
    kv = torch.randn(B, 2 * K, M, D)
    qkv = torch.randn(B, (H + 2 * K) * D)
    table = rope_rotations(M, D, 10000.0).contiguous() if rope else None
    scale = D**-0.5
    before, kv_ref = kv.clone(), kv.clone()
    want, rotated = reference(qkv, kv_ref, pos, table, H, window, scale)
    got = kernels.decode_attention(qkv, kv, pos, table, H, window, scale)
    assert (got - want).abs().max() < 1e-5
    assert (qkv - rotated).abs().max() < 1e-5  # rotated in place
    assert (kv - kv_ref).abs().max() < 1e-5  # the new keys and values written where they belong, nothing else
    written = kv.ne(before).nonzero()  # (row, head, slot, dim) of every changed element
    assert torch.equal(written[:, 2], pos[written[:, 0]])  # each row's new slot only


@needs_kernel
@pytest.mark.parametrize(("B", "C"), [(1, 64), (3, 7), (64, 288)])
def test_rms_norm_equals_pytorch(B, C):
    torch.manual_seed(B + C)
    x, w = torch.randn(B, C) * 3, torch.randn(C)
    want = torch.rms_norm(x, (C,), w, 1e-5)
    assert (kernels.rms_norm(x, w, 1e-5) - want).abs().max() < 1e-5
    small = torch.full((2, C), 1e-4)  # where eps matters: the result is not x's sign times w
    assert (kernels.rms_norm(small, w, 1e-5) - torch.rms_norm(small, (C,), w, 1e-5)).abs().max() < 1e-6


@needs_kernel
def test_silu_mul_equals_pytorch():
    torch.manual_seed(1)
    h = torch.randn(5, 2 * 172) * 4  # large gates too: silu's tails
    h[0, :3] = torch.tensor([-100.0, 100.0, -1e4])  # exp overflows: still 0 and x, no NaN
    want = F.silu(h[:, :172]) * h[:, 172:]
    assert torch.allclose(kernels.silu_mul(h), want, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_kernel_splits_rows_over_threads_with_the_same_result():
    torch.manual_seed(0)
    B, H, K, D, M = 9, 8, 4, 8, 64
    kv, qkv = torch.randn(B, 2 * K, M, D), torch.randn(B, (H + 2 * K) * D)
    pos = torch.arange(B) * 7
    outs = [kernels.decode_attention(qkv.clone(), kv.clone(), pos, None, H, None, 0.3, threads) for threads in (1, 2, 4)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@needs_kernel
@pytest.mark.parametrize("name", ["llama-260k", "neo-1m"])
def test_sampling_with_the_kernel_matches_pytorch_attention(name, monkeypatch):
    # neo-1m: head dim 4 (two keys to a vector) with local layers of window 8; llama-260k: head dim 8, grouped
    # queries.
    model = tiny_model(name).eval()
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11]]  # different lengths: rows at different positions
    params = SampleParams(temperature=0.0, max_new_tokens=40)
    fast = generate(model, prompts, params)
    monkeypatch.setattr(kernels, "ENABLED", False)
    assert generate(model, prompts, params) == fast


def test_no_compiler_means_pytorch_attention(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("TINYSTORIES_CACHE", str(tmp_path))
    kernels._library.cache_clear()
    try:
        assert not kernels.available()
        model = GPT(preset("llama-260k", vocab_size=97)).eval()
        assert len(generate(model, [[1, 2]], SampleParams(temperature=0.0, max_new_tokens=5))[0]) == 5
        assert not list(tmp_path.rglob("*.so*"))  # nothing half-written left behind
    finally:
        kernels._library.cache_clear()


def test_the_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path):
    if kernels._library() is None:
        pytest.skip("the decode kernel could not be built here (no C compiler?)")
    monkeypatch.setenv("TINYSTORIES_CACHE", str(tmp_path))
    kernels._library.cache_clear()
    try:
        assert kernels.available()
        built = list((tmp_path / "kernels").glob("kernels-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        kernels._library.cache_clear()
        assert kernels.available() and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    finally:
        kernels._library.cache_clear()


def test_other_dtypes_keep_pytorch_attention():
    x = torch.zeros(2, 8, dtype=torch.bfloat16)
    assert not kernels.usable(x, torch.zeros(2, 2, 4, 8, dtype=torch.bfloat16))
    assert not kernels.usable(x.float(), torch.zeros(2, 2, 4, 8, dtype=torch.float64))


def sdpa_causal(q, k, v, window, scale):
    """Reference for `causal_attention`: SDPA on (B, H, T, D) with the causal (and window) mask."""
    _, T, H, _ = q.shape
    K = k.shape[2]
    i = torch.arange(T)
    dist = i[:, None] - i[None, :]
    mask = (dist >= 0) & (dist < (window or T))
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if K != H:
        kt, vt = kt.repeat_interleave(H // K, dim=1), vt.repeat_interleave(H // K, dim=1)
    return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale).transpose(1, 2)


@needs_kernel
@pytest.mark.parametrize(("H", "K", "D", "window", "T"), [
    (4, 2, 8, None, 37),  # grouped queries; 37 keys: blocks of eight and a remainder
    (4, 4, 16, 5, 37),  # a local window
    (6, 6, 48, None, 20),  # llama-15m's head dim
    (8, 2, 24, 3, 9),  # a head dim without a specialised copy
    (2, 1, 8, None, 1),  # one token
    (16, 16, 4, None, 37),  # head dim 4 (TinyStories-1M's): two keys to a vector
    (4, 2, 4, 6, 17),  # head dim 4, grouped, windowed
])
def test_training_attention_equals_sdpa_forward_and_backward(H, K, D, window, T):
    torch.manual_seed(H + K + D + T)
    B = 3
    qkv = torch.randn(B, T, H + 2 * K, D, dtype=torch.float32, requires_grad=True)
    q, k, v = qkv.split([H, K, K], dim=2)  # strided views, as the model's fused projection gives them
    assert kernels.trainable(q, k)
    scale = D**-0.5
    got = kernels.causal_attention(q, k, v, window, scale)
    want = sdpa_causal(q, k, v, window, scale)
    assert (got - want).abs().max() < 1e-5
    dy = torch.randn_like(got)
    (g1,) = torch.autograd.grad(got, qkv, dy)
    (g2,) = torch.autograd.grad(want, qkv, dy)
    assert (g1 - g2).abs().max() < 2e-5


@needs_kernel
def test_training_attention_is_bitwise_the_same_on_any_number_of_threads():
    torch.manual_seed(0)
    qkv = torch.randn(3, 40, 16, 8, requires_grad=True)
    q, k, v = qkv.split([8, 4, 4], dim=2)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y = kernels.causal_attention(q, k, v, None, 0.35)
            (g,) = torch.autograd.grad(y.square().sum(), qkv)
            results.append((y, g))
    finally:
        torch.set_num_threads(before)
    for y, g in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(g, results[0][1])


@needs_kernel
@pytest.mark.parametrize("name", ["llama-260k", "neo-1m"])
def test_training_with_the_kernel_matches_sdpa(name, monkeypatch):
    # The model's loss and every parameter's gradient, kernel against SDPA (neo: 16 heads of 4, local layers
    # of window 8).
    model = tiny_model(name).train()
    x = torch.randint(0, 97, (2, 33))

    def loss_and_grads():
        model.zero_grad()
        loss = model(x, x, logits="none").loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    fast = loss_and_grads()
    monkeypatch.setattr(kernels, "ENABLED", False)
    slow = loss_and_grads()
    assert abs(fast[0] - slow[0]) < 1e-5
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(fast[1], slow[1]))


def test_training_attention_is_not_taken_for_other_operands():
    q = torch.zeros(1, 4, 2, 8)
    assert not kernels.trainable(q.double(), q.double())
    assert not kernels.trainable(torch.zeros(1, 4, 2, 12), torch.zeros(1, 4, 2, 12))  # head dim 12: SDPA
    assert not kernels.trainable(q.transpose(2, 3), q)  # the head dim not contiguous


@needs_kernel
def test_loading_the_kernels_leaves_denormals_alone():
    # Linked with -ffast-math, gcc would add crtfastmath.o, flushing denormals to zero process-wide.
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert (tiny * 1.0).item() > 0 and (torch.tensor([1e-38]) / 1000).item() > 0


@needs_kernel
def test_peaked_attention_equals_sdpa():
    # Scores hundreds apart, as in a trained model's sharp heads: weights below exp(-80) are cut to 0
    # (denormals would be slow), which must not change the result.
    torch.manual_seed(3)
    B, T, H, K, D = 2, 40, 4, 2, 8
    qkv = (torch.randn(B, T, H + 2 * K, D) * torch.tensor([30.0] * H + [3.0] * (2 * K))[:, None]).requires_grad_()
    q, k, v = qkv.split([H, K, K], dim=2)
    got, want = kernels.causal_attention(q, k, v, None, D**-0.5), sdpa_causal(q, k, v, None, D**-0.5)
    assert (got - want).abs().max() < 1e-4
    dy = torch.randn_like(got)
    (g1,) = torch.autograd.grad(got, qkv, dy)
    (g2,) = torch.autograd.grad(want, qkv, dy)
    assert (g1 - g2).abs().max() < 5e-5 * g2.abs().max()  # gradients reach ~90 here: float32 rounding of both
    kv = torch.randn(B, 2 * K, T, D) * 3
    step = torch.randn(B, (H + 2 * K) * D) * 30
    pos = torch.tensor([T - 1, 20])
    ref_kv = kv.clone()
    want_step, _ = reference(step, ref_kv, pos, None, H, None, D**-0.5)
    got_step = kernels.decode_attention(step.clone(), kv, pos, None, H, None, D**-0.5)
    assert (got_step - want_step).abs().max() < 1e-4
