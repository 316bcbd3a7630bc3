"""`tinystories interpret heads`: which attention heads attend by distance, which by meaning, which copy.

Per head, over a set of stories (A is a story's attention pattern, A[i, j] the
weight query i gives key j <= i):

- mean distance: sum_j A[i, j] * (i - j), averaged over queries i >= 1;
- entropy: -sum_j A[i, j] log A[i, j] (nats), and the same divided by log(i+1),
  the entropy of uniform attention (1 = uniform), averaged over queries i >= 1;
- first-token share: attention on position 0, the end-of-text that starts every
  story (heads with nothing to do park their attention there);
- positional score: the head's attention explained by its mean offset profile
  p[d] (the mean of A[i, i-d] over all stories and queries), as R^2: the
  prediction P[i, j] = p[i-j] / sum_{d <= i} p[d] against the baseline of
  uniform attention U[i, j] = 1/(i+1): R^2 = 1 - sum (A-P)^2 / sum (A-U)^2.
  A head that always looks k tokens back scores 1, whatever the tokens are;
- semantic score: excess attention to earlier occurrences of the same word, or
  to entities (nouns and names), over what the offset profile predicts for the
  same positions: (observed mass - predicted mass) per query that has such
  earlier positions. The larger of the two excesses is the score, in units of
  attention mass (0.2 = a fifth of the query's attention);
- induction score (Olsson et al. 2022, "In-context learning and induction
  heads"), not on the stories but on `induction_sequences` sequences
  [eot] + R + R, R being L = min(100, (max_seq_len - 1) // 2) token ids drawn
  uniformly from the vocabulary (never the end-of-text). The query at q = L + 1
  + k (k = 0 .. L-2) is the second copy of R[k]; its attention to position
  k + 2, the token that followed R[k] the first time, averaged over queries
  and sequences, is the induction score; its attention to k + 1, R[k]'s first
  occurrence, the duplicate score. On random tokens only copying from context
  predicts anything, so the model's mean loss on the first copy of R and on
  the second (`copy_loss`, nats/token) shows whether it uses such heads: a
  model that copies has a much lower loss on the second copy.

Classification (thresholds are options, stated in the output): a head whose
attention is nearly uniform (normalised entropy above `max_entropy`) is
`other`; else `induction` when the induction score reaches
`induction_threshold`, whatever else it does; else `distance` when the
positional score reaches `positional_threshold`; else `semantic` when the
semantic score reaches `semantic_threshold`; else `other`.

Controls, run by default: a randomly initialised copy of the model on the same
stories and random sequences (it should have no semantic and no induction
head), and the same stories with their tokens shuffled (distance heads keep
their positional score: the correlation of positional scores across heads,
real vs shuffled, is reported).

Everything is accumulated story by story in offset coordinates (query i,
offset d), so memory is O(heads x T^2) per layer whatever the number of stories.
"""

from __future__ import annotations

import base64
import functools
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinystories.config import check
from tinystories.errors import UserError
from tinystories.interp.hooks import iter_activations
from tinystories.interp.text import Story, load_records, prepare
from tinystories.io import atomic_save, atomic_write_json
from tinystories.loss import chunked_cross_entropy
from tinystories.model import GPT
from tinystories.options import RunOptions
from tinystories.plotting import pyplot
from tinystories.rundir import load_run, with_device

PAPER_TEXT = (
    "One day, Lucy asks Tom: \"I am looking for a banana but I can't find it\". Tom says: \"Don't worry, "
    "I will help you\". Lucy and Tom go to the park. They look for the banana together. After a while, they "
    "found the banana. Lucy is happy. She says: \"Thank you, Tom. You are a good friend.\" Tom: \"You are "
    "welcome, Lucy. I am happy to help you. Let's eat the banana together!\""
)
"""The text of the paper's Figures 19-20."""

ENTITY_CLASSES = ("noun", "name")

KINDS = ("induction", "distance", "semantic", "other")
"""Head classes, in the order `classify` tests them (after the uniform check)."""


