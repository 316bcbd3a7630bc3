"""Peak memory of activation capture: neo-33m, 20 unpadded stories of about 200 tokens.

Each variant runs in a fresh subprocess, which reports its own peak resident
set size (`ru_maxrss`) after loading the model (the baseline) and after the
work. The model is `neo-33m` (d_model 768, 4 layers, 16 heads, GPT-2 vocabulary
of 50,257) with random weights: memory does not depend on the weights' values.
Stories are the first 20 of the real validation file with 150-250 GPT-2 tokens
(the GPT-2 vocabulary from $TINYSTORIES_TESTDATA/gpt2).

- capture-8192 / capture-2048: `tinystories.interp.hooks.capture` of every
  layer's `attn.hook_pattern`, `mlp.hook_post` and `hook_resid_post`, kept for
  all 20 stories (no logits, batches of at most 8,192 / 2,048 padded positions);
- naive: the same sites from one padded batch of all 20 stories through a plain
  forward that also computes logits (B x T x 50,257 floats), as a
  straightforward hook loop would.

Writes benchmarks/results/interp_memory.json and prints a markdown table. The
target: capture stays under 2 GiB peak.

    .venv/bin/python benchmarks/bench_interp_memory.py
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "interp_memory.json"
ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _stories(tok) -> list[list[int]]:
    from tinystories.data.stories import iter_stories

    data = Path(os.environ.get("TINYSTORIES_TESTDATA", ROOT.parent / "shared" / "data"))
    out = []
    for text in iter_stories(data / "tinystories" / "TinyStories-valid.first201.txt"):
        ids = [tok.eot_id, *tok.encode(text)]
        if 150 <= len(ids) <= 250:
            out.append(ids)
        if len(out) == 20:
            return out
    raise SystemExit("not enough stories of 150-250 tokens")


def child(variant: str) -> None:
    """Run one variant in this process and print its JSON line."""
    import time

    import torch

    from tinystories.data.tokenizer import from_gpt2_files
    from tinystories.interp.hooks import capture
    from tinystories.model import GPT
    from tinystories.presets import preset

    data = Path(os.environ.get("TINYSTORIES_TESTDATA", ROOT.parent / "shared" / "data")) / "gpt2"
    tok = from_gpt2_files(data / "encoder.json", data / "vocab.bpe")
    stories = _stories(tok)
    torch.manual_seed(0)
    model = GPT(preset("neo-33m")).eval()
    cfg = model.config
    sites = [f"blocks.{layer}.{s}" for layer in range(cfg.n_layer)
             for s in ("attn.hook_pattern", "mlp.hook_post", "hook_resid_post")]
    base = _rss()
    t0 = time.perf_counter()
    if variant.startswith("capture"):
        acts = capture(model, stories, sites, batch_tokens=int(variant.split("-")[1]))
        kept = sum(t.numel() * t.element_size() for v in acts.values() for t in v)
    else:
        T = max(len(s) for s in stories)
        idx = torch.zeros(len(stories), T, dtype=torch.long)
        for i, s in enumerate(stories):
            idx[i, : len(s)] = torch.tensor(s)
        kept_d: dict[str, torch.Tensor] = {}
        hooks = {s: (lambda name: lambda x: kept_d.__setitem__(name, x.detach()))(s) for s in sites}
        with torch.no_grad():
            out = model(idx, hooks=hooks)
        kept = sum(t.numel() * t.element_size() for t in kept_d.values()) + out.logits.numel() * 4
    seconds = time.perf_counter() - t0
    print(json.dumps({"variant": variant, "stories": len(stories), "tokens": sum(map(len, stories)),
                      "mean_tokens": sum(map(len, stories)) / len(stories), "baseline_rss": base,
                      "peak_rss": _rss(), "kept_bytes": kept, "seconds": round(seconds, 2),
                      "threads": torch.get_num_threads()}))


def main() -> None:
    rows = []
    for variant in ("capture-8192", "capture-2048", "naive"):
        proc = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True,
                              cwd=ROOT, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{proc.stderr}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result = {
        "what": "peak RSS of capturing hook_pattern, mlp.hook_post, hook_resid_post of neo-33m over 20 stories",
        "model": "neo-33m (random weights)",
        "target_peak_gib": 2.0,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "variants": rows,
        "capture_under_target": rows[0]["peak_rss"] < 2 * GIB,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from tinystories.io import atomic_write_json

    atomic_write_json(RESULTS, result)
    print("| variant | tokens | baseline RSS | peak RSS | activations kept | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['tokens']} | {r['baseline_rss'] / GIB:.2f} GiB | {r['peak_rss'] / GIB:.2f} GiB "
              f"| {r['kept_bytes'] / GIB:.2f} GiB | {r['seconds']} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
