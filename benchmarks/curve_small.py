"""Learning curves on a small real corpus: validation bits per byte against the unigram baseline.

Tokenizes TinyStories-valid.first201.txt (the first 201 real validation stories)
with a 512-token BPE (10% of the stories held out), then trains `llama-260k`
and `neo-1m` (vocabulary from the tokenizer) for a fixed wall-clock budget each
through the normal `train()` loop, validating on the whole held-out split.

The baseline is a unigram model: the entropy of the training split's token
distribution, in bits per token, divided by the bytes per token; and the
cross-entropy of the held-out tokens under that distribution (add-one smoothed),
which is the number a model that ignores context would score.

Writes benchmarks/results/curve_small.json and prints a markdown table.

    .venv/bin/python benchmarks/curve_small.py [--minutes 5] [--presets llama-260k neo-1m]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tinystories.data.shards import open_dataset
from tinystories.data.tokenize import TokenizeConfig, tokenize
from tinystories.io import atomic_open
from tinystories.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results" / "curve_small.json"
STORIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "TinyStories-valid.first201.txt"


def unigram_baseline(dataset: Path) -> dict[str, float]:
    """Unigram entropy (train) and unigram cross-entropy of the val split, in bits per byte."""
    ds = open_dataset(dataset)
    train_split, val_split = ds.splits["train"], ds.splits["val"]
    train_ids = train_split.tokens(0, train_split.n_tokens).astype(np.int64)
    val_ids = val_split.tokens(0, val_split.n_tokens).astype(np.int64)
    counts = np.bincount(train_ids, minlength=ds.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    entropy_bits = float(-(p * np.log2(p)).sum())
    smoothed = (counts + 1) / (counts.sum() + ds.vocab_size)
    # Every val token but the first is predicted (the first end-of-text has no context).
    cross_bits = float(-np.log2(smoothed[val_ids[1:]]).mean())
    info = ds.meta["splits"]
    train_bpt = info["train"]["bytes"] / info["train"]["tokens"]
    val_bpt = info["val"]["bytes"] / info["val"]["tokens"]
    return {
        "unigram_entropy_bits_per_token": round(entropy_bits, 4),
        "unigram_entropy_bpb": round(entropy_bits / train_bpt, 4),
        "unigram_val_bpb": round(cross_bits / val_bpt, 4),
        "val_bytes_per_token": round(val_bpt, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per model")
    ap.add_argument("--presets", nargs="+", default=["llama-260k", "neo-1m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-interval", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        tokenize(TokenizeConfig(data=(str(STORIES),), out=str(data), vocab_size=512, val_fraction=0.1, workers=1))
        baseline = unigram_baseline(data)
        for name in args.presets:
            run = Path(tmp) / name
            cfg = TrainConfig(
                data=str(data), run=str(run), preset=name, seq_len=args.seq_len, batch_size=args.batch_size,
                lr=args.lr, schedule="constant", warmup=50, time=args.minutes * 60, eval_interval=args.eval_interval,
                eval_tokens=0, ckpt_interval=0, log_interval=args.eval_interval, progress=False,
            )
            summary = train(cfg, {})
            assert summary is not None
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            curve = [
                {k: r[k] for k in ("step", "tokens", "elapsed_s", "loss", "val_loss", "val_bpb") if k in r}
                for r in rows
                if "val_loss" in r
            ]
            best = min(curve, key=lambda r: r["val_bpb"])
            runs.append({
                "preset": name,
                "params": summary["params"],
                "steps": summary["step"],
                "tokens": summary["tokens"],
                "tokens_per_s": round(summary["tokens"] / max(summary["elapsed_s"], 1e-9), 1),
                "final_val_bpb": curve[-1]["val_bpb"],
                "best_val_bpb": best["val_bpb"],
                "best_step": best["step"],
                "curve": curve,
            })

    result = {
        "benchmark": "curve_small",
        "corpus": STORIES.name,
        "tokenizer": "bpe-512",
        "settings": {k: v for k, v in vars(args).items()},
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "baseline": baseline,
        "runs": runs,
        "seconds": round(time.time() - t0, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(RESULTS) as f:
        json.dump(result, f, indent=2)

    print(f"curve_small: {STORIES.name}, BPE 512, {args.minutes:g} min per model on {args.threads} CPU threads\n")
    print(f"unigram baseline: entropy {baseline['unigram_entropy_bpb']} bits/byte (train), "
          f"{baseline['unigram_val_bpb']} bits/byte on val\n")
    print("| preset | params | steps | tokens | tokens/s | best val bpb (step) | final val bpb | vs unigram |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        ratio = r["best_val_bpb"] / baseline["unigram_val_bpb"]
        print(f"| {r['preset']} | {r['params']:,} | {r['steps']} | {r['tokens']:,} | {r['tokens_per_s']:.0f} "
              f"| {r['best_val_bpb']:.3f} ({r['best_step']}) | {r['final_val_bpb']:.3f} | {ratio:.0%} |")
    print(f"\nwrote {RESULTS} in {result['seconds']} s")
    assert all(math.isfinite(r["final_val_bpb"]) for r in runs)


if __name__ == "__main__":
    main()
