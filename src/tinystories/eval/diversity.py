"""`tinystories eval diversity`: memorization and diversity, the paper's four measures (§4.4).

A sample of `n` training stories is cut after about 40% of their words; the
run's model completes each beginning. With T_i the i-th completion, T'_i the
true rest of that story and S the training corpus:

1. completion vs original: s_i = Rouge-2 precision of T_i against T'_i
   (paper Figure 14); high values mean the model recites the story it saw.
2. between generations: r_i = max over j != i of the Rouge-2 F-measure of T_i
   and T_j (Figure 15); high values mean the completions resemble each other.
3. k-grams in the corpus: for each distinct k-gram r of the completions
   (k = 2..5), g_r = occurrences of r among S's k-grams / number of S's k-grams,
   shown as log10 g_r with -10 for "never" (Figure 16).
4. closest training story: h_i = max over stories S_j of the Rouge-k precision
   of T_i against S_j, k = 2 and 3 (Figure 17).

Beside the model, a reference: the same measures on the true continuations
T'_i (measure 3 counts in the corpus without the picked stories, measure 4
leaves out the story each continuation comes from; else every continuation
would trivially be found in the corpus). It shows what the training text
itself scores.

Words and counts are those of the `rouge-score` package with its defaults:
lowercase, runs of [a-z0-9] are the words (anything else separates them), no
stemming; n-grams are counted with multiplicity and the overlap is clipped
(an n-gram seen twice in T_i and once in S_j counts once). Precision is
overlap / n-grams of the prediction (0 when it has none).

Measures 3 and 4 look at every training story through a `CorpusIndex` (`corpus.py`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinystories.config import check
from tinystories.errors import UserError
from tinystories.eval.corpus import (
    CLOSEST_ORDERS,
    ORDERS,
    Corpus,
    CorpusIndex,
    corpus_index,
    gram_hashes,
    lookup,
    open_corpus,
)
from tinystories.eval.rouge import most_similar, rouge_n, words
from tinystories.io import atomic_save, atomic_write_json
from tinystories.options import RunOptions, SamplingOptions
from tinystories.rundir import config_dict, load_run, with_device
from tinystories.sample import SampleParams, complete, prompt_ids

NEVER = -10.0
"""log10 frequency shown for a k-gram that never occurs in the corpus (as in the paper's Figure 16)."""



@dataclass
class DiversityConfig(SamplingOptions, RunOptions):
    """`tinystories eval diversity`: memorization and diversity of a run's completions (the paper's §4.4)."""

    run: str = field(default="", metadata={"required": True})
    data: tuple[str, ...] = ()
    """Training corpus: story files (.txt, .jsonl, .json, .parquet, globs, folders, hf:) or a dataset folder; default: the run's dataset."""
    split: str = "train"
    """Split of a dataset folder to use as the corpus."""
    n: int = field(default=100, metadata={"min": 2})
    """Training stories to cut and complete (the paper used 100; at least 2, as measure 2 compares them with each other)."""
    cut: float = 0.4
    """Share of a story's words kept as the prompt (the paper: roughly the first 40%)."""
    min_words: int = field(default=20, metadata={"min": 4})
    """Stories with fewer words are not picked for cutting."""
    max_new_tokens: int = 300
    seed: int = 1234
    """Seed that picks the stories; completion i is sampled with seed + i."""
    max_stories: int = 0
    """Use only the first this many corpus stories (0 = all)."""
    index: str | None = None
    """Folder to keep the corpus index in and reuse on later runs (default: build it in memory each time)."""
    batch: int = field(default=64, metadata={"min": 1})
    """Sequences decoded together at most."""
    bins: int = field(default=40, metadata={"min": 1})
    """Histogram bins over [0, 1] for the Rouge measures (the k-gram frequencies use 0.5-wide bins of log10)."""
    plot: bool = True
    """Also draw the histograms into eval/diversity.png (needs matplotlib, the [report] extra)."""
    write: bool = True
    """Write eval/diversity.json in the run folder."""


# --- cutting stories -----------------------------------------------------------------------------


def cut_story(story: str, share: float) -> tuple[str, str]:
    """(beginning, rest): the first round(share x words) whitespace-separated words, and what follows."""
    spans = [m.end() for m in re.finditer(r"\S+", story)]
    if not spans:
        return "", ""
    end = spans[max(1, min(len(spans) - 1, round(share * len(spans)))) - 1]
    return story[:end], story[end:].strip()


def pick_stories(corpus: Corpus, n_stories: int, n: int, seed: int) -> list[tuple[int, str]]:
    """Up to 4n (story id, text) candidates in a seeded random order; the caller keeps the first n that fit."""
    rng = np.random.default_rng(seed)
    order = rng.choice(n_stories, size=min(n_stories, 4 * n), replace=False)
    wanted = {int(i) for i in order}
    found: dict[int, str] = {}
    for i, story in enumerate(corpus.stories()):
        if i in wanted:
            found[i] = story
            if len(found) == len(wanted):
                break
    return [(int(i), found[int(i)]) for i in order if int(i) in found]


# --- the four measures ---------------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return {"n": 0}
    q = np.quantile(a, [0.1, 0.5, 0.9])
    return {"n": len(a), "mean": float(a.mean()), "p10": float(q[0]), "median": float(q[1]),
            "p90": float(q[2]), "max": float(a.max())}


def histogram(values: Sequence[float] | np.ndarray, lo: float, hi: float, bins: int) -> dict[str, Any]:
    """Counts of `values` in `bins` equal bins over [lo, hi] (the last bin includes hi)."""
    counts, edges = np.histogram(np.clip(np.asarray(values, dtype=np.float64), lo, hi), bins=bins, range=(lo, hi))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def kgram_frequencies(index: CorpusIndex, texts: Sequence[str], k: int,
                      leave_out: Sequence[str] = ()) -> np.ndarray:
    """log10 corpus frequency of each distinct k-gram of `texts` (NEVER where it does not occur), (G,).

    `leave_out`: stories whose k-grams are taken out of the counts first (the
    reference measures training text against the rest of the corpus).
    """
    hashes = [gram_hashes(index.encode(t), k) for t in texts]
    if not any(len(h) for h in hashes):
        return np.zeros(0)
    distinct = np.unique(np.concatenate(hashes))
    occ = index.occurrences(k, distinct)
    if leave_out:
        own, n_own = np.unique(np.concatenate([gram_hashes(index.encode(t), k) for t in leave_out]),
                               return_counts=True)
        occ = occ - lookup(own, distinct, n_own)
        total = index.total(k) - sum(max(0, len(words(t)) - k + 1) for t in leave_out)
    else:
        total = index.total(k)
    with np.errstate(divide="ignore"):
        logf = np.where(occ > 0, np.log10(np.maximum(occ, 1) / max(total, 1)), NEVER)
    return np.maximum(logf, NEVER)


def _kgram_block(logf: np.ndarray) -> dict[str, Any]:
    never = int((logf <= NEVER).sum())
    return {
        "distinct": len(logf),
        "never": never,
        "never_share": never / len(logf) if len(logf) else None,
        "median_log10": float(np.median(logf)) if len(logf) else None,
        "histogram": histogram(logf, NEVER, 0.0, 20),
    }


def measure(
    index: CorpusIndex,
    completions: Sequence[str],
    originals: Sequence[str],
    sources: Sequence[int],
    source_texts: Sequence[str],
    bins: int = 40,
) -> dict[str, Any]:
    """The four measures for completions of cut corpus stories, beside the same on the true continuations.

    `originals[i]` is the true rest of story `sources[i]` (whose whole text is
    `source_texts[i]`), which `completions[i]` continues.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    s = [rouge_n(c, o, 2).precision for c, o in zip(completions, originals)]
    r, r_with = most_similar(completions, 2)
    r_ref, _ = most_similar(originals, 2)
    timings["rouge_s"] = time.perf_counter() - t

    t = time.perf_counter()
    kgrams: dict[str, Any] = {}
    for k in ORDERS:
        if k not in index.counts:
            continue
        kgrams[str(k)] = {
            **_kgram_block(kgram_frequencies(index, completions, k)),
            "reference": _kgram_block(kgram_frequencies(index, originals, k, leave_out=source_texts)),
        }
    timings["kgrams_s"] = time.perf_counter() - t

    t = time.perf_counter()
    closest: dict[int, list[tuple[int, float, int]]] = {}
    closest_ref: dict[int, list[tuple[int, float, int]]] = {}
    for k in CLOSEST_ORDERS:
        if k in index.postings:
            closest[k] = [index.closest(c, k) for c in completions]
    timings["closest_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for k in closest:
        closest_ref[k] = [index.closest(o, k, exclude=src) for o, src in zip(originals, sources)]
    timings["closest_reference_s"] = time.perf_counter() - t

    def block(values: Sequence[float], ref: Sequence[float] | None = None) -> dict[str, Any]:
        out = {**_summary(values), "histogram": histogram(values, 0.0, 1.0, bins)}
        if ref is not None:
            out["reference"] = {**_summary(ref), "histogram": histogram(ref, 0.0, 1.0, bins)}
        return out

    items = []
    for i, src in enumerate(sources):
        item: dict[str, Any] = {
            "story": src,
            "completion_vs_original": s[i],
            "most_similar_generation": {"index": r_with[i], "rouge2_f": r[i]},
            "reference_most_similar": r_ref[i],
        }
        for k, found in closest.items():
            story, p, _ = found[i]
            item[f"closest_rouge{k}"] = {"story": story, "precision": p, "is_source": story == src}
            item[f"reference_closest_rouge{k}"] = {"story": closest_ref[k][i][0], "precision": closest_ref[k][i][1]}
        items.append(item)

    return {
        "completion_vs_original": {
            "measure": "s_i: Rouge-2 precision of completion i against the true continuation (paper Fig. 14)",
            **block(s),
        },
        "between_generations": {
            "measure": "r_i: highest Rouge-2 F-measure of completion i with any other completion (paper Fig. 15); "
            "reference: the same among the true continuations",
            **block(r, r_ref),
        },
        "kgrams_in_corpus": {
            "measure": "log10(occurrences among the corpus's k-grams / number of corpus k-grams) of each distinct "
            f"k-gram of the completions, {NEVER:g} = never (paper Fig. 16); reference: the true continuations "
            "against the corpus without the picked stories",
            "total": {str(k): index.total(k) for k in ORDERS if k in index.counts},
            **kgrams,
        },
        "closest_training_story": {
            "measure": "h_i: highest Rouge-k precision of completion i against any corpus story, k = 2, 3 "
            "(paper Fig. 17); reference: each true continuation against every story but its own",
            **{
                f"rouge{k}": {
                    **block([p for _, p, _ in closest[k]], [p for _, p, _ in closest_ref[k]]),
                    "closest_is_source": sum(it[f"closest_rouge{k}"]["is_source"] for it in items),
                }
                for k in closest
            },
        },
        "items": items,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


# --- the histograms as a picture ------------------------------------------------------------------


def plot(result: dict[str, Any], path: str | os.PathLike, title: str = "") -> bool:
    """Draw the paper's Figures 14-17 from `result` into a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))

    def bars(ax: Any, hist: dict[str, Any], label: str, color: str, alpha: float = 0.8) -> None:
        edges = np.asarray(hist["edges"])
        ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color=color, alpha=alpha,
               label=label, edgecolor="none")

    top = [
        (result["completion_vs_original"], "Rouge-2 precision vs. original continuation (Fig. 14)"),
        (result["between_generations"], "max Rouge-2 F vs. other completions (Fig. 15)"),
    ]
    closest = result["closest_training_story"]
    top += [(closest[f"rouge{k}"], f"max Rouge-{k} precision vs. any training story (Fig. 17)")
            for k in CLOSEST_ORDERS if f"rouge{k}" in closest]
    for ax, (block, name) in zip(axes[0], top):
        bars(ax, block["histogram"], "model", "tab:blue")
        if "reference" in block:
            bars(ax, block["reference"]["histogram"], "training text", "tab:orange", 0.5)
            ax.legend(fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylabel("stories")
    for ax, k in zip(axes[1], ORDERS):
        block = result["kgrams_in_corpus"].get(str(k))
        if block is None:
            ax.axis("off")
            continue
        bars(ax, block["histogram"], "model", "tab:blue")
        bars(ax, block["reference"]["histogram"], "training text", "tab:orange", 0.5)
        ax.set_title(f"{k}-grams: log10 corpus frequency (Fig. 16; {NEVER:g} = never)", fontsize=9)
        ax.set_xlim(NEVER, 0)
        ax.set_ylabel("distinct k-grams")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
    return True


# --- the command ----------------------------------------------------------------------------------


def _check(cfg: DiversityConfig) -> None:
    check(cfg)
    if not 0.0 < cfg.cut < 1.0:
        raise UserError(f"--cut must be between 0 and 1, got {cfg.cut}")


def evaluate_diversity(cfg: DiversityConfig) -> dict[str, Any]:
    """Cut n training stories, complete them with the run's model, and measure; writes eval/diversity.json."""
    cfg = with_device(cfg)
    _check(cfg)
    params = SampleParams(cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens, seed=cfg.seed)
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    model, tok = loaded.model, loaded.tokenizer
    data = list(cfg.data)
    if not data:
        default = loaded.config.data.get("path")
        if not default:
            raise UserError(f"no --data given and run {cfg.run} names no dataset")
        data = [str(default)]
    corpus = open_corpus(data, cfg.split, cfg.max_stories)
    index, index_info = corpus_index(corpus, cfg.index)
    if index.n_stories < 2:
        raise UserError("the corpus needs at least 2 stories")

    # Stories to cut: seeded random order; the first n with enough words whose beginning leaves room to generate.
    room = model.config.max_seq_len - 16
    picked = []
    for i, story in pick_stories(corpus, index.n_stories, cfg.n, cfg.seed):
        if len(story.split()) < cfg.min_words:
            continue
        prompt, rest = cut_story(story, cfg.cut)
        ids = prompt_ids(tok, prompt)
        if len(ids) <= room and len(words(rest)) >= 2:
            picked.append((i, story, prompt, rest, ids))
        if len(picked) == cfg.n:
            break
    if len(picked) < 2:
        raise UserError(f"found {len(picked)} corpus stories of at least {cfg.min_words} words whose first "
                        f"{cfg.cut:.0%} fits the model's context; need at least 2")

    t = time.perf_counter()
    with torch.inference_mode():
        done = complete(model, [p[4] for p in picked], params, eot_id=tok.eot_id, max_batch=cfg.batch)
    generate_s = time.perf_counter() - t
    completions = []
    for p, c in zip(picked, done):
        full = tok.decode(p[4] + c.tokens)
        completions.append(full[len(tok.decode(p[4])) :])

    result_m = measure(index, completions, [p[3] for p in picked], [p[0] for p in picked],
                       [p[1] for p in picked], cfg.bins)
    for item, p, text, c in zip(result_m["items"], picked, completions, done):
        item.update({"prompt": p[2], "original": p[3], "completion": text, "finish_reason": c.finish_reason})
    result = {
        "run": os.fspath(cfg.run),
        "step": loaded.step,
        "checkpoint": os.fspath(loaded.path),
        "model": config_dict(model.config),
        "corpus": {**corpus.info, "max_stories": cfg.max_stories, "fingerprint": corpus.fingerprint,
                   "stories": index.n_stories, "words": index.n_words},
        "sampling": {
            "stories": len(picked), "asked": cfg.n, "cut": cfg.cut, "min_words": cfg.min_words,
            "pick_seed": cfg.seed, "completion_seeds": f"{cfg.seed} + i for completion i",
            **dataclasses.asdict(params),
        },
        "tokenization": "rouge-score's default (lowercase, runs of [a-z0-9], no stemming); clipped n-gram counts",
        "index": index_info,
        "timings": {"generate_s": round(generate_s, 3), **result_m.pop("timings")},
        **result_m,
    }
    out = Path(cfg.run) / "eval"
    if cfg.write:
        png = out / "diversity.png"
        drawn = cfg.plot and plot(result, png, f"{cfg.run} step {loaded.step}")
        result["plot"] = os.fspath(png) if drawn else None
        atomic_write_json(out / "diversity.json", result)
    return _brief(result)


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    # What the command prints: the headline of each measure (the JSON has the histograms and items).
    def head(block: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {k: round(block[k], 4) for k in ("mean", "median", "p90", "max") if k in block}
        if "reference" in block:
            out["reference_mean"] = round(block["reference"]["mean"], 4)
        return out

    kg = result["kgrams_in_corpus"]
    return {
        "run": result["run"],
        "step": result["step"],
        "stories": result["sampling"]["stories"],
        "corpus_stories": result["corpus"]["stories"],
        "completion_vs_original_rouge2_p": head(result["completion_vs_original"]),
        "between_generations_rouge2_f": head(result["between_generations"]),
        "kgrams_never_in_corpus": {k: round(v["never_share"], 4) for k, v in kg.items()
                                   if isinstance(v, dict) and v.get("never_share") is not None},
        "closest_training_story": {k: head(v) for k, v in result["closest_training_story"].items()
                                   if isinstance(v, dict)},
        "index": result["index"],
    }
