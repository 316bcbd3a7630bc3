"""`tinystories eval probes`: capability probes scored by log-likelihood (multiple choice).

A probe item (DESIGN.md) is a context (`prompt`) and continuations: one right
(`answer`) and one or more `wrong`. The model reads `[eot] + prompt` as it read
stories in training; each option's score is the summed log-probability of its
tokens after the context. An item counts as right when the answer scores above
every wrong option (an exact tie counts half, so a model that cannot tell the
options apart sits at chance).

Reported: accuracy with a 95% Wilson score interval, overall and per category
(fact / reasoning / context) and, for procedural items, per kind; the chance
level (the mean of 1 / number of options); and, beside the model, two rules that
read only the context ("the option mentioned most often", "the option mentioned
last"), which the procedural set is built to hold at chance. The interval treats
items as independent; the procedural set comes in mirrored pairs, which a model
tends to get both right or both wrong once it understands a context, so read
the interval as a close guide rather than an exact one.

Without `--probes`, items come from the procedural engine (`synth/probes.py`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinystories.errors import UserError

CATEGORIES = ("fact", "reasoning", "context")
Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""


@dataclass
class ProbesConfig:
    """`tinystories eval probes`: multiple-choice probes scored by the model's log-likelihood."""

    run: str = ""
    """Run folder whose model is probed."""
    probes: str | None = None
    """Probe items (JSONL, DESIGN.md's schema); default: procedural items made from --n and --seed."""
    n: int = 1000
    """Procedural items to make when no --probes file is given (rounded up to whole mirrored pairs)."""
    seed: int = 1
    """Seed of the procedural items (drawn from their own random stream, never the corpus's)."""
    step: int | None = None
    """Checkpoint step to probe; default = the latest."""
    device: str = "cpu"
    """Torch device (cpu, cuda, cuda:1, mps)."""
    batch: int = 64
    """Sequences per forward at most (fewer when the vocabulary is large)."""
    write: bool = True
    """Write eval/probes.json in the run folder."""


# --- items ---------------------------------------------------------------------------


