"""GPU throughput: our training loop and sampler beside transformers, on the same device in the same run.

Run by `benchmarks/gpu.sh` (`PYTHONPATH=src python3 benchmarks/gpu_bench.py`).
It needs no network and no test data: the dataset is random tokens (speed
does not depend on what the tokens say). One JSON object per line on stdout,
also appended to `$OUT/gpu.jsonl` when `$OUT` is set, so a run cut short by a
timeout keeps what it measured:

1. `env` and `peak`: the device, versions, and the measured dense matmul
   FLOP/s in bf16 (the reference for MFU, as `train()` measures it).
2. `smoke`: a tiny model trained for a few steps through `train()` and sampled;
   the run stops with a message (exit 1) if anything fails or the loss is not finite.
3. `train`: tokens/s and MFU for llama-15m, neo-33m and llama-110m in bf16:
   ours through `tinystories.train.train()` (compiled unless --no-compile;
   tokens/s is the median of its logged intervals after the first, which holds
   the compilation), and transformers' `LlamaForCausalLM` / `GPTNeoForCausalLM`
   built from the same config (`tinystories.convert.hf`), SDPA attention, the
   same batch, fused AdamW, bf16 autocast, eager (no compile).
4. `sample`: new tokens/s for llama-15m (bf16 weights on a GPU) at 1 and 64
   streams, ours (`tinystories.sample.generate`) beside transformers' `generate`,
   temperature 1 from a one-token prompt.

`--tiny` (or GPU_BENCH_TINY=1) shrinks every case to a few seconds on a CPU, to
check the script end to end where no GPU is at hand.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinystories import rundir
from tinystories.convert import hf as convert
from tinystories.data.shards import FORMAT, token_dtype
from tinystories.flops import flops_per_token
from tinystories.model import GPT
from tinystories.presets import preset
from tinystories.sample import SampleParams, generate
from tinystories.train import TrainConfig, compute_dtype, peak_flops, train

T_START = time.perf_counter()
EOT = "<|endoftext|>"


def emit(row: dict[str, Any]) -> None:
    """Print one JSON line (flushed) and append it to $OUT/gpu.jsonl when $OUT is set."""
    row = {"t": round(time.perf_counter() - T_START, 1), **row}
    line = json.dumps(row)
    print(line, flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(Path(out) / "gpu.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- a dataset folder of random tokens --------------------------------------------


def random_dataset(folder: Path, vocab_size: int, n_tokens: int, seed: int = 0) -> Path:
    """A dataset folder (the `tokenize` layout) of uniform random tokens and a word-level tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {EOT: 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    tok_json = Tokenizer(WordLevel(vocab, unk_token=EOT)).to_str()
    (folder / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    dtype = token_dtype(vocab_size)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab_size, n_tokens, dtype=np.int64)
    doc = 1000
    tokens[::doc] = 0  # a story every 1000 tokens, each led by end-of-text
    tokens.astype(dtype).tofile(folder / "train_0000.bin")
    index = np.append(np.arange(0, n_tokens, doc), n_tokens).astype(np.int64)
    np.save(folder / "train_index.npy", index)
    meta = {
        "format": FORMAT, "vocab_size": vocab_size, "eot_id": 0, "dtype": dtype.name,
        "tokenizer_sha256": hashlib.sha256(tok_json.encode()).hexdigest(),
        "content_hash": f"random-{vocab_size}-{n_tokens}-{seed}",
        "splits": {"train": {"shards": ["train_0000.bin"], "tokens": n_tokens, "documents": len(index) - 1,
                             "bytes": n_tokens * 4}},
        "bytes_per_token": 4.0, "sources": [], "val_fraction": 0.0, "seed": seed, "prune": None,
    }
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


# --- training ---------------------------------------------------------------------


def ours_train(name: str, data: Path, work: Path, batch: int, seq: int, seconds: float, device: torch.device,
               compile_: bool, overrides: dict | None = None) -> dict[str, Any]:
    """Tokens/s and MFU of `train()` itself: the median of its logged intervals after the first."""
    run = work / f"run-{name}-{time.monotonic_ns()}"
    cfg = TrainConfig(
        data=str(data), run=str(run), preset=name.split("/")[0], seq_len=seq, batch_size=batch, schedule="constant",
        warmup=0, time=seconds, log_interval=5, eval_interval=0, ckpt_interval=0, keep_ckpts=1, progress=False,
        device=str(device), dtype="bfloat16", compile=compile_,
    )
    if compile_:
        torch._dynamo.reset()  # each model compiles afresh, not counted against the last one's recompile limit
    summary = train(cfg, overrides or {})
    assert summary is not None
    rows = [json.loads(line) for line in (run / rundir.METRICS_FILE).read_text().splitlines()]
    steady = rows[1:-1] if len(rows) > 2 else rows[-1:]  # the first holds compilation, the last may be partial
    out = {
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)),
        "mfu": round(statistics.median(r["mfu"] for r in steady), 4) if all("mfu" in r for r in steady) else None,
        "steps": summary["step"], "loss": summary["loss"], "intervals": len(steady), "params": summary["params"],
        "first_interval_s": rows[0]["elapsed_s"],  # compilation and warm-up
    }
    if len(rows) <= 2:
        out["note"] = "too few logged intervals after the first (compilation or warm-up took most of the time budget)"
    if not math.isfinite(summary["loss"]):
        raise RuntimeError(f"{name}: training loss is {summary['loss']}")
    return out


