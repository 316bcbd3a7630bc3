"""Sampling: cached batched decoding against a no-cache reference, seeds, filters, beams, streaming."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch

from tinystories.beam import beam_search
from tinystories.decode import KVCache, decode_step
from tinystories.draw import draw, filtered_probs
from tinystories.errors import UserError
from tinystories.model import GPT, ModelConfig
from tinystories.sample import (
    FINISH_CONTEXT,
    FINISH_LENGTH,
    FINISH_STOP,
    IncrementalDecoder,
    SampleParams,
    Sampler,
    complete,
    generate,
    stream_text,
)

GREEDY = SampleParams(temperature=0.0, max_new_tokens=40)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(shape: str, vocab: int = 61, max_seq_len: int = 48, seed: int = 0) -> GPT:
    """A random float64 model (float64 so that batched and one-by-one logits agree far past any near-tie)."""
    torch.manual_seed(seed)
    if shape == "llama":
        cfg = ModelConfig(vocab_size=vocab, max_seq_len=max_seq_len, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                          norm="rms", pos="rope", mlp="swiglu", attn_scale="sqrt", attn_out_bias=False,
                          mlp_bias=False, init_std=0.3)
    else:  # neo: learned positions, LayerNorm, GELU, a local layer with a window far shorter than the sequences
        cfg = ModelConfig(vocab_size=vocab, max_seq_len=max_seq_len, d_model=32, n_layer=2, n_head=4,
                          windows=(None, 8), init_std=0.3)
    return GPT(cfg).double().eval()


@torch.no_grad()
def reference_greedy(model: GPT, prompt: list[int], n: int, eot: int | None = None) -> list[int]:
    """Greedy decoding that re-runs the full forward on the whole sequence every step (no cache)."""
    ids, out = list(prompt), []
    while len(out) < n and len(ids) < model.config.max_seq_len:
        tok = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if tok == eot:
            break
        out.append(tok)
        ids.append(tok)
    return out


@torch.no_grad()
def logprob(model: GPT, prompt: list[int], new: list[int]) -> float:
    """Summed log-probability of `new` after `prompt`, from one full forward."""
    ids = torch.tensor([prompt + new])
    logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(new))


PROMPTS = [[1, 2, 3], [5], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [3, 3]]


@pytest.mark.parametrize("shape", ["llama", "neo"])
def test_greedy_batched_equals_one_by_one_equals_no_cache(shape):
    model = tiny(shape)
    ref = [reference_greedy(model, p, 40) for p in PROMPTS]
    assert generate(model, PROMPTS, GREEDY) == ref  # prompts of different lengths in one batch
    assert [generate(model, [p], GREEDY)[0] for p in PROMPTS] == ref
    assert any(len(p) + len(r) > 8 + 8 for p, r in zip(PROMPTS, ref))  # well past the local window
    # Stopping at end-of-text: pick a token the first sequence produces midway.
    eot = ref[0][10]
    ref_eot = [r[: r.index(eot)] if eot in r else r for r in ref]  # greedy is greedy up to the eot
    done = complete(model, PROMPTS, GREEDY, eot_id=eot)
    assert [c.tokens for c in done] == ref_eot
    assert done[0].finish_reason == FINISH_STOP and len(done[0].tokens) == ref[0].index(eot)


def test_finish_reasons_and_context_end():
    model = tiny("neo", max_seq_len=20)
    short = complete(model, [[1, 2]], SampleParams(temperature=0, max_new_tokens=5))[0]
    assert short.finish_reason == FINISH_LENGTH and len(short.tokens) == 5
    full = complete(model, [[1, 2]], SampleParams(temperature=0, max_new_tokens=100))[0]
    assert full.finish_reason == FINISH_CONTEXT and len(full.tokens) == 20 - 2  # prompt + new fill the context
    assert full.tokens == reference_greedy(model, [1, 2], 100)
    with pytest.raises(UserError, match="no room"):
        generate(model, [list(range(20))], GREEDY)


def test_more_prompts_than_rows_queue():
    model = tiny("llama")
    ref = [reference_greedy(model, p, 12) for p in PROMPTS * 2]
    assert generate(model, PROMPTS * 2, SampleParams(temperature=0, max_new_tokens=12), max_batch=3) == ref


def _run_alone(model, prompt, params, eot=None):
    return complete(model, [prompt], params, eot_id=eot)[0].tokens


@pytest.mark.parametrize("shape", ["llama", "neo"])
def test_join_and_leave_mid_run_matches_running_alone(shape):
    model = tiny(shape)
    pa = SampleParams(temperature=1.0, top_p=0.9, max_new_tokens=30, seed=11)
    pb = SampleParams(temperature=0.0, max_new_tokens=25)
    pc = SampleParams(temperature=0.7, top_k=5, max_new_tokens=20, seed=12)
    pd = SampleParams(temperature=1.3, max_new_tokens=30, seed=13)
    s = Sampler(model, max_batch=3)
    got: dict[int, list[int]] = {}

    def step(n):
        for _ in range(n):
            for ev in s.step():
                got.setdefault(ev.seq_id, []).append(ev.token)

    a = s.add([1, 2, 3], pa)
    step(4)
    b = s.add([9, 8, 7, 6, 5, 4], pb)  # joins a running batch
    c = s.add([2], pc)
    step(5)
    s.remove(a)  # leaves early; its row is reused below
    d = s.add([4, 4, 4, 4], pd)
    while len(s):
        step(1)
    # a's first step fed its prompt's last token; the 8 steps after it made a token each
    assert got[a] == _run_alone(model, [1, 2, 3], pa)[:8]
    assert got[b] == _run_alone(model, [9, 8, 7, 6, 5, 4], pb) == reference_greedy(model, [9, 8, 7, 6, 5, 4], 25)
    assert got[c] == _run_alone(model, [2], pc)
    assert got[d] == _run_alone(model, [4, 4, 4, 4], pd)
    assert len(got[d]) == 30


def test_seeded_sampling_reproducible_and_batch_independent():
    model = tiny("llama")
    params = [SampleParams(temperature=1.0, max_new_tokens=30, seed=100 + i) for i in range(4)]
    batch = complete(model, PROMPTS, params)
    again = complete(model, PROMPTS, params)
    assert [c.tokens for c in batch] == [c.tokens for c in again]
    alone = [_run_alone(model, p, q) for p, q in zip(PROMPTS, params)]
    assert [c.tokens for c in batch] == alone
    # Reversed order in the batch, and mixed with greedy rows: still the same tokens.
    rev = complete(model, [*PROMPTS[::-1], [5]], [*params[::-1], GREEDY])
    assert [c.tokens for c in rev[:4]][::-1] == alone
    other = _run_alone(model, PROMPTS[0], SampleParams(temperature=1.0, max_new_tokens=30, seed=999))
    assert other != alone[0]
    # A shared seed is offset per prompt, so n copies of a prompt differ.
    same = generate(model, [[1]] * 3, SampleParams(temperature=1.0, max_new_tokens=20, seed=5))
    assert len({tuple(t) for t in same}) == 3


def test_top_k_top_p_by_hand():
    p = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype=torch.float64)
    logits = p.log()
    close = lambda a, b: torch.testing.assert_close(a, torch.tensor([b], dtype=a.dtype), atol=1e-6, rtol=0)  # noqa: E731
    close(filtered_probs(logits), [0.5, 0.2, 0.15, 0.1, 0.05])
    close(filtered_probs(logits, top_k=2), [5 / 7, 2 / 7, 0, 0, 0])
    # top-p keeps tokens while the better ones sum to < p: 0, .5, .7 < .8 kept, .85 dropped.
    close(filtered_probs(logits, top_p=0.8), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])
    close(filtered_probs(logits, top_p=0.3), [1, 0, 0, 0, 0])
    # top-p after top-k, on the renormalised top 3: .588, .235, .176 -> before: 0, .588, .824 -> .8 drops the third.
    close(filtered_probs(logits, top_k=3, top_p=0.9), [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])
    close(filtered_probs(logits, top_k=3, top_p=0.8), [5 / 7, 2 / 7, 0, 0, 0])
    sq = p.sqrt() / p.sqrt().sum()
    close(filtered_probs(logits, temperature=2.0), sq[0].tolist())
    # Inverse-CDF draws at evenly spaced uniforms land on each token in proportion to its probability.
    probs = filtered_probs(logits, top_k=3).expand(1000, -1)
    u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    counts = torch.bincount(draw(probs, u), minlength=5)
    assert counts.tolist() == [588, 236, 176, 0, 0]  # cdf .588, .8235, 1


def reference_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p by a full sort, one row at a time."""
    out = torch.zeros_like(logits)
    for r, row in enumerate(logits):
        vals, ids = row.sort(descending=True)
        k = top_k or len(row)
        p = torch.softmax(vals[:k], dim=0)
        n = 1
        while n < k and float(p[:n].sum()) < top_p:
            n += 1
        out[r, ids[:n]] = p[:n] / p[:n].sum()
    return out