@dataclass
class HeadsConfig(RunOptions):
    """`tinystories interpret heads`: distance-based and semantic attention heads, with controls."""

    data: tuple[str, ...] = ()
    """Story files or a dataset folder; default: the run's dataset, else procedural stories."""
    stories: int = field(default=50, metadata={"min": 1})
    """Number of stories to score the heads on."""
    text: str = PAPER_TEXT
    """Text whose attention maps are drawn (default: the paper's Figures 19-20 text)."""
    positional_threshold: float = 0.5
    """A head is distance-based when its positional score (R^2 of the offset profile) reaches this."""
    semantic_threshold: float = 0.05
    """A head is semantic when its excess attention to same words / entities reaches this (attention mass)."""
    induction_threshold: float = 0.3
    """A head is an induction head when its induction score reaches this (attention mass)."""
    induction_sequences: int = field(default=20, metadata={"min": 1})
    """Number of repeated random sequences ([eot] + R + R) the induction score is measured on."""
    max_entropy: float = 0.9
    """Heads whose normalised attention entropy exceeds this are nearly uniform and classified other."""
    controls: bool = True
    """Also score a randomly initialised copy of the model and the stories with shuffled tokens."""
    seed: int = 0
    """Seed of the random-init control, the token shuffle, procedural stories and the induction sequences."""
    batch_tokens: int = 8192
    """Padded positions per forward (bounds memory)."""
    out: str = ""
    """Output folder; default: <run>/interp."""
    png: bool = True
    """Draw the attention maps of --text as PNG files (needs matplotlib)."""


# --- accumulating statistics -----------------------------------------------------------