def read_probes(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Probe items from a JSONL file, checked against the schema (errors name the line)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no probe file at {path}")
    items = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{line_no}: not JSON ({e.msg})") from None
            check_item(item, f"{path}:{line_no}")
            items.append(item)
    if not items:
        raise UserError(f"{path} holds no probe items")
    return items


def check_item(item: Any, where: str) -> None:
    """Raise a UserError naming `where` unless `item` follows the probe schema."""
    if not isinstance(item, dict):
        raise UserError(f"{where}: a probe item must be a JSON object")
    for key in ("prompt", "answer"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise UserError(f"{where}: {key!r} must be a non-empty string")
    wrong = item.get("wrong")
    if not isinstance(wrong, list) or not wrong or not all(isinstance(w, str) and w for w in wrong):
        raise UserError(f"{where}: 'wrong' must be a non-empty list of non-empty strings")
    if item["answer"] in wrong:
        raise UserError(f"{where}: the answer is also listed as wrong")
    if item.get("category") not in CATEGORIES:
        raise UserError(f"{where}: 'category' must be one of {', '.join(CATEGORIES)}")


# --- statistics ----------------------------------------------------------------------


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion `correct / n` (correct may be fractional)."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def outcome(answer_score: float, wrong_scores: Sequence[float]) -> float:
    """1 when the answer scores above every wrong option, 0.5 on a tie with the best one, else 0."""
    best = max(wrong_scores)
    return 1.0 if answer_score > best else 0.5 if answer_score == best else 0.0


def summarize(outcomes: Sequence[float], chances: Sequence[float]) -> dict[str, Any]:
    """Accuracy, its 95% interval, chance and the margin over chance of a group of items."""
    n = len(outcomes)
    correct = float(sum(outcomes))
    acc = correct / n if n else float("nan")
    low, high = wilson_interval(correct, n)
    chance = sum(chances) / n if n else float("nan")
    return {
        "n": n,
        "correct": correct,
        "accuracy": acc,
        "ci95": [low, high],
        "chance": chance,
        "above_chance": acc - chance,
        "significant": low > chance,
    }


def _kind(item: dict[str, Any]) -> str | None:
    # Procedural ids end in their kind ("proc-1-000012-names"); other sets have none.
    from tinystories.synth.probes import KINDS

    kind = str(item.get("id", "")).rsplit("-", 1)[-1]
    return kind if kind in KINDS else None


def report(items: Sequence[dict[str, Any]], outcomes: Sequence[float]) -> dict[str, Any]:
    """Overall, per-category and per-kind summaries of `outcomes` (one per item)."""
    chances = [1.0 / (1 + len(it["wrong"])) for it in items]
    out: dict[str, Any] = summarize(outcomes, chances)
    groups: dict[str, dict[str, list[int]]] = {"by_category": {}, "by_kind": {}}
    for i, it in enumerate(items):
        groups["by_category"].setdefault(it["category"], []).append(i)
        kind = _kind(it)
        if kind is not None:
            groups["by_kind"].setdefault(kind, []).append(i)
    for name, members in groups.items():
        if members:
            out[name] = {
                key: summarize([outcomes[i] for i in idx], [chances[i] for i in idx])
                for key, idx in members.items()
            }
    return out


# --- context-only rules ------------------------------------------------------------------


def rule_outcomes(items: Sequence[dict[str, Any]], rule: Callable[[str, str], float]) -> list[float]:
    """Outcomes of a scorer `rule(prompt, option) -> number` that reads no model."""
    return [outcome(rule(it["prompt"], it["answer"]), [rule(it["prompt"], w) for w in it["wrong"]]) for it in items]


def most_mentioned(prompt: str, option: str) -> float:
    """Rule: the option named most often in the context wins."""
    from tinystories.synth.probes import mentions

    return len(mentions(prompt, option.strip()))


def last_mentioned(prompt: str, option: str) -> float:
    """Rule: the option named last in the context wins."""
    from tinystories.synth.probes import mentions

    found = mentions(prompt, option.strip())
    return found[-1] if found else -1


RULES = {"most_mentioned": most_mentioned, "last_mentioned": last_mentioned}


# --- model scoring -------------------------------------------------------------------------


def continuation_ids(tokenizer: Any, prompt: str, option: str) -> tuple[list[int], list[int]]:
    """Token ids of `[eot] + prompt` and of the option after it.

    The option is cut from the encoding of prompt + option where that encoding
    starts with the prompt's own (so the option is tokenized as it would be in
    running text), and encoded alone otherwise.
    """
    ctx = tokenizer.encode(prompt)
    full = tokenizer.encode(prompt + option)
    cont = full[len(ctx) :] if full[: len(ctx)] == ctx and len(full) > len(ctx) else tokenizer.encode(option)
    return [tokenizer.eot_id, *ctx], cont


@torch.inference_mode()
def option_logprobs(
    model: Any, pairs: Sequence[tuple[list[int], list[int]]], batch: int, device: str | torch.device
) -> list[float]:
    """Summed log-probability of each continuation after its context, in order.

    Sequences longer than the model's context keep their last max_seq_len
    tokens (the continuation always fits: it is scored in full or refused).
    """
    context = model.config.max_seq_len
    vocab = model.config.vocab_size
    seqs = []
    for ctx, cont in pairs:
        if len(cont) >= context:
            raise UserError(f"a probe option of {len(cont)} tokens does not fit the model's context of {context}")
        seq = (ctx + cont)[-(context + 1) :]
        seqs.append((seq, len(cont)))
    # Sorting by length keeps padding small; the batch shrinks so B x T x V logits stay near 64M floats.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    scores = [0.0] * len(seqs)
    s = 0
    while s < len(order):
        T = len(seqs[order[min(s + batch, len(order)) - 1]][0]) - 1
        b = max(1, min(batch, (1 << 26) // max(1, T * vocab)))
        group = order[s : s + b]
        T = max(len(seqs[i][0]) for i in group) - 1
        idx = torch.zeros(len(group), T, dtype=torch.long)  # (B, T), right padded; padding is causally invisible
        for r, i in enumerate(group):
            seq = seqs[i][0]
            idx[r, : len(seq) - 1] = torch.as_tensor(seq[:-1])
        logp = torch.log_softmax(model(idx.to(device), logits="all").logits.float(), dim=-1)  # (B, T, V)
        for r, i in enumerate(group):
            seq, k = seqs[i]
            n = len(seq) - 1
            pos = torch.arange(n - k, n, device=logp.device)  # positions that predict the continuation
            tgt = torch.as_tensor(seq[n - k + 1 : n + 1], device=logp.device)
            scores[i] = float(logp[r, pos, tgt].sum())
        s += len(group)
    return scores


def score_items(
    model: Any, tokenizer: Any, items: Sequence[dict[str, Any]], batch: int = 64, device: str | torch.device = "cpu"
) -> tuple[list[float], list[list[float]]]:
    """Per item: its outcome (1, 0.5, 0) and the scores of [answer, *wrong]."""
    pairs, spans = [], []
    for it in items:
        options = [it["answer"], *it["wrong"]]
        spans.append((len(pairs), len(options)))
        pairs.extend(continuation_ids(tokenizer, it["prompt"], o) for o in options)
    flat = option_logprobs(model, pairs, batch, device)
    scores = [flat[start : start + k] for start, k in spans]
    return [outcome(s[0], s[1:]) for s in scores], scores


# --- the command ------------------------------------------------------------------------------


def load_items(cfg: ProbesConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The items `cfg` asks for and a description of where they came from."""
    if cfg.probes:
        return read_probes(cfg.probes), {"file": os.fspath(cfg.probes)}
    if cfg.n < 1:
        raise UserError(f"--n must be >= 1, got {cfg.n}")
    from tinystories.synth.probes import make_probes

    items = make_probes(cfg.n, seed=cfg.seed)
    return items, {"procedural": {"n": len(items), "seed": cfg.seed}}


def evaluate_probes(cfg: ProbesConfig) -> dict[str, Any]:
    """Score the probe items with the run's model; writes eval/probes.json in the run folder."""
    from tinystories.io import atomic_write_json
    from tinystories.run import load_run

    if not cfg.run:
        raise UserError("--run is required: the run folder to probe")
    if cfg.batch < 1:
        raise UserError(f"--batch must be >= 1, got {cfg.batch}")
    items, source = load_items(cfg)
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    outcomes, scores = score_items(loaded.model, loaded.tokenizer, items, cfg.batch, cfg.device)
    result = {
        "run": os.fspath(cfg.run),
        "step": loaded.step,
        **source,
        "method": "summed log-probability of each option after [eot] + prompt; right when the answer "
        "scores above every wrong option (ties count half); 95% Wilson interval",
        **report(items, outcomes),
        "baselines": {name: report(items, rule_outcomes(items, rule)) for name, rule in RULES.items()},
        "items": [
            {"id": it.get("id", str(i)), "category": it["category"], "outcome": o, "scores": s}
            for i, (it, o, s) in enumerate(zip(items, outcomes, scores))
        ],
    }
    if cfg.write:
        atomic_write_json(Path(cfg.run) / "eval" / "probes.json", result)
    return _brief(result)


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    # What the command prints: everything but the per-item lines and the rules' breakdowns.
    out = {k: v for k, v in result.items() if k not in ("items", "baselines")}
    out["baselines"] = {name: {k: b[k] for k in ("accuracy", "ci95")} for name, b in result["baselines"].items()}
    return out
