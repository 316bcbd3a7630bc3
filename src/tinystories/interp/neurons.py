"""`tinystories interpret neurons`: what single MLP neurons fire on, measured against random directions.

For one layer (default: the penultimate, as in the paper's Figure 21) the MLP's
hidden activations (`blocks.{l}.mlp.hook_post`, after the nonlinearity) are
captured over N stories. For every neuron:

- its top-activating tokens, each with the sentence that holds it (the report
  highlights the token, as the paper's Figure 21);
- a label from those tokens: the word when one word holds at least half of the
  top activations, else the word class (from the lexicon: noun, verb,
  adjective; and pronoun, name, determiner, ...) when one class does, else "mixed";
- an interpretability score: over the top `top_k` activations, the share held
  by the most common word or the most common class, whichever is larger
  (1 = every top activation is the same word, or all are adjectives).

The same score is computed for `random_directions` random unit directions in
the same activation space (a direction's activation is the dot product with the
activation vector). A neuron's percentile says how many random directions score
below it (ties count half): if the basis of neurons is privileged, neurons beat
random mixtures of them.

Protagonist: for stories that carry procedural annotations (the `--data` JSONL
records, or else `protagonist_stories` generated procedurally), each neuron is
scored as a detector of the protagonist's first mention (every token of the
name where it first appears): average precision over all tokens, and precision
/ recall when "firing" means reaching half the neuron's largest activation. The
same average precision for the random directions gives its percentile.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tinystories.config import check
from tinystories.errors import UserError
from tinystories.interp.hooks import capture, resolve_layer
from tinystories.interp.text import (
    CLASSES,
    Story,
    load_records,
    mention_positions,
    prepare,
    procedural_records,
)
from tinystories.io import atomic_write_json
from tinystories.model import GPT
from tinystories.options import RunOptions
from tinystories.rundir import load_run, with_device


@dataclass
class NeuronsConfig(RunOptions):
    """`tinystories interpret neurons`: top-activating tokens, labels and scores of a layer's MLP neurons."""

    data: tuple[str, ...] = ()
    """Story files or a dataset folder; default: the run's dataset, else procedural stories."""
    layer: int = field(default=-2, metadata={"parse": int})  # a signed index, not a count
    """MLP layer; negative counts from the end (-2 = penultimate, as the paper)."""
    stories: int = field(default=20, metadata={"min": 1})
    """Number of stories (the paper: 20 stories, about 8,000 tokens)."""
    top_k: int = field(default=20, metadata={"min": 1})
    """Top activations per neuron that its label and score are computed from."""
    examples: int = 6
    """Top-activating sentences kept per neuron for display."""
    random_directions: int = field(default=1000, metadata={"min": 1})
    """Random directions in the same space that every neuron's score is ranked against."""
    protagonist_stories: int = 40
    """Annotated procedural stories for the protagonist's-first-mention score when --data has no annotations (0 = skip)."""
    seed: int = 0
    """Seed of the random directions and of procedural stories."""
    batch_tokens: int = 8192
    """Padded positions per forward (bounds memory)."""
    out: str = ""
    """Output folder; default: <run>/interp."""


# --- activations over stories ------------------------------------------------------------


@dataclass
class Table:
    """Activations of every (story, position) except the leading end-of-text, flattened."""

    acts: torch.Tensor
    """(N, F) activations."""
    where: list[tuple[int, int]]
    """(story, position) of each row."""
    word: list[str]
    """The word (lower case) or token text of each row."""
    cls: list[str]
    """The word class of each row."""


def activation_table(model: GPT, stories: Sequence[Story], layer: int, batch_tokens: int = 8192,
                     device: str = "cpu") -> Table:
    site = f"blocks.{layer}.mlp.hook_post"
    acts = capture(model, [s.ids for s in stories], [site], batch_tokens=batch_tokens, device=device)[site]
    rows, where, word, cls = [], [], [], []
    for si, (s, a) in enumerate(zip(stories, acts)):
        # Position 0 is the end-of-text that starts every story: the same token and context every time.
        rows.append(a[1:])
        for p in range(1, len(s)):
            where.append((si, p))
            word.append(s.word_text(p))
            cls.append(s.class_of(p))
    return Table(torch.cat(rows), where, word, cls)


# --- scores ------------------------------------------------------------------------------------