class LayerStats:
    """Per-head sums over stories, in offset coordinates (query i, offset d = i - j).

    One accumulator can hold every layer's heads (`score_heads` stacks them).
    Memory: a few (heads, T, T) float64 tensors, T the longest story.
    """

    def __init__(self, n_head: int, max_len: int):
        H, T = n_head, max_len
        self.H, self.T = H, T
        self.S1 = torch.zeros(H, T, T, dtype=torch.float64)  # sum of A[i, i-d]
        self.N = torch.zeros(T, dtype=torch.float64)  # stories long enough to have query i
        self.sum_a2 = torch.zeros(H, dtype=torch.float64)
        self.dist = torch.zeros(H, dtype=torch.float64)
        self.ent = torch.zeros(H, dtype=torch.float64)
        self.norm_ent = torch.zeros(H, dtype=torch.float64)
        self.first = torch.zeros(H, dtype=torch.float64)
        self.rows = 0
        # Targets of the semantic score: G[i, d] counts stories where key i-d is a target of query i.
        self.G = {k: torch.zeros(T, T, dtype=torch.float64) for k in ("same", "entity")}
        self.obs = {k: torch.zeros(H, dtype=torch.float64) for k in ("same", "entity")}
        self.queries = {k: 0 for k in ("same", "entity")}
        self._grids: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _grid(self, L: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Index tensors for stories of length L (kept for the last length: stories arrive sorted by length)."""
        if L not in self._grids:
            i = torch.arange(L)[:, None]
            d = torch.arange(L)[None, :]
            valid = d <= i  # (L, L) in offset coordinates
            j = (i - d).clamp(min=0)  # key of (query i, offset d)
            dist = (i - d).clamp(min=0).float()  # in (query, key) coordinates: i - j where j <= i
            self._grids = {L: (valid, j, dist, torch.log(torch.arange(2, L + 1, dtype=torch.float64)))}
        return self._grids[L]

    def update(self, A: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        """Add one story: A (H, L, L) attention; targets {kind: (L, L) bool, key j is a target of query i}."""
        H, L, _ = A.shape
        if L > self.T:
            raise ValueError(f"story of {L} positions exceeds the {self.T} this accumulator was made for")
        A = A.float()
        valid, j, dist, log_n = self._grid(L)
        f64 = torch.float64
        A_off = A.gather(2, j.expand(H, L, L)).mul_(valid)  # (H, L, L): A[h, i, i-d]
        self.S1[:, :L, :L] += A_off
        self.N[:L] += 1
        self.sum_a2 += (A * A).sum(dim=(1, 2), dtype=f64)
        # Query 0 has a single key: nothing to measure, and it adds 0 to every sum below but the entropy ratio.
        self.dist += (A * dist).sum(dim=(1, 2), dtype=f64)
        ent = -torch.special.xlogy(A, A).sum(-1, dtype=f64)  # (H, L)
        self.ent += ent.sum(-1)
        self.norm_ent += (ent[:, 1:] / log_n).sum(-1)
        self.first += A[:, 1:, 0].sum(-1, dtype=f64)
        self.rows += L - 1
        for kind, t in targets.items():
            tf = t[:L, :L].float()
            self.obs[kind] += (A * tf).sum(dim=(1, 2), dtype=f64)
            self.G[kind][:L, :L] += tf.gather(1, j).mul_(valid)
            self.queries[kind] += int((t.sum(-1) > 0).sum())

    def profile(self) -> torch.Tensor:
        """(H, T) mean attention at each offset d over all queries that have one."""
        per_d = self.N.flip(0).cumsum(0).flip(0)  # queries i >= d, summed over stories
        return self.S1.sum(1) / per_d.clamp(min=1)

    def results(self) -> list[dict[str, Any]]:
        p = self.profile()  # (H, T)
        Z = p.cumsum(-1)  # (H, T): sum_{d <= i} p[d]
        c = 1.0 / Z.clamp(min=1e-30)  # (H, T) renormalisation of row i
        cross = (c[:, :, None] * p[:, None, :] * self.S1).sum(dim=(1, 2))  # sum A * P
        pred_sq = (self.N[None] * c * c * (p * p).cumsum(-1)).sum(-1)  # sum P^2
        ss_res = self.sum_a2 - 2 * cross + pred_sq
        ss_tot = self.sum_a2 - (self.N / torch.arange(1, self.T + 1)).sum()
        r2 = 1 - ss_res / ss_tot.clamp(min=1e-12)
        excess, lift = {}, {}
        for kind in ("same", "entity"):
            predicted = (c[:, :, None] * p[:, None, :] * self.G[kind]).sum(dim=(1, 2))  # (H,)
            excess[kind] = (self.obs[kind] - predicted) / max(self.queries[kind], 1)
            lift[kind] = self.obs[kind] / predicted.clamp(min=1e-12)
        rows = max(self.rows, 1)
        out = []
        for h in range(self.H):
            top = torch.argsort(p[h], descending=True)[:3]
            out.append({
                "head": h,
                "mean_distance": float(self.dist[h] / rows),
                "entropy": float(self.ent[h] / rows),
                "norm_entropy": float(self.norm_ent[h] / rows),
                "first_token": float(self.first[h] / rows),
                "positional": float(r2[h]),
                "semantic_same_word": float(excess["same"][h]),
                "semantic_entity": float(excess["entity"][h]),
                "semantic": float(max(excess["same"][h], excess["entity"][h])),
                "lift_same_word": float(lift["same"][h]),
                "lift_entity": float(lift["entity"][h]),
                "offsets": [[int(d), round(float(p[h, d]), 4)] for d in top],
            })
        return out


def semantic_targets(story: Story) -> dict[str, torch.Tensor]:
    """{"same": (L, L) key j < i lies in an earlier occurrence of query i's word; "entity": key j < i is a noun or name}."""
    L = len(story)
    texts = [story.word_text(p) if story.word_of[p] >= 0 else None for p in range(L)]
    ids: dict[str, int] = {}
    code = torch.tensor([ids.setdefault(t, len(ids)) if t is not None else -1 - p for p, t in enumerate(texts)])
    wid = torch.tensor(story.word_of)
    earlier = torch.ones(L, L, dtype=torch.bool).tril(-1)
    # Same word, but not the query's own word (a later piece of "Lucy" looking at its first piece).
    same = (code[:, None] == code[None, :]) & earlier & (wid[:, None] != wid[None, :])
    ent = torch.tensor([story.class_of(p) in ENTITY_CLASSES for p in range(L)])
    entity = earlier & ent[None, :] & (wid[:, None] != wid[None, :])
    return {"same": same, "entity": entity}


# --- induction heads -------------------------------------------------------------------


@dataclass
class Induction:
    """The induction test of one model: every head's scores and the loss on each copy of R."""

    induction: torch.Tensor
    """(layers * H,) mean attention to the token after R[k]'s first occurrence; head index = layer * H + h."""
    duplicate: torch.Tensor
    """(layers * H,) mean attention to R[k]'s first occurrence."""
    first: float
    """Mean loss (nats/token) on the first copy of R."""
    second: float
    """Mean loss (nats/token) on the second copy of R."""
    length: int
    """L, the length of R."""


def induction_length(max_seq_len: int) -> int:
    """L: R twice after the end-of-text fits the context, and at most 100 tokens."""
    return min(100, (max_seq_len - 1) // 2)


def repeated_sequences(n: int, length: int, vocab_size: int, eot_id: int, seed: int) -> torch.Tensor:
    """(n, 2 * length + 1) sequences [eot] + R + R, R uniform over the vocabulary without the end-of-text."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(vocab_size - 1, (n, length), generator=g)  # (n, L)
    r += (r >= eot_id).long()  # ids above the end-of-text move up one: still uniform over the others
    return torch.cat([torch.full((n, 1), eot_id), r, r], dim=1)


def induction_scores(A: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(induction (H,), duplicate (H,)) of patterns A (..., H, T, T) on [eot] + R + R, R of `length` tokens.

    Averaged over the queries q = L + 1 + k, k = 0 .. L-2 (the second copy of R[k]), and any leading dimensions.
    """
    L, H = length, A.shape[-3]
    q = torch.arange(L + 1, 2 * L, device=A.device)  # (L-1,)
    induction = A[..., q, q - L + 1]  # (..., H, L-1): key k + 2, the token that followed R[k]
    duplicate = A[..., q, q - L]  # (..., H, L-1): key k + 1, R[k] itself
    return induction.reshape(-1, H, L - 1).mean(dim=(0, 2)), duplicate.reshape(-1, H, L - 1).mean(dim=(0, 2))


@torch.no_grad()
def induction_test(model: GPT, cfg: HeadsConfig, eot_id: int, vocab_size: int | None = None) -> Induction:
    """Induction and duplicate scores of every head, and the loss on each copy, on repeated random sequences."""
    n_layer = model.config.n_layer
    L = induction_length(model.config.max_seq_len)
    if L < 2:
        raise UserError(f"the induction test needs a context of at least 5 tokens, the model has "
                        f"{model.config.max_seq_len}")
    seqs = repeated_sequences(cfg.induction_sequences, L, vocab_size or model.config.vocab_size, eot_id, cfg.seed)
    sites = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layer)]
    final = "ln_final.hook_normalized"
    ind = dup = torch.zeros(n_layer * model.config.n_head, dtype=torch.float64)
    hidden: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
    for i, acts in iter_activations(model, seqs.tolist(), [*sites, final], batch_tokens=cfg.batch_tokens,
                                    device=cfg.device):
        a, d = induction_scores(torch.cat([acts[s] for s in sites]), L)  # (layers * H,) each
        ind, dup = ind + a.double().cpu(), dup + d.double().cpu()
        hidden[i] = acts[final].clone()  # (T, C)
    # Position t predicts token t + 1: positions 0..L-1 the first copy, L..2L-1 the second.
    h = torch.stack(hidden)[:, :-1]  # (n, 2L, C)
    targets = seqs[:, 1:].to(h.device)  # (n, 2L)
    C, W = h.shape[-1], model.classifier_weight
    first = chunked_cross_entropy(h[:, :L].reshape(-1, C), W, targets[:, :L].reshape(-1))
    second = chunked_cross_entropy(h[:, L:].reshape(-1, C), W, targets[:, L:].reshape(-1))
    n = len(seqs)
    return Induction(induction=ind / n, duplicate=dup / n, first=float(first), second=float(second), length=L)


def classify(h: dict[str, Any], cfg: HeadsConfig) -> str:
    if h["norm_entropy"] > cfg.max_entropy:
        return "other"
    # Heads scored on stories alone (LayerStats) have no induction score.
    if h.get("induction", 0.0) >= cfg.induction_threshold:
        return "induction"
    if h["positional"] >= cfg.positional_threshold:
        return "distance"
    if h["semantic"] >= cfg.semantic_threshold:
        return "semantic"
    return "other"


def score_heads(model: GPT, stories: Sequence[Story], cfg: HeadsConfig,
                ids: Sequence[Sequence[int]] | None = None, induction: Induction | None = None) -> list[dict[str, Any]]:
    """Statistics and class of every head over `stories` (token ids `ids` when they differ from the stories').

    `induction`: the model's induction test; by default run here, with the end-of-text that starts the stories
    and the model's whole vocabulary.
    """
    n_layer, n_head = model.config.n_layer, model.config.n_head
    ids = ids or [s.ids for s in stories]
    induction = induction or induction_test(model, cfg, eot_id=ids[0][0])
    # All layers in one accumulator: (layers * H) heads, head index = layer * H + h.
    stats = LayerStats(n_layer * n_head, max(len(x) for x in ids))
    sites = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layer)]
    for i, acts in iter_activations(model, ids, sites, batch_tokens=cfg.batch_tokens, device=cfg.device):
        stats.update(torch.cat([acts[s].cpu() for s in sites]), semantic_targets(stories[i]))
    heads = []
    for h in stats.results():
        index = h.pop("head")
        layer, head = divmod(index, n_head)
        h = {"layer": layer, "head": head, **h, "induction": float(induction.induction[index]),
             "duplicate": float(induction.duplicate[index])}
        h["kind"] = classify(h, cfg)
        heads.append(h)
    return heads