def hf_model(model_cfg: Any) -> torch.nn.Module:
    """transformers' model for our config (the mapping `tinystories convert` uses), with SDPA where it has it."""
    from transformers import AutoModelForCausalLM

    family = "llama" if model_cfg.pos == "rope" else "neo"
    hf_cfg = convert.llama_config_to_hf(model_cfg) if family == "llama" else convert.neo_config_to_hf(model_cfg)
    try:
        return AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa")
    except (ValueError, ImportError):  # an architecture without SDPA in this transformers version (GPT-Neo)
        return AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager")


def hf_train(model_cfg: Any, batch: int, seq: int, seconds: float, device: torch.device, peak: float | None,
             flops_per_token: float) -> dict[str, Any]:
    """transformers' model through a plain bf16-autocast loop: the same batch size, AdamW and clipping."""
    torch.manual_seed(0)
    model = hf_model(model_cfg).to(device).train()
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.95), weight_decay=0.1, **fused)
    x = torch.randint(1, model_cfg.vocab_size, (batch, seq + 1), device=device)
    inputs, labels = x[:, :-1], x[:, 1:]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step() -> torch.Tensor:
        with autocast:
            logits = model(input_ids=inputs).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(3):
        loss = step()
    sync(device)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(5):  # a host check every 5 steps, no read-back inside
            loss = step()
        steps += 5
    sync(device)
    dt = time.perf_counter() - t0
    tps = steps * batch * seq / dt
    if not math.isfinite(float(loss)):
        raise RuntimeError(f"transformers training loss is {float(loss)}")
    return {"tokens_per_s": round(tps), "mfu": round(tps * flops_per_token / peak, 4) if peak else None,
            "steps": steps, "loss": float(loss), "attention": model.config._attn_implementation}


# --- sampling ---------------------------------------------------------------------