def test_top_candidates_growth_matches_full_sort():
    """The 64-candidates-first shortcut gives exactly the full-sort result, also for flat rows."""
    torch.manual_seed(0)
    logits = torch.randn(6, 1000, dtype=torch.float64) * torch.tensor([[0.1], [1], [3], [8], [0.5], [2]])
    for top_k, top_p in [(0, 0.9), (0, 0.5), (100, 0.95), (500, 1.0), (0, 0.999), (3, 0.2)]:
        got = filtered_probs(logits, top_k=top_k, top_p=top_p)
        torch.testing.assert_close(got, reference_filter(logits, top_k, top_p), atol=1e-9, rtol=0)


def test_bad_params():
    with pytest.raises(UserError):
        SampleParams(top_p=0.0)
    with pytest.raises(UserError):
        SampleParams(temperature=-1)
    with pytest.raises(UserError):
        SampleParams(top_k=-2)


def test_beam_one_is_greedy_and_wider_beams_score_higher():
    model = tiny("llama")
    for prompt in PROMPTS:
        ref = reference_greedy(model, prompt, 15)
        r = beam_search(model, prompt, beams=1, max_new_tokens=15)
        assert r.tokens == ref and r.finish_reason == FINISH_LENGTH
        assert r.logprob == pytest.approx(logprob(model, prompt, ref), abs=1e-9)
        wide = beam_search(model, prompt, beams=5, max_new_tokens=15, length_penalty=0.0)
        assert len(wide.tokens) == 15
        assert wide.logprob == pytest.approx(logprob(model, prompt, wide.tokens), abs=1e-9)
        assert wide.logprob >= r.logprob - 1e-9
    # With end-of-text: beams=1 stops exactly where greedy does.
    eot = reference_greedy(model, PROMPTS[0], 15)[6]
    r = beam_search(model, PROMPTS[0], beams=1, max_new_tokens=15, eot_id=eot)
    assert r.tokens == reference_greedy(model, PROMPTS[0], 15, eot) and r.finish_reason == FINISH_STOP


