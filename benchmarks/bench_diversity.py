"""The corpus-wide diversity measures on 1,000,000 procedural stories: index build, k-gram rates, nearest story.

The corpus is written once by the procedural engine (seed 0) to a cache file
(not timed; about 5 minutes on one core) and read back like any story file.
Timed, in one process: reading the corpus and building the index (measure 3's
k-gram counts for k = 2..5 and measure 4's posting lists for k = 2, 3), then
the corpus-wide measures for 100 completions: each distinct generated k-gram's
corpus frequency (measure 3) and each completion's closest training story by
Rouge-2 and Rouge-3 precision (measure 4), plus the same on the 100 true
continuations with their own story left out (the command's reference), then
saving the index and answering again from the memory-mapped copy. The
memory figure held against the target is the process's peak resident memory
up to the end of the measures (what the command needs, sampling aside); the
whole script's peak, with the saved copy's pages mapped in, is reported too. The completions are stand-
ins that a model trained on this corpus would write: the last 60% of 100
procedural stories from another seed (the measures' cost depends on how many
k-grams a text shares with the corpus, not on who wrote it).

A brute-force check: rouge-score's RougeScorer against every story of a
subset (default 2,000 stories) for a few completions; the index built on the
same subset must give the same closest stories, and the per-pair time,
scaled to the full corpus, is the brute-force estimate beside the index.

    .venv/bin/python benchmarks/bench_diversity.py [--stories 1000000] [--cache /tmp/tinystories-bench]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinystories.data.stories import iter_stories
from tinystories.eval.corpus import CorpusIndex, open_corpus
from tinystories.eval.diversity import cut_story, measure, pick_stories
from tinystories.io import atomic_write_json
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.procedural import story_record

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "diversity.json"


def corpus_file(cache: Path, n: int, seed: int = 0) -> Path:
    """The procedural corpus as a TinyStories .txt file, written once (atomically) and reused."""
    path = cache / f"procedural-{n}-seed{seed}.txt"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    lex = load_lexicon()
    t = time.perf_counter()
    tmp = path.with_suffix(".part")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(story_record(seed, i, lex)["story"])
            f.write("\n<|endoftext|>\n")
            if i and i % 100_000 == 0:
                print(f"  wrote {i:,} stories in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    os.replace(tmp, path)
    return path


def rss_gib() -> float:
    """Current resident memory of this process."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 2**20


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def index_gib(index: CorpusIndex) -> float:
    arrays = [index.lengths] + [a for c in index.counts.values() for a in c]
    arrays += [getattr(p, f) for p in index.postings.values() for f in ("keys", "offsets", "docs", "tf")]
    return sum(a.nbytes for a in arrays) / 2**30