def sample_rates(model: GPT, streams: int, tokens: int, seconds: float, device: torch.device) -> dict[str, Any]:
    """New tokens/s of ours and of transformers' generate, temperature 1, one-token prompts, interleaved rounds."""
    hf = hf_model(model.config)
    hf.load_state_dict(convert.llama_state_dict_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()},
                                                      model.config), strict=False)
    hf.tie_weights()
    hf = hf.to(device=device, dtype=next(model.parameters()).dtype).eval()
    params = SampleParams(temperature=1.0, max_new_tokens=tokens, seed=0, stop_at_eot=False)

    def ours() -> int:
        out = generate(model, [[1]] * streams, params, max_batch=streams)
        return sum(len(r) for r in out)

    @torch.inference_mode()
    def theirs() -> int:
        ids = torch.ones(streams, 1, dtype=torch.long, device=device)
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                          temperature=1.0, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0,
                          eos_token_id=None)
        return (out.shape[1] - 1) * streams

    rates: dict[str, list[float]] = {"ours": [], "transformers": []}
    sides = {"ours": ours, "transformers": theirs}
    for fn in sides.values():
        fn()  # warm-up: kernels, caches, allocator
    t0, rnd = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or rnd < 1:
        for name in (list(sides) if rnd % 2 == 0 else list(sides)[::-1]):
            sync(device)
            t = time.perf_counter()
            n = sides[name]()
            sync(device)
            rates[name].append(n / (time.perf_counter() - t))
        rnd += 1
    ours_tps, hf_tps = max(rates["ours"]), max(rates["transformers"])
    return {"ours_tokens_per_s": round(ours_tps, 1), "transformers_tokens_per_s": round(hf_tps, 1),
            "ratio": round(ours_tps / hf_tps, 2), "rounds": rnd, "new_tokens": tokens}


# --- the run ----------------------------------------------------------------------


