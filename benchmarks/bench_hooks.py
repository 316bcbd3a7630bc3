"""What hook support costs: the model with hooks=None versus the same math with no hook checks at all.

The reference below re-states the forward pass with the model's own modules and
none of the `_hook(...)` calls, so any difference is the price of hook support
when nobody hooks. A third column asks for every layer's attention pattern,
which switches attention from SDPA to the explicit softmax path.

Repeats are interleaved (each round times every variant once, in a shuffled
order) and medians reported, so drift on a shared machine hits all variants
alike. Because the overhead is tiny next to load noise, three estimates are
given: the ratio of medians, the median of per-round ratios, and the ratio of
minima; and, as a cross-check no load can blur, the counted cost: unused sites
per forward times the measured nanoseconds of one unused site. Writes
benchmarks/results/hooks.json and prints a markdown table.

    .venv/bin/python benchmarks/bench_hooks.py [--rounds 20] [--pattern-rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tinystories.io import atomic_open
from tinystories.loss import chunked_cross_entropy
from tinystories.model import GPT, _hook, rotate_pairs
from tinystories.presets import preset

B, T = 16, 256
RESULTS = Path(__file__).resolve().parent / "results" / "hooks.json"


# --- the reference: the model's forward without hook sites -----------------------


def plain_attention(attn, x, step):
    B_, T_, _ = x.shape
    H, K, D = attn.n_head, attn.n_kv_head, attn.head_dim
    if step.rope is None:
        q, k, v = attn.qkv(x).split([H * D, K * D, K * D], dim=-1)
        q, k = q.view(B_, T_, H, D), k.view(B_, T_, K, D)
    else:
        rotations, rows = step.rope
        bias = None if attn.qkv.bias is None else attn.qkv.bias[rows]
        qk, v = F.linear(x, attn.qkv.weight[rows], bias).split([(H + K) * D, K * D], dim=-1)
        q, k = rotate_pairs(qk.view(B_, T_, H + K, D), rotations).split([H, K], dim=2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B_, T_, K, D).transpose(1, 2)
    gqa = {"enable_gqa": True} if K != H else {}
    mask = step.masks[attn.window]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=attn.scale, **gqa)
    return attn.out(y.transpose(1, 2).reshape(B_, T_, H * D))


def plain_mlp(mlp, x):
    h = mlp.fc(x)
    if mlp.gated:
        gate, up = h.chunk(2, dim=-1)
        h = F.silu(gate) * up
    else:
        h = F.gelu(h, approximate="tanh")
    return mlp.proj(h)


def plain_forward(model: GPT, idx, targets=None):
    B_, T_ = idx.shape
    step = model._plan(B_, T_, idx.device, None)
    x = model.tok_emb(idx)
    if model.pos_emb is not None:
        x = x + model.pos_emb(torch.arange(T_, device=idx.device))
    for block in model.blocks:
        x = x + plain_attention(block.attn, block.ln1(x), step)
        x = x + plain_mlp(block.mlp, block.ln2(x))
    x = model.ln_final(x)
    if targets is not None:
        return chunked_cross_entropy(x.reshape(B_ * T_, -1), model.classifier_weight, targets.reshape(-1))
    return F.linear(x, model.classifier_weight)


# --- timing ------------------------------------------------------------------------


def variants(model: GPT, idx, targets):
    patterns = {f"blocks.{i}.attn.hook_pattern": lambda p: None for i in range(model.config.n_layer)}

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    def fwd_bwd(fn):
        def run():
            model.zero_grad(set_to_none=True)
            fn().backward()
        return run

    return {
        ("forward", "reference"): fwd(lambda: plain_forward(model, idx)),
        ("forward", "hooks=None"): fwd(lambda: model(idx).logits),
        ("forward", "patterns"): fwd(lambda: model(idx, hooks=patterns).logits),
        ("forward+backward", "reference"): fwd_bwd(lambda: plain_forward(model, idx, targets)),
        ("forward+backward", "hooks=None"): fwd_bwd(lambda: model(idx, targets, logits="none").loss),
        ("forward+backward", "patterns"): fwd_bwd(lambda: model(idx, targets, logits="none", hooks=patterns).loss),
    }


def hook_call_ns(calls: int = 200_000) -> float:
    """Nanoseconds one unused hook site costs (a call that returns at `hooks is None`), net of the loop."""
    x = torch.zeros(1)
    start = time.perf_counter()
    for _ in range(calls):
        _hook(None, "blocks.0.", "hook_resid_pre", x)
    with_call = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(calls):
        pass
    return 1e9 * (with_call - (time.perf_counter() - start)) / calls


def bench_model(name: str, rounds: int, pattern_rounds: int) -> list[dict]:
    cfg = preset(name, vocab_size=512)  # a small vocabulary, so the blocks (where the hooks are) dominate
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.roll(idx, -1, dims=1)
    with torch.no_grad():  # the reference must compute exactly what the model does
        assert torch.equal(plain_forward(model, idx), model(idx).logits)

    runs = variants(model, idx, targets)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for run in runs.values():  # warm-up
        run()
    rng = random.Random(0)
    for i in range(rounds):
        # The explicit-softmax path is several times slower; a few rounds of it suffice.
        order = [key for key in runs if key[1] != "patterns" or i < pattern_rounds]
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - start)

    # A load-independent cross-check: the cost of the unused sites, counted, against the measured pass.
    sites = len(model.hook_sites()) - model.config.n_layer  # attn.hook_pattern is a dict lookup, not a call
    site_ns = min(hook_call_ns() for _ in range(3))
    rows = []
    for mode in ("forward", "forward+backward"):
        ref = statistics.median(times[(mode, "reference")])
        none = statistics.median(times[(mode, "hooks=None")])
        pat = statistics.median(times[(mode, "patterns")])
        # The fastest run is the one least disturbed by other work: a second estimate when the machine is busy.
        ref_min, none_min = min(times[(mode, "reference")]), min(times[(mode, "hooks=None")])
        # Both variants of a round run within a second of each other, so their ratio cancels slow drift.
        paired = statistics.median(n / r for n, r in zip(times[(mode, "hooks=None")], times[(mode, "reference")]))
        rows.append({
            "model": name, "vocab_size": cfg.vocab_size, "mode": mode, "batch": B, "seq_len": T,
            "reference_ms": 1000 * ref, "hooks_none_ms": 1000 * none, "patterns_ms": 1000 * pat,
            "hooks_none_overhead_pct": 100 * (none / ref - 1), "patterns_overhead_pct": 100 * (pat / ref - 1),
            "reference_min_ms": 1000 * ref_min, "hooks_none_min_ms": 1000 * none_min,
            "hooks_none_overhead_min_pct": 100 * (none_min / ref_min - 1),
            "hooks_none_overhead_paired_pct": 100 * (paired - 1),
            "unused_sites": sites, "site_call_ns": site_ns,
            "counted_overhead_pct": 100 * sites * site_ns * 1e-9 / ref_min,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed repeats of each variant (default 20)")
    parser.add_argument("--pattern-rounds", type=int, default=3, help="timed repeats with patterns (default 3)")
    args = parser.parse_args()
    start = time.time()
    rows = [row for name in ("llama-260k", "neo-1m") for row in bench_model(name, args.rounds, args.pattern_rounds)]
    result = {
        "benchmark": "hooks",
        "what": "unused hook sites (hooks=None) versus a forward with none; and all attention patterns requested",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rounds": args.rounds,
        "pattern_rounds": args.pattern_rounds,
        "rows": rows,
        "seconds": round(time.time() - start, 1),
    }
    with atomic_open(RESULTS) as f:
        json.dump(result, f, indent=2)

    print(f"hooks: batch {B} x {T} tokens, CPU, {torch.get_num_threads()} threads, median of {args.rounds} "
          f"({args.pattern_rounds} with patterns)\n")
    print("| model | pass | no hook sites (ms) | hooks=None (ms) | overhead | per-round ratio | of minima "
          "| all patterns (ms) | overhead |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} (V={r['vocab_size']}) | {r['mode']} | {r['reference_ms']:.1f} | {r['hooks_none_ms']:.1f} "
              f"| {r['hooks_none_overhead_pct']:+.1f}% | {r['hooks_none_overhead_paired_pct']:+.1f}% "
              f"| {r['hooks_none_overhead_min_pct']:+.1f}% "
              f"| {r['patterns_ms']:.1f} | {r['patterns_overhead_pct']:+.1f}% |")
    for r in rows[::2]:
        print(f"\n{r['model']}: {r['unused_sites']} unused hook sites x {r['site_call_ns']:.0f} ns = "
              f"{r['counted_overhead_pct']:.3f}% of the fastest forward (a count that machine load cannot blur)")
    print(f"\nwrote {RESULTS} in {result['seconds']} s")


if __name__ == "__main__":
    main()