def brute_force(corpus: list[str], queries: list[str]) -> dict[str, Any]:
    """rouge-score against every story of `corpus`, and the index on the same stories: same answers?"""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge2"])
    t = time.perf_counter()
    best = []
    for q in queries:
        ps = [scorer.score(s, q)["rouge2"].precision for s in corpus]
        best.append((int(np.argmax(ps)), max(ps)))
    per_pair = (time.perf_counter() - t) / (len(queries) * len(corpus))
    index = CorpusIndex.build(corpus)
    found = [index.closest(q, 2)[:2] for q in queries]
    return {"stories": len(corpus), "queries": len(queries), "seconds_per_pair": per_pair,
            "index_agrees": found == best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stories", type=int, default=1_000_000)
    ap.add_argument("--completions", type=int, default=100)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tinystories-bench"))
    ap.add_argument("--brute-stories", type=int, default=2000)
    ap.add_argument("--brute-queries", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    path = corpus_file(args.cache, args.stories)
    lex = load_lexicon()
    completions = [cut_story(story_record(1, i, lex)["story"], 0.4)[1] for i in range(args.completions)]
    load_before = os.getloadavg()
    rss_start = rss_gib()
    print(f"corpus {path} ({path.stat().st_size / 2**20:,.0f} MiB); load {load_before[0]:.1f}", file=sys.stderr)

    t = time.perf_counter()
    corpus = open_corpus([str(path)])  # hashes the file: the index's fingerprint
    hash_s = time.perf_counter() - t
    t = time.perf_counter()
    index = CorpusIndex.build(corpus.stories())
    build_s = time.perf_counter() - t
    rss_built = rss_gib()
    print(f"index: {index.n_stories:,} stories in {build_s:.0f} s, peak {peak_gib():.2f} GiB", file=sys.stderr)

    # The command's picks: seeded stories of the corpus, cut at 40% (reading them back is timed too).
    t = time.perf_counter()
    picked = pick_stories(corpus, index.n_stories, args.completions, 1234)
    picked = [(i, s) for i, s in picked if len(s.split()) >= 20][: args.completions]
    pick_s = time.perf_counter() - t
    originals = [cut_story(s, 0.4)[1] for _, s in picked]
    t = time.perf_counter()
    result = measure(index, completions, originals, [i for i, _ in picked], [s for _, s in picked])
    measure_s = time.perf_counter() - t
    timings = result["timings"]
    peak_command = peak_gib()  # everything the command does, but sampling
    print(f"measures: {measure_s:.1f} s {timings}", file=sys.stderr)

    # The same from a saved, memory-mapped index (what a second run of the command does).
    folder = args.cache / f"index-{args.stories}"
    t = time.perf_counter()
    index.save(folder)
    save_s = time.perf_counter() - t
    n_stories, n_words, in_memory = index.n_stories, index.n_words, index_gib(index)
    counts = {str(k): len(c[0]) for k, c in index.counts.items()}
    postings = {str(k): len(p.docs) for k, p in index.postings.items()}
    del index  # the mapped copy's pages count as resident memory too; keep one copy
    t = time.perf_counter()
    mapped = CorpusIndex.load(folder)
    again = measure(mapped, completions, originals, [i for i, _ in picked], [s for _, s in picked])
    mapped_s = time.perf_counter() - t
    same = again["closest_training_story"] == result["closest_training_story"]
    disk = sum(f.stat().st_size for f in folder.iterdir()) / 2**30

    stories = list(itertools.islice(iter_stories(path), args.brute_stories))
    brute = brute_force(stories, completions[: args.brute_queries])
    brute_full_s = brute["seconds_per_pair"] * n_stories * args.completions * 2  # Rouge-2 and Rouge-3
    corpus_s = timings["kgrams_s"] + timings["closest_s"]
    total_s = hash_s + build_s + pick_s + measure_s

    out = {
        "corpus": {"file": str(path), "stories": n_stories, "words": n_words,
                   "mib": round(path.stat().st_size / 2**20, 1), "distinct_kgrams": counts, "postings": postings},
        "completions": len(completions),
        "seconds": {
            "hash_corpus_file": round(hash_s, 1),
            "read_and_build_index": round(build_s, 1),
            "pick_and_cut_stories": round(pick_s, 1),
            "kgram_frequencies_100": round(timings["kgrams_s"], 2),
            "closest_story_100_rouge2_rouge3": round(timings["closest_s"], 2),
            "reference_closest_100": round(timings["closest_reference_s"], 2),
            "all_measures": round(measure_s, 1),
            "total": round(total_s, 1),
            "save_index": round(save_s, 1),
            "measures_from_saved_index": round(mapped_s, 1),
        },
        "memory_gib": {"peak_rss": round(peak_command, 2), "peak_rss_whole_script": round(peak_gib(), 2),
                       "rss_after_build": round(rss_built, 2), "rss_at_start": round(rss_start, 2),
                       "index_arrays": round(in_memory, 2), "index_on_disk": round(disk, 2)},
        "saved_index_same_answers": same,
        "brute_force": {**brute, "estimate_full_corpus_s": round(brute_full_s),
                        "speedup_of_corpus_measures": round(brute_full_s / max(corpus_s, 1e-9))},
        "figures": {
            "kgrams_never_share": {k: v["never_share"] for k, v in result["kgrams_in_corpus"].items()
                                   if k.isdigit()},
            "closest_rouge2_mean": result["closest_training_story"]["rouge2"]["mean"],
            "closest_rouge3_mean": result["closest_training_story"]["rouge3"]["mean"],
        },
        "targets": {"total_s": 600, "peak_rss_gib": 8},
        "met": total_s < 600 and peak_command < 8,
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "numpy": np.__version__},
    }
    atomic_write_json(args.out, out)
    s = out["seconds"]
    m = out["memory_gib"]
    print(f"""
| stories | build index | k-gram rates (100) | closest story (100 x 2) | total | peak RSS | index | brute force (est.) |
|---:|---:|---:|---:|---:|---:|---:|---:|
| {n_stories:,} | {s['read_and_build_index']} s | {s['kgram_frequencies_100']} s | {s['closest_story_100_rouge2_rouge3']} s | {s['total']} s | {m['peak_rss']} GiB | {m['index_arrays']} GiB | {brute_full_s / 3600:,.1f} h |
""")


if __name__ == "__main__":
    main()
