"""LLM synth throughput: a fake OpenAI-compatible server in its own process, our job at concurrency 256.

The server (`tests/fake_llm_server.py`) answers every request after 1 s with
a ~1 KB body that includes `usage`, so the ceiling is concurrency / 1 s =
256 stories/s. The job is the real `synth()` path: plan, cache lookup,
budget reservation, the openai SDK over HTTP, checks, cache write and the
append-only shard write. Targets: stories/s >= 90% of 256/s, and the
pipeline's own CPU time per story (this process only: the server runs in
another) < 2 ms. Near-duplicate removal is a separate pass over the whole
corpus and is timed on its own. Writes benchmarks/results/synth.json.

    .venv/bin/python benchmarks/bench_synth.py [--n 5120] [--concurrency 256] [--delay 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tinystories.io import atomic_write_json
from tinystories.synth.checks import near_duplicates
from tinystories.synth.generate import SynthConfig, synth

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "synth.json"


def cpu_seconds() -> float:
    """User + system CPU of this process (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5120, help="stories in the timed job (20 rounds of 256)")
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--delay", type=float, default=1.0, help="seconds the server takes per answer")
    args = ap.parse_args()

    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_llm_server.py"), "--delay", str(args.delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        port = int(line.split()[1])
        url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            # Warm-up: imports, the lexicon, the SDK's first connection.
            synth(SynthConfig(n=8, out=f"{tmp}/warm", model="gpt-4o-mini", base_url=url, progress=False))
            cfg = SynthConfig(
                n=args.n,
                out=f"{tmp}/job",
                model="gpt-4o-mini",
                base_url=url,
                concurrency=args.concurrency,
                progress=False,
            )
            c0, t0 = cpu_seconds(), time.perf_counter()
            res = synth(cfg)
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            recs = [json.loads(x) for x in Path(res["jsonl"]).read_text().splitlines()]
            stories = [r["story"] for r in recs]
            d0, dt0 = cpu_seconds(), time.perf_counter()
            dups = near_duplicates(stories)
            dedup_cpu, dedup_wall = cpu_seconds() - d0, time.perf_counter() - dt0
    finally:
        server.terminate()
        server.wait()

    n = res["stories"]
    ceiling = args.concurrency / args.delay
    rate = n / wall
    result = {
        "stories": n,
        "concurrency": args.concurrency,
        "server_delay_s": args.delay,
        "mean_record_bytes": round(sum(len(json.dumps(r)) for r in recs) / n),
        "seconds": round(wall, 2),
        "stories_per_s": round(rate, 1),
        "ceiling_stories_per_s": ceiling,
        "share_of_ceiling": round(rate / ceiling, 3),
        "target_share": 0.9,
        "pipeline_cpu_ms_per_story": round(cpu * 1000 / n, 3),
        "target_cpu_ms_per_story": 2.0,
        "dedup_cpu_ms_per_story": round(dedup_cpu * 1000 / n, 3),
        "dedup_seconds": round(dedup_wall, 2),
        "near_duplicates_found": len(dups),
        "spent_usd_at_gpt-4o-mini_prices": res["spent_usd"],
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
    }
    atomic_write_json(RESULTS, result)
    print("| measure | value | target |\n|---|---:|---:|")
    print(f"| stories/s at concurrency {args.concurrency}, {args.delay:g} s answers | {rate:.1f} "
          f"({rate / ceiling:.1%} of {ceiling:g}) | >= 90% |")  # fmt: skip
    print(f"| pipeline CPU per story | {cpu * 1000 / n:.3f} ms | < 2 ms |")
    print(f"| near-duplicate pass, CPU per story | {dedup_cpu * 1000 / n:.3f} ms | (separate) |")


if __name__ == "__main__":
    main()