def test_beam_search_matches_exhaustive_search():
    V, L = 6, 3
    model = tiny("neo", vocab=V, seed=3)
    prompt = [1, 4]
    best = max(itertools.product(range(V), repeat=L), key=lambda s: logprob(model, prompt, list(s)))
    best_lp = logprob(model, prompt, list(best))
    # Enough beams to keep every prefix: beam search is exhaustive.
    full = beam_search(model, prompt, beams=V ** (L - 1), max_new_tokens=L, length_penalty=0.0)
    assert full.tokens == list(best)
    assert full.logprob == pytest.approx(best_lp, abs=1e-9)
    small = beam_search(model, prompt, beams=2, max_new_tokens=L, length_penalty=0.0)
    greedy = reference_greedy(model, prompt, L)
    assert logprob(model, prompt, greedy) - 1e-9 <= small.logprob <= best_lp + 1e-9
    # With end-of-text (= id 0): every sequence up to L tokens, ended by eot or by the length limit.
    cands = [[*list(s), 0] for n in range(L) for s in itertools.product(range(1, V), repeat=n)]
    cands += [list(s) for s in itertools.product(range(1, V), repeat=L)]
    best_eot = max(cands, key=lambda s: logprob(model, prompt, s))
    r = beam_search(model, prompt, beams=V ** L, max_new_tokens=L, length_penalty=0.0, eot_id=0)
    assert r.logprob == pytest.approx(logprob(model, prompt, best_eot), abs=1e-9)
    assert r.tokens == [t for t in best_eot if t != 0]


class ByteTokenizer:
    """Token i is byte i; 256 = end-of-text. Multi-byte characters span tokens."""

    eot_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i != 256).decode("utf-8", errors="replace")