def smoke(work: Path, device: torch.device) -> None:
    """A tiny model trained a few steps through train() and sampled: the GPU path works at all."""
    data = random_dataset(work / "smoke-data", 512, 200_000)
    tiny = {"d_model": 64, "n_layer": 2, "n_head": 4, "max_seq_len": 128}
    for dtype in ("auto", "float16") if device.type == "cuda" else ("auto",):
        run = work / f"smoke-{dtype}"
        summary = train(TrainConfig(data=str(data), run=str(run), preset="llama-260k", seq_len=128, batch_size=16,
                                    max_steps=20, log_interval=5, eval_interval=0, progress=False,
                                    device=str(device), dtype=dtype), tiny)
        assert summary is not None and math.isfinite(summary["loss"]), f"smoke {dtype}: loss {summary}"
        assert summary["loss"] < math.log(512) + 0.5, f"smoke {dtype}: loss {summary['loss']} is not a language model's"
    loaded = rundir.load_run(run, device=device)
    out = generate(loaded.model, [[0]] * 4, SampleParams(temperature=1.0, max_new_tokens=16, seed=0,
                                                         stop_at_eot=False), max_batch=4)
    assert [len(r) for r in out] == [16] * 4, out
    emit({"case": "smoke", "ok": True, "loss": summary["loss"], "tokens_per_s": summary["tokens_per_s"],
          "dtypes": ["auto", "float16"] if device.type == "cuda" else ["auto"]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_BENCH_TINY") == "1",
                    help="a few seconds per case, tiny models: checks the script on a CPU")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="train ours eagerly (default: torch.compile, as `train --compile`)")
    ap.add_argument("--seconds", type=float, default=None, help="measuring time per side and case")
    ap.add_argument("--budget", type=float, default=225.0, help="skip cases that would start after this many seconds")
    ap.add_argument("--phase", choices=("all", "smoke", "measure"), default="all",
                    help="smoke: only the smoke phase; measure: skip it (gpu.sh runs them as two processes)")
    args = ap.parse_args()
    device = rundir.resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seconds = args.seconds or (2.0 if args.tiny else 8.0)
    compile_ = args.compile and not args.tiny
    import transformers

    if args.phase != "measure":
        emit({"case": "env", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
              "tiny": args.tiny, "compile": compile_, "bf16_supported": compute_dtype("auto", device) == torch.bfloat16})
    peak = peak_flops(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.phase != "smoke":
        emit({"case": "peak", "dtype": "bfloat16" if device.type == "cuda" else "float32",
              "tflops": round(peak / 1e12, 2) if peak else None})

    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    if args.phase in ("all", "smoke"):
        try:
            smoke(work, device)
        except Exception as e:
            traceback.print_exc()
            emit({"case": "smoke", "ok": False, "error": f"{type(e).__name__}: {e}"})
            sys.exit(f"gpu_bench: the smoke phase failed ({type(e).__name__}: {e}); nothing else was measured")
        if args.phase == "smoke":
            return

    # (preset, batch, seq, our time budget incl. compilation); the most telling first, should time run out.
    tiny = {"d_model": 64, "n_layer": 2, "n_head": 4} if args.tiny else {}
    cases = [("neo-33m", 64, 512, 30.0), ("llama-15m", 128, 256, 25.0), ("llama-110m", 32, 1024, 40.0)]
    if args.tiny:
        cases = [(n, 4, 64, 4.0) for n, *_ in cases]
    datasets: dict[int, Path] = {}

    def train_case(name: str, batch: int, seq: int, ours_time: float) -> None:
        model_cfg = preset(name, **tiny)
        vocab = model_cfg.vocab_size
        if vocab not in datasets:
            datasets[vocab] = random_dataset(work / f"data-{vocab}", vocab, max(4_000_000, 64 * batch * (seq + 1)))
        flops = flops_per_token(model_cfg, seq)
        row: dict[str, Any] = {"case": "train", "model": name, "batch": batch, "seq_len": seq, "dtype": "bfloat16",
                               "compile": compile_}
        try:
            row["ours"] = ours_train(name, datasets[vocab], work, batch, seq, ours_time, device, compile_, tiny)
        except Exception as e:
            traceback.print_exc()
            row["ours"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            if compile_:  # e.g. no C compiler for inductor: still measure the eager loop
                try:
                    row["ours"] = {**ours_train(name, datasets[vocab], work, batch, seq, min(ours_time, 15.0), device,
                                                False, tiny), "compile_error": row["ours"]["error"]}
                except Exception as e2:
                    traceback.print_exc()
                    row["ours"]["eager_error"] = f"{type(e2).__name__}: {str(e2)[:300]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            row["transformers"] = hf_train(model_cfg, batch, seq, seconds, device, peak, flops)
        except Exception as e:
            traceback.print_exc()
            row["transformers"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        ours_tps, hf_tps = row["ours"].get("tokens_per_s"), row["transformers"].get("tokens_per_s")
        if ours_tps and hf_tps:
            row["ratio"] = round(ours_tps / hf_tps, 2)
        emit(row)

    def sample_case(streams: int) -> None:
        torch.manual_seed(0)
        model = GPT(preset("llama-15m", **tiny)).to(device).eval()
        if device.type == "cuda":
            model = model.to(torch.bfloat16)
        row: dict[str, Any] = {"case": "sample", "model": "llama-15m", "streams": streams,
                               "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
        try:
            row.update(sample_rates(model, streams, 16 if args.tiny else 128, seconds, device))
        except Exception as e:
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        emit(row)

    plan = [(lambda c=c: train_case(*c), c[3] + seconds + 10) for c in cases[:2]]
    plan += [(lambda: sample_case(64), 2 * seconds + 10), (lambda: sample_case(1), 2 * seconds + 10)]
    plan += [(lambda: train_case(*cases[2]), cases[2][3] + seconds + 15)]
    for fn, needs in plan:
        left = args.budget - (time.perf_counter() - T_START)
        if left < needs and not args.tiny:
            emit({"case": "skipped", "reason": f"{left:.0f} s left of the {args.budget:.0f} s budget, "
                                               f"the next case needs ~{needs:.0f} s"})
            continue
        fn()
    emit({"case": "done", "seconds": round(time.perf_counter() - T_START, 1)})
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(work)


if __name__ == "__main__":
    main()