def shuffled(ids: Sequence[Sequence[int]], seed: int) -> list[list[int]]:
    """Each story's tokens in a random order, the leading end-of-text kept in place."""
    rng = random.Random(seed)
    out = []
    for s in ids:
        rest = list(s[1:])
        rng.shuffle(rest)
        out.append([s[0], *rest])
    return out


def random_copy(model: GPT, seed: int) -> GPT:
    """A freshly initialised model of the same configuration (the control with no learned structure)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh = GPT(model.config)
    return fresh.to(next(model.parameters()).device).eval()


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# --- attention maps ----------------------------------------------------------------


def attention_maps(model: GPT, tokenizer: Any, text: str, device: str = "cpu") -> dict[str, Any]:
    """Tokens of `text` and every layer's attention, as (L, H, T, T) patterns quantised to uint8 (base64)."""
    story = prepare([{"story": text}], tokenizer, model.config.max_seq_len)
    if not story:
        raise UserError("--text is empty")
    s = story[0]
    sites = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.config.n_layer)]
    acts = next(iter_activations(model, [s.ids], sites, device=device))[1]
    pats = torch.stack([acts[x].cpu() for x in sites])  # (layers, H, T, T)
    q = (pats * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return {
        "tokens": [s.token_text(p) for p in range(len(s))],
        "shape": list(q.shape),
        "patterns_u8": base64.b64encode(q.tobytes()).decode("ascii"),
        "_patterns": pats,
    }


def draw_maps(maps: dict[str, Any], heads: list[dict[str, Any]], folder: Path) -> list[str]:
    """One PNG per layer: every head's attention on the text (query rows x key columns, viridis)."""
    plt = pyplot()
    pats = maps["_patterns"].numpy()
    tokens = [t.replace("\n", "\\n") for t in maps["tokens"]]
    n_layer, n_head, T, _ = pats.shape
    kinds = {(h["layer"], h["head"]): h["kind"] for h in heads}
    cols = min(4, n_head)
    rows = math.ceil(n_head / cols)
    labelled = T <= 40  # token labels stay legible up to about this many tokens
    written = []
    for layer in range(n_layer):
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
        fig.subplots_adjust(left=0.08 if labelled else 0.02, right=0.98, bottom=0.08 if labelled else 0.02,
                            top=0.95, wspace=0.35 if labelled else 0.1, hspace=0.35 if labelled else 0.15)
        for h in range(rows * cols):
            ax = axes[h // cols][h % cols]
            if h >= n_head:
                ax.axis("off")
                continue
            ax.imshow(pats[layer, h], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"layer {layer}, head {h}: {kinds.get((layer, h), '')}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if labelled:
                # Text is slow to lay out: one label per token on the left and bottom edges only.
                if h % cols == 0:
                    ax.set_yticks(range(T), tokens, fontsize=5)
                if h // cols == rows - 1 or h + cols >= n_head:
                    ax.set_xticks(range(T), tokens, rotation=90, fontsize=5)
        path = folder / f"heads_layer{layer}.png"
        atomic_save(path, functools.partial(_save_png, fig))
        plt.close(fig)
        written.append(path.name)
    return written


def _save_png(fig: Any, name: str) -> None:
    fig.savefig(name, format="png", dpi=80)


# --- the command ---------------------------------------------------------------------


def interpret_heads(cfg: HeadsConfig) -> dict[str, Any]:
    """Score and classify every attention head of a run; writes <out>/heads.json and attention-map PNGs."""
    cfg = with_device(cfg)
    if not cfg.run:
        raise UserError("--run is required: the run folder whose heads are analysed")
    check(cfg)
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    model, tok = loaded.model, loaded.tokenizer
    records, source = load_records(cfg.data, loaded.config, cfg.stories, cfg.seed)
    stories = prepare(records[: cfg.stories], tok, model.config.max_seq_len)
    if not stories:
        raise UserError("no non-empty stories to analyse")
    vocab = min(tok.vocab_size, model.config.vocab_size)
    ind = induction_test(model, cfg, tok.eot_id, vocab)
    heads = score_heads(model, stories, cfg, induction=ind)
    result: dict[str, Any] = {
        "run": os.fspath(cfg.run),
        "step": loaded.step,
        "source": source,
        "stories": len(stories),
        "tokens": sum(len(s) for s in stories),
        "thresholds": {"positional": cfg.positional_threshold, "semantic": cfg.semantic_threshold,
                       "induction": cfg.induction_threshold, "max_entropy": cfg.max_entropy},
        "induction_test": {"sequences": cfg.induction_sequences, "length": ind.length},
        "copy_loss": {"first": ind.first, "second": ind.second},
        "method": __doc__.split("\n\n", 1)[1].split("\n\nEverything")[0],
        "heads": heads,
        "counts": _counts(heads),
    }
    if cfg.controls:
        fresh = random_copy(model, cfg.seed)
        rand_ind = induction_test(fresh, cfg, tok.eot_id, vocab)
        rand = score_heads(fresh, stories, cfg, induction=rand_ind)
        # The induction test does not read the stories: shuffling them leaves it as it was.
        shuf = score_heads(model, stories, cfg, ids=shuffled([s.ids for s in stories], cfg.seed), induction=ind)
        dist = [h for h in heads if h["kind"] == "distance"]
        key = {(h["layer"], h["head"]): h for h in shuf}
        result["controls"] = {
            "random_init": {"counts": _counts(rand), "max_semantic": max(h["semantic"] for h in rand),
                            "max_positional": max(h["positional"] for h in rand),
                            "max_induction": max(h["induction"] for h in rand),
                            "copy_loss": {"first": rand_ind.first, "second": rand_ind.second}},
            "shuffled": {
                "correlation_all": pearson([h["positional"] for h in heads], [h["positional"] for h in shuf]),
                "correlation_distance": pearson([h["positional"] for h in dist],
                                                [key[(h["layer"], h["head"])]["positional"] for h in dist])
                if len(dist) >= 3 else None,
                "counts": _counts(shuf),
                "distance_heads": [{"layer": h["layer"], "head": h["head"], "positional": h["positional"],
                                    "shuffled": key[(h["layer"], h["head"])]["positional"]} for h in dist],
                "semantic_heads": [{"layer": h["layer"], "head": h["head"], "semantic": h["semantic"],
                                    "shuffled": key[(h["layer"], h["head"])]["semantic"]}
                                   for h in heads if h["kind"] == "semantic"],
            },
        }
    maps = attention_maps(model, tok, cfg.text, cfg.device)
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "interp"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.png:
        result["png"] = draw_maps(maps, heads, out)
    maps.pop("_patterns")
    result["text"] = {"text": cfg.text, **maps}
    atomic_write_json(out / "heads.json", result)
    summary = {k: v for k, v in result.items() if k not in ("heads", "text", "method")}
    for kind in ("distance", "semantic", "induction"):
        summary[f"{kind}_heads"] = [f"{h['layer']}.{h['head']}" for h in heads if h["kind"] == kind]
    summary["written"] = str(out / "heads.json")
    return summary


def _counts(heads: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(h["kind"] == k for h in heads) for k in KINDS}