def test_incremental_decoder_never_splits_a_character():
    tok = ByteTokenizer()
    text = "Lily saw a bird. \u00e9\u00e8 \u4e16\u754c \U0001f600! The end." * 3
    dec = IncrementalDecoder(tok.decode, [256, *tok.encode("Once")])
    pieces = [dec.push(t) for t in tok.encode(text)] + [dec.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "\U0001f600" in pieces  # the 4-byte emoji arrives whole, once its last byte is in


def test_incremental_decoder_push_many_equals_pushes_one_by_one():
    tok = ByteTokenizer()
    ids = tok.encode("Lily saw a bird. \u00e9\u00e8 \u4e16\u754c \U0001f600! The end." * 3)
    one = IncrementalDecoder(tok.decode, [256])
    many = IncrementalDecoder(tok.decode, [256])
    for lo, hi in zip(range(0, len(ids), 7), range(7, len(ids) + 7, 7)):  # chunks that split characters
        want = "".join(one.push(t) for t in ids[lo:hi])
        assert many.push_many(ids[lo:hi]) == want
    assert many.flush() == one.flush() == ""
    assert many.ids == one.ids


def test_stream_text_equals_final_decode():
    model = tiny("neo", vocab=257, max_seq_len=64)
    tok = ByteTokenizer()
    params = SampleParams(temperature=1.0, max_new_tokens=40, seed=7)
    pieces = list(stream_text(model, tok, "Once", params))
    prompt = [256, *tok.encode("Once")]
    new = _run_alone(model, prompt, params, eot=256)
    full = tok.decode(prompt + new)
    assert "".join(pieces) == full[len(tok.decode(prompt)) :]
    assert all(pieces)


def test_sample_command(tmp_path):
    from tinystories.data.tokenizer import train_bpe
    from tinystories.rundir import save_checkpoint, write_config
    from tinystories.sample import SampleConfig, sample

    tok = train_bpe(["Once upon a time there was a little dog. The dog was happy."] * 20, 300)
    cfg = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=64, d_model=32, n_layer=2, n_head=4)
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, cfg)
    tok.save(run)
    save_checkpoint(run, 1, GPT(cfg))
    out = tmp_path / "s.json"
    sample(SampleConfig(run=str(run), prompt=["Once upon"], n=3, max_new_tokens=10, temperature=0.8, top_p=0.9,
                        out=str(out)))
    import json

    got = json.loads(out.read_text())["samples"]
    assert len(got) == 3 and all(s["prompt"] == "Once upon" for s in got)
    assert all(s["completion"] == tok.decode(s["tokens"]) or s["tokens"] for s in got)
    sample(SampleConfig(run=str(run), prompt=["Once"], beams=3, max_new_tokens=5, out=str(out)))
    assert len(json.loads(out.read_text())["samples"]) == 1
    # A user mistake is one line on stderr and exit status 2.
    bad = subprocess.run([sys.executable, "-m", "tinystories", "sample", "--run", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "error" in bad.stderr


def test_generate_is_fast_enough_to_matter():
    """Smoke check that the engine is not pathologically slow: 64 streams x 32 tokens on a tiny model."""
    model = tiny("llama", vocab=64, max_seq_len=64).float()
    import time

    t0 = time.perf_counter()
    out = generate(model, [[1]] * 64, SampleParams(temperature=1.0, max_new_tokens=32, seed=0))
    assert sum(map(len, out)) == 64 * 32
    assert time.perf_counter() - t0 < 10
    assert math.isfinite(t0)


def test_two_level_draw_equals_plain_inverse_cdf():
    torch.manual_seed(1)
    probs = torch.rand(8, 10_000, dtype=torch.float64) ** 8
    probs[:, 5000:] = 0.0  # zero-probability columns, also a whole zero tail, are never drawn
    probs[3, :9995] = 0.0
    probs[3, 9995:] = 1.0  # only the partial last block has mass
    u = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0 - 1e-16], dtype=torch.float64)
    cdf = probs.cumsum(dim=-1)
    plain = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    got = draw(probs, u)
    assert (probs.gather(1, got[:, None]) > 0).all()
    assert (got[:7] == plain[:7]).all() and 9995 <= got[3] < 10_000