def _codes(values: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    names: dict[str, int] = {}
    codes = torch.tensor([names.setdefault(v, len(names)) for v in values], dtype=torch.long)
    return codes, list(names)


def _top_share(top: torch.Tensor, codes: torch.Tensor, n_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For top (k, D) row indices: the largest share of one code among each column's k rows, and that code."""
    k, D = top.shape
    counts = torch.zeros(D, n_codes)
    counts.scatter_add_(1, codes[top].T, torch.ones(D, k))
    best, which = counts.max(dim=1)
    return best / k, which


def concentration(acts: torch.Tensor, words: Sequence[str], classes: Sequence[str], top_k: int,
                  chunk: int = 512) -> dict[str, torch.Tensor]:
    """Interpretability score of every column of acts (N, D): max(word share, class share) of its top_k rows."""
    wc, _ = _codes(words)
    cc, _ = _codes(classes)
    k = min(top_k, acts.shape[0])
    parts: dict[str, list[torch.Tensor]] = {"score": [], "word_share": [], "class_share": [],
                                             "word": [], "cls": []}
    for s in range(0, acts.shape[1], chunk):
        top = acts[:, s : s + chunk].topk(k, dim=0).indices  # (k, d)
        ws, w = _top_share(top, wc, int(wc.max()) + 1)
        cs, c = _top_share(top, cc, int(cc.max()) + 1)
        parts["word_share"].append(ws)
        parts["class_share"].append(cs)
        parts["score"].append(torch.maximum(ws, cs))
        parts["word"].append(w)
        parts["cls"].append(c)
    return {name: torch.cat(v) for name, v in parts.items()}


def random_directions(dim: int, n: int, seed: int) -> torch.Tensor:
    """(dim, n) unit directions drawn uniformly on the sphere."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(dim, n, generator=g)
    return u / u.norm(dim=0, keepdim=True)


def percentile(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Percent of `reference` below each value (ties count half)."""
    ref = reference.sort().values
    below = torch.searchsorted(ref, values, right=False).float()
    upto = torch.searchsorted(ref, values, right=True).float()
    return 100.0 * (below + upto) / (2 * len(ref))


def average_precision(acts: torch.Tensor, positive: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Average precision of each column of acts (N, D) as a detector of the positive rows (N,) bool."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return torch.full((acts.shape[1],), float("nan"))
    out = []
    for s in range(0, acts.shape[1], chunk):
        order = acts[:, s : s + chunk].argsort(dim=0, descending=True)  # (N, d)
        hit = positive[order].float()  # (N, d)
        precision = hit.cumsum(0) / torch.arange(1, len(hit) + 1)[:, None]
        out.append((precision * hit).sum(0) / n_pos)
    return torch.cat(out)


PLURAL = {"punctuation": "punctuation", "other": "other words", "auxiliary": "auxiliaries"}


def label(word_share: float, class_share: float, word: str, cls: str) -> str:
    """A word when it holds half the top activations (and no less than its class), else a class, else "mixed"."""
    if word_share >= 0.5 and word_share >= class_share:
        return f"the word '{word}'"
    if class_share >= 0.5:
        return PLURAL.get(cls, cls + "s") + (f", mostly '{word}'" if word_share >= 0.5 else "")
    return "mixed"


def protagonist_targets(stories: Sequence[Story]) -> torch.Tensor | None:
    """(N,) bool over the activation table's rows: tokens of the protagonist's first mention."""
    flags: list[bool] = []
    found = False
    for s in stories:
        pos: set[int] = set()
        ann = s.annotations or {}
        for c in ann.get("characters", []):
            if c.get("name") == ann.get("protagonist") and "first_mention" in c:
                pos = set(mention_positions(s, c["name"], int(c["first_mention"])))
        found = found or bool(pos)
        flags.extend(p in pos for p in range(1, len(s)))
    return torch.tensor(flags) if found else None


def protagonist_scores(table: Table, stories: Sequence[Story], n_random: int, seed: int) -> dict[str, Any] | None:
    """Every neuron as a detector of the protagonist's first mention: the five best, with random-direction percentiles."""
    positive = protagonist_targets(stories)
    if positive is None:
        return None
    ap = average_precision(table.acts, positive)
    ap_rand = average_precision(table.acts @ random_directions(table.acts.shape[1], n_random, seed + 1), positive)
    pct = percentile(ap, ap_rand)
    best = torch.argsort(ap, descending=True)[:5].tolist()
    rows = []
    for f in best:
        a = table.acts[:, f]
        fires = a >= 0.5 * a.max()
        tp = int((fires & positive).sum())
        rows.append({"neuron": f, "average_precision": float(ap[f]), "percentile": float(pct[f]),
                     "precision": tp / max(int(fires.sum()), 1), "recall": tp / int(positive.sum()),
                     "fires": int(fires.sum())})
    return {"stories": len(stories), "tokens": len(positive), "positives": int(positive.sum()),
            "base_rate": float(positive.float().mean()), "best": rows,
            "random_ap": {"median": float(ap_rand.median()), "p99": float(ap_rand.quantile(0.99)),
                          "max": float(ap_rand.max())}}


# --- the command ---------------------------------------------------------------------------


def examples(table: Table, stories: Sequence[Story], column: torch.Tensor, n: int) -> list[dict[str, Any]]:
    """The n top-activating tokens of one direction, each with its sentence and the token's span in it."""
    out = []
    for r in column.topk(min(n, len(column))).indices.tolist():
        si, p = table.where[r]
        sent, a, b = stories[si].sentence(p)
        out.append({"activation": round(float(column[r]), 4), "token": stories[si].token_text(p),
                    "word": table.word[r], "class": table.cls[r], "sentence": sent, "span": [a, b],
                    "story": si, "position": p})
    return out


def interpret_neurons(cfg: NeuronsConfig) -> dict[str, Any]:
    """Label and score every MLP neuron of one layer; writes <out>/neurons_layer{L}.json."""
    cfg = with_device(cfg)
    if not cfg.run:
        raise UserError("--run is required: the run folder whose neurons are analysed")
    check(cfg)
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    model, tok = loaded.model, loaded.tokenizer
    layer = resolve_layer(model, cfg.layer)
    records, source = load_records(cfg.data, loaded.config, cfg.stories, cfg.seed)
    stories = prepare(records[: cfg.stories], tok, model.config.max_seq_len)
    if not stories:
        raise UserError("no non-empty stories to analyse")
    table = activation_table(model, stories, layer, cfg.batch_tokens, cfg.device)
    F = table.acts.shape[1]
    neurons = concentration(table.acts, table.word, table.cls, cfg.top_k)
    rand = concentration(table.acts @ random_directions(F, cfg.random_directions, cfg.seed),
                         table.word, table.cls, cfg.top_k)
    pct = percentile(neurons["score"], rand["score"])
    _, word_names = _codes(table.word)
    _, cls_names = _codes(table.cls)

    rows: list[dict[str, Any]] = []
    for f in range(F):
        w, c = word_names[int(neurons["word"][f])], cls_names[int(neurons["cls"][f])]
        ws, cs = float(neurons["word_share"][f]), float(neurons["class_share"][f])
        rows.append({"neuron": f, "label": label(ws, cs, w, c), "score": float(neurons["score"][f]),
                     "percentile": float(pct[f]), "word": w, "word_share": ws, "class": c, "class_share": cs,
                     "max_activation": float(table.acts[:, f].max())})
    # Shown in full: the first two neurons (the paper's "not cherry-picked" choice), the one with the
    # largest activation of all, and the best-scoring ones.
    strongest = int(table.acts.max(dim=0).values.argmax())
    by_score = sorted(range(F), key=lambda f: (-rows[f]["percentile"], -rows[f]["score"], f))
    shown = list(dict.fromkeys([0, 1, strongest, *by_score[:6]]))[: F]
    for f in shown:
        rows[f]["examples"] = examples(table, stories, table.acts[:, f], cfg.examples)
    rows[strongest]["strongest"] = True

    annotated = [s for s in stories if s.annotations]
    proto_source = "the --data stories"
    if not annotated and cfg.protagonist_stories > 0:
        annotated = prepare(procedural_records(cfg.protagonist_stories, cfg.seed), tok, model.config.max_seq_len)
        proto_source = f"{cfg.protagonist_stories} procedural stories (seed {cfg.seed})"
    protagonist = None
    if annotated:
        proto_table = activation_table(model, annotated, layer, cfg.batch_tokens, cfg.device)
        protagonist = protagonist_scores(proto_table, annotated, cfg.random_directions, cfg.seed)
    if protagonist is not None:
        protagonist["source"] = proto_source
        f = protagonist["best"][0]["neuron"]
        protagonist["best"][0]["examples"] = examples(proto_table, annotated, proto_table.acts[:, f], cfg.examples)

    scores = neurons["score"]
    result = {
        "run": os.fspath(cfg.run),
        "step": loaded.step,
        "layer": layer,
        "site": f"blocks.{layer}.mlp.hook_post",
        "source": source,
        "stories": len(stories),
        "tokens": len(table.where),
        "top_k": cfg.top_k,
        "method": __doc__.split("\n\n", 1)[1],
        "summary": {
            "neurons": F,
            "median_score": float(scores.median()),
            "random_median_score": float(rand["score"].median()),
            "random_p95_score": float(rand["score"].quantile(0.95)),
            "above_random_p95": int((pct >= 95).sum()),
            "median_percentile": float(pct.median()),
            "labels": dict(Counter(r["label"] for r in rows).most_common(12)),
            "class_labels": {c: sum(r["label"].split(",")[0] == PLURAL.get(c, c + "s") for r in rows) for c in CLASSES},
        },
        "random": {"directions": cfg.random_directions, "scores": [round(float(x), 4) for x in rand["score"]]},
        "shown": shown,
        "neurons": rows,
        "protagonist": protagonist,
    }
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "interp"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"neurons_layer{layer}.json", result)
    brief: dict[str, Any] = {k: result[k] for k in ("run", "step", "layer", "source", "stories", "tokens", "summary")}
    brief["shown"] = [{k: rows[f][k] for k in ("neuron", "label", "score", "percentile")} for f in shown]
    if protagonist:
        brief["protagonist"] = {k: v for k, v in protagonist.items() if k != "best"}
        brief["protagonist"]["best"] = [{k: v for k, v in r.items() if k != "examples"} for r in protagonist["best"]]
    brief["written"] = str(out / f"neurons_layer{layer}.json")
    return brief