def test_long_sampled_sequences_past_one_uniform_block():
    """Sequences longer than the 64 uniforms drawn at a time, one joining late, match running alone."""
    model = tiny("llama", max_seq_len=160)
    pa = SampleParams(temperature=0.9, top_p=0.95, max_new_tokens=140, seed=1)
    pb = SampleParams(temperature=1.1, max_new_tokens=80, seed=2)
    s = Sampler(model, max_batch=2)
    got: dict[int, list[int]] = {}
    a = s.add([1, 2], pa)
    for i in range(151):
        if i == 70:
            b = s.add([3], pb)
        for ev in s.step():
            got.setdefault(ev.seq_id, []).append(ev.token)
    assert got[a] == _run_alone(model, [1, 2], pa) and len(got[a]) == 140
    assert got[b] == _run_alone(model, [3], pb) and len(got[b]) == 80


def test_logprobs_are_the_models_and_only_for_rows_that_ask():
    model = tiny("llama")
    sampler = Sampler(model, 3, eot_id=0)
    prompts = [[0, 5, 9], [0, 7], [0, 3, 4, 8]]
    params = [SampleParams(1.0, top_k=5, max_new_tokens=6, seed=1, logprobs=4), SampleParams(0.0, max_new_tokens=6),
              SampleParams(0.7, max_new_tokens=6, seed=2, logprobs=0)]
    ids = sampler.add_many(prompts, params)
    got: dict[int, list] = {i: [] for i in ids}
    while len(sampler):
        for ev in sampler.step():
            got[ev.seq_id].append(ev)
    assert all(ev.logprobs is None for ev in got[ids[1]])
    for sid, prompt, k in ((ids[0], prompts[0], 4), (ids[2], prompts[2], 0)):
        new = [ev.token for ev in got[sid]]
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([prompt + new]), logits="all").logits[0].double(), dim=-1)
        for i, ev in enumerate(got[sid]):
            row = ref[len(prompt) - 1 + i]  # (V,) the model's distribution before token i
            assert ev.logprobs.logprob == pytest.approx(row[ev.token].item(), abs=1e-4)
            assert [t for t, _ in ev.logprobs.top] == row.topk(k).indices.tolist()
            assert [lp for _, lp in ev.logprobs.top] == pytest.approx(row.topk(k).values.tolist(), abs=1e-4)
    with pytest.raises(UserError, match="logprobs"):
        SampleParams(logprobs=21)


@pytest.mark.parametrize("shape", ["llama", "neo"])
def test_static_decode_equals_the_sliced_one(shape):
    """The fixed-shape step a CUDA graph captures: same logits, same cache writes, no host read-back needed."""
    from tinystories import kernels

    model = tiny(shape)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [5, 6], [7, 7, 7, 7, 7, 7]]  # rows at different positions
    caches = []
    with kernels.disabled(), torch.no_grad():
        for _ in range(2):
            cache = KVCache(model.config, 3, 40, dtype=torch.float64)
            for row, p in enumerate(prompts):
                model(torch.tensor([p]), logits="none", cache=cache.rows(row, row + 1))
            caches.append(cache)
        tokens = torch.tensor([3, 4, 5])
        for _ in range(12):  # past the neo model's window of 8
            sliced = decode_step(model, tokens, caches[0])
            static = decode_step(model, tokens, caches[1], static=True)
            torch.testing.assert_close(static, sliced, rtol=1e-10, atol=1e-10)
            tokens = sliced.argmax(-1)
    assert torch.equal(caches[0].lengths, caches[1].lengths)
    for a, b in zip(caches[0].kv, caches[1].kv):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # later keys inherit the rounding


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("shape", ["llama", "neo"])
def test_cuda_graph_steps_equal_uncaptured_steps(shape, monkeypatch):
    model = tiny(shape).cuda()
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5, 4], [2], [4, 4, 4, 4]]
    params = [SampleParams(temperature=0.0, max_new_tokens=30), SampleParams(temperature=1.0, max_new_tokens=25, seed=3),
              SampleParams(temperature=0.7, top_k=5, max_new_tokens=12, seed=4),
              SampleParams(temperature=1.0, top_p=0.9, max_new_tokens=40, seed=5)]

    def run() -> list[list[int]]:
        return [c.tokens for c in complete(model, prompts, params, max_batch=3)]  # 4 prompts, 3 rows: one joins

    captured = run()
    monkeypatch.setenv("TINYSTORIES_CUDA_GRAPHS", "0")
    assert captured == run()
