"""`tinystories eval probes`: capability probes scored by log-likelihood and by greedy completion.

A probe item (format in docs/probes.md) is a context (`prompt`) and continuations: one right
(`answer`) and one or more `wrong`. The model reads `[eot] + prompt` as it read
stories in training; each option's score is the summed log-probability of its
tokens after the context. An item counts as right when the answer scores above
every wrong option (a k-way tie for the best score counts 1/k, so a model that
cannot tell the options apart sits at chance).

Three measures, each overall and per category (fact / reasoning / context) with
a 95% Wilson score interval:

- `accuracy`: the summed log-probability decides;
- `byte_normalised`: the log-probability divided by the option's length in
  UTF-8 bytes decides (longer options are not penalised for their length);
- `greedy`: the model's greedy completion of the prompt (up to the end of its
  first sentence) contains one of the item's `accept` strings (default: the
  answer) before it contains a wrong option. Open generation has no chance
  level (reported as null).

Beside the model, rules that read no model ("the option mentioned most often in
the context", "the option mentioned last", "the shortest option") show how far
shallow cues go; the built-in and procedural sets are built to hold them near
chance. The interval treats items as independent; items that share a context
(mirrored pairs) tend to be right or wrong together once a model reads the
context, so read the interval as a close guide rather than an exact one.

Items: the hand-written sets in `eval/sets/probes_*.jsonl` (fact, reasoning,
context; `docs/probes.md` says what each tests and how they were checked) by
default; `--sets procedural` / `--n N` for the procedural engine's items
(`synth/probes.py`); `--probes FILE` for users' own JSONL. `--checkpoints all`
scores every saved step of the run for emergence curves.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tinystories import __version__
from tinystories.config import check
from tinystories.data.stories import json_lines
from tinystories.errors import UserError
from tinystories.eval.loss import target_logprobs
from tinystories.io import atomic_save, atomic_write_json, sha256_file
from tinystories.loss import IGNORE_INDEX
from tinystories.options import RunOptions
from tinystories.rundir import (
    MODEL_FILE,
    config_dict,
    environment,
    list_checkpoints,
    load_run,
    read_state,
    with_device,
)
from tinystories.sample import SampleParams, complete, prompt_ids
from tinystories.synth.probes import KINDS, make_probes, mentions

CATEGORIES = ("fact", "reasoning", "context")
Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""
SETS_DIR = Path(__file__).with_name("sets")
"""Folder of the built-in eval sets (package data)."""
BUILTIN_SETS = {c: SETS_DIR / f"probes_{c}.jsonl" for c in CATEGORIES}
"""The hand-written probe set of each category."""
SET_NAMES = ("builtin", *CATEGORIES, "procedural")
"""Names `--sets` takes: all hand-written sets, one of them, or the procedural engine's items."""


@dataclass
class ProbesConfig(RunOptions):
    """`tinystories eval probes`: multiple-choice probes scored by the model's log-likelihood."""

    run: str = field(default="", metadata={"required": True})
    sets: str = ""
    """Item sets, comma-separated: builtin (the hand-written fact, reasoning and context sets), fact, reasoning, context, procedural (--n items); default: builtin, unless --probes or --n asks for other items."""
    probes: str | None = None
    """Probe items of your own (JSONL, the item format of docs/probes.md), scored beside any --sets."""
    n: int = field(default=0, metadata={"min": 0})
    """Procedural items to make (rounded up to whole mirrored pairs); > 0 adds them (default with --sets procedural: 1000)."""
    seed: int = 1
    """Seed of the procedural items (drawn from their own random stream, never the corpus's)."""
    checkpoints: str = ""
    """Score several checkpoints for an emergence curve: all, or steps like 100,200 (default: just --step / the latest)."""
    max_new_tokens: int = field(default=16, metadata={"min": 0})
    """Greedy completion length (tokens) for the accept-string measure; 0 = skip that measure."""
    batch: int = field(default=64, metadata={"min": 1})
    """Sequences per forward at most (fewer when the vocabulary is large)."""
    write: bool = True
    """Write eval/probes.json (and eval/probes_curve.png for several checkpoints) in the run folder."""


# --- items ---------------------------------------------------------------------------


def read_probes(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Probe items from a JSONL file, checked against the schema (errors name the line)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no probe file at {path}")
    items = []
    with open(path, encoding="utf-8") as f:
        for line_no, item in json_lines(f, str(path)):
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
    accept = item.get("accept", [])
    if not isinstance(accept, list) or not all(isinstance(a, str) and a.strip() for a in accept):
        raise UserError(f"{where}: 'accept' must be a list of non-empty strings")


def builtin_items(categories: Sequence[str] = CATEGORIES) -> list[dict[str, Any]]:
    """The hand-written probe items of `categories`, in file order."""
    return [it for c in categories for it in read_probes(BUILTIN_SETS[c])]


# --- how the hand-written sets are kept honest -----------------------------------------------

_FUNCTION_WORDS = """a an the and or but so because then when if as of in on at to for with from into by up down out
    over under after before about than that this these those it its he she they him her them his their i
    you we me my your our us is are was were be been being am do does did have has had will would can
    could should may might must not no very too just all some any every what who where which how there
    here one"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())
"""Words kept in a sentence pattern; every other word is masked."""
LENGTH_TOLERANCE = 3
"""Most bytes by which a wrong option of a built-in item may differ in length from the answer."""
MAX_PATTERN_USES = 5
"""Most times one sentence pattern may occur across the built-in sets."""


def sentence_patterns(prompt: str) -> list[str]:
    """The pattern of each sentence of `prompt` (the unfinished last one included).

    A pattern is the sentence's words, lower-cased, with every word outside
    FUNCTION_WORDS replaced by `_` and runs of `_` merged: "Tom ran to the
    hill to fly his" -> "_ to the _ to _ his". Patterns of fewer than three
    words ("_ was _") say too little to count.
    """
    out = []
    for sentence in re.split(r"(?<=[.!?])[\"']?\s+", prompt):
        words = re.findall(r"[a-z']+", sentence.lower())
        masked = re.sub(r"_( _)+", "_", " ".join(w if w in FUNCTION_WORDS else "_" for w in words))
        if len(masked.split()) >= 3:
            out.append(masked)
    return out


def lint_items(items: Sequence[dict[str, Any]]) -> list[str]:
    """Problems of a hand-written set: overused sentence patterns, options of unmatched length, repeats."""
    problems = []
    uses = Counter(p for it in items for p in sentence_patterns(it["prompt"]))
    problems += [f"pattern {p!r} used {k} times" for p, k in uses.items() if k > MAX_PATTERN_USES]
    seen = set()
    for it in items:
        n = len(it["answer"].encode("utf-8"))
        for w in it["wrong"]:
            if abs(len(w.encode("utf-8")) - n) > LENGTH_TOLERANCE:
                problems.append(f"{it['id']}: {w!r} and the answer {it['answer']!r} differ by more than "
                                f"{LENGTH_TOLERANCE} bytes")
        key = (it["prompt"], it["answer"])
        if key in seen:
            problems.append(f"{it['id']}: the same prompt and answer as an earlier item")
        seen.add(key)
    return problems


# --- statistics ----------------------------------------------------------------------


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion `correct / n` (correct may be fractional)."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n right the bound is exactly 0 or 1; rounding must not lift it off.
    low = 0.0 if correct <= 0 else max(0.0, centre - half)
    high = 1.0 if correct >= n else min(1.0, centre + half)
    return (low, high)


def outcome(answer_score: float, wrong_scores: Sequence[float]) -> float:
    """1 when the answer scores above every wrong option, 1/k when it ties k-1 of them for best, else 0."""
    best = max(wrong_scores)
    if answer_score != best:
        return 1.0 if answer_score > best else 0.0
    return 1.0 / (1 + sum(w == best for w in wrong_scores))


def summarize(outcomes: Sequence[float], chances: Sequence[float] | None) -> dict[str, Any]:
    """Accuracy, its 95% interval, chance and the margin over chance of a group of items.

    `chances` None: open-ended answers (greedy completion), which have no chance level.
    """
    n = len(outcomes)
    correct = float(sum(outcomes))
    acc = correct / n if n else float("nan")
    low, high = wilson_interval(correct, n)
    if chances is None:
        return {"n": n, "correct": correct, "accuracy": acc, "ci95": [low, high], "chance": None,
                "above_chance": None, "significant": None}
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
    kind = str(item.get("id", "")).rsplit("-", 1)[-1]
    return kind if kind in KINDS else None


def report(items: Sequence[dict[str, Any]], outcomes: Sequence[float], open_ended: bool = False) -> dict[str, Any]:
    """Overall, per-source (builtin, procedural, ...), per-category and per-kind summaries of `outcomes`.

    Chance is 1 / number of options (multiple choice), or none when `open_ended`.
    """
    chances = None if open_ended else [1.0 / (1 + len(it["wrong"])) for it in items]
    out: dict[str, Any] = summarize(outcomes, chances)
    groups: dict[str, dict[str, list[int]]] = {"by_source": {}, "by_category": {}, "by_kind": {}}
    for i, it in enumerate(items):
        groups["by_source"].setdefault(str(it.get("source") or "file"), []).append(i)
        groups["by_category"].setdefault(it["category"], []).append(i)
        kind = _kind(it)
        if kind is not None:
            groups["by_kind"].setdefault(kind, []).append(i)
    for name, members in groups.items():
        if members:
            out[name] = {
                key: summarize([outcomes[i] for i in idx], None if chances is None else [chances[i] for i in idx])
                for key, idx in members.items()
            }
    return out


# --- context-only rules ------------------------------------------------------------------


def rule_outcomes(items: Sequence[dict[str, Any]], rule: Callable[[str, str], float]) -> list[float]:
    """Outcomes of a scorer `rule(prompt, option) -> number` that reads no model."""
    return [outcome(rule(it["prompt"], it["answer"]), [rule(it["prompt"], w) for w in it["wrong"]]) for it in items]


def most_mentioned(prompt: str, option: str) -> float:
    """Rule: the option named most often in the context wins."""
    return len(mentions(prompt, option.strip()))


def last_mentioned(prompt: str, option: str) -> float:
    """Rule: the option named last in the context wins."""
    found = mentions(prompt, option.strip())
    return found[-1] if found else -1


def shortest(prompt: str, option: str) -> float:
    """Rule: the shortest option (in bytes) wins; it reads neither context nor model."""
    return -len(option.encode("utf-8"))


RULES = {"most_mentioned": most_mentioned, "last_mentioned": last_mentioned, "shortest": shortest}


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


def option_logprobs(
    model: Any, pairs: Sequence[tuple[list[int], list[int]]], batch: int, device: str | torch.device
) -> list[float]:
    """Summed log-probability of each continuation after its context, in order.

    Sequences longer than the model's context keep their last max_seq_len
    tokens (the continuation always fits: it is scored in full or refused).
    """
    if device == "auto":  # wherever the model is
        device = next(model.parameters()).device
    context = model.config.max_seq_len
    windows = []
    for ctx, cont in pairs:
        if len(cont) >= context:
            raise UserError(f"a probe option of {len(cont)} tokens does not fit the model's context of {context}")
        seq = (ctx + cont)[-(context + 1) :]
        n, k = len(seq) - 1, len(cont)  # predictions, of which the last k are the continuation's
        windows.append((seq[:-1], [IGNORE_INDEX] * (n - k) + seq[n - k + 1 :]))
    return target_logprobs(model, windows, batch, device)


def score_items(
    model: Any, tokenizer: Any, items: Sequence[dict[str, Any]], batch: int = 64, device: str | torch.device = "cpu"
) -> tuple[list[float], list[list[float]]]:
    """Per item: its outcome (1, 1/k, 0) and the summed log-probabilities of [answer, *wrong]."""
    pairs: list[tuple[list[int], list[int]]] = []
    spans: list[tuple[int, int]] = []
    for it in items:
        options = [it["answer"], *it["wrong"]]
        spans.append((len(pairs), len(options)))
        pairs.extend(continuation_ids(tokenizer, it["prompt"], o) for o in options)
    flat = option_logprobs(model, pairs, batch, device)
    scores = [flat[start : start + k] for start, k in spans]
    return [outcome(s[0], s[1:]) for s in scores], scores


def byte_normalised(item: dict[str, Any], scores: Sequence[float]) -> list[float]:
    """Log-probability per UTF-8 byte of each option of `item` ([answer, *wrong] order, as `scores`)."""
    options = [item["answer"], *item["wrong"]]
    return [s / max(1, len(o.encode("utf-8"))) for s, o in zip(scores, options)]


# --- greedy completion ---------------------------------------------------------------------


def first_sentence(text: str) -> str:
    """`text` up to and including its first sentence end (. ! ? or a line break)."""
    m = re.search(r"[.!?\n]", text)
    return text[: m.end()] if m else text


def _first_at(text: str, strings: Sequence[str]) -> int | None:
    """Offset of the earliest of `strings` in `text`, or None.

    Matching ignores case and starts at a word: "smil" finds "smiled", "cat"
    does not find "scatter".
    """
    found = []
    for s in strings:
        m = re.search(rf"\b{re.escape(s.strip())}", text, re.IGNORECASE)
        if m:
            found.append(m.start())
    return min(found) if found else None


def accept_outcome(completion: str, item: dict[str, Any]) -> float:
    """1 when `completion` names an accept string (default: the answer) before any wrong option, else 0."""
    right = _first_at(completion, item.get("accept") or [item["answer"]])
    wrong = _first_at(completion, item["wrong"])
    return 1.0 if right is not None and (wrong is None or right < wrong) else 0.0


def greedy_completions(
    model: Any, tokenizer: Any, items: Sequence[dict[str, Any]], max_new_tokens: int, batch: int = 64
) -> list[str]:
    """The first sentence of each prompt's greedy (argmax) completion, at most `max_new_tokens` tokens."""
    keep = model.config.max_seq_len - max_new_tokens
    if keep < 2:
        raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room in the model's context")
    # Long prompts keep their end (the part the answer depends on most), as the scorer does.
    prompts = [prompt_ids(tokenizer, it["prompt"])[-keep:] for it in items]
    done = complete(model, prompts, SampleParams(temperature=0.0, max_new_tokens=max_new_tokens),
                    eot_id=tokenizer.eot_id, max_batch=batch)
    return [first_sentence(tokenizer.decode(c.tokens)) for c in done]


# --- the command ------------------------------------------------------------------------------


def _sha256_items(items: Sequence[dict[str, Any]]) -> str:
    # Procedural items have no file; their canonical JSON is what gets hashed.
    text = "".join(json.dumps(it, sort_keys=True, ensure_ascii=False) + "\n" for it in items)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_items(cfg: ProbesConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The items `cfg` asks for, and one record per set: its name, file, item count and sha256."""
    names = [s.strip() for s in cfg.sets.split(",") if s.strip()]
    for name in names:
        if name not in SET_NAMES:
            raise UserError(f"unknown probe set {name!r}; --sets takes {', '.join(SET_NAMES)}")
    check(cfg)
    if cfg.n > 0 and "procedural" not in names:
        names.append("procedural")
    if not names and not cfg.probes:
        names = ["builtin"]
    items: list[dict[str, Any]] = []
    sets: list[dict[str, Any]] = []
    categories = [c for c in CATEGORIES if "builtin" in names or c in names]
    for c in categories:
        part = builtin_items([c])
        sets.append({"name": c, "file": f"eval/sets/{BUILTIN_SETS[c].name}", "n": len(part),
                     "sha256": sha256_file(BUILTIN_SETS[c])})
        items += part
    if "procedural" in names:
        part = make_probes(cfg.n or 1000, seed=cfg.seed)
        sets.append({"name": "procedural", "n": len(part), "seed": cfg.seed, "sha256": _sha256_items(part)})
        items += part
    if cfg.probes:
        part = read_probes(cfg.probes)
        sets.append({"name": "file", "file": os.fspath(cfg.probes), "n": len(part), "sha256": sha256_file(cfg.probes)})
        items += part
    return items, sets


def probe_model(model: Any, tokenizer: Any, items: Sequence[dict[str, Any]], cfg: ProbesConfig) -> dict[str, Any]:
    """All three measures of one model on `items`, with per-item detail."""
    outcomes, scores = score_items(model, tokenizer, items, cfg.batch, cfg.device)
    per_byte = [byte_normalised(it, s) for it, s in zip(items, scores)]
    norm = [outcome(s[0], s[1:]) for s in per_byte]
    result = {**report(items, outcomes), "byte_normalised": report(items, norm)}
    completions: list[str | None] = [None] * len(items)
    greedy: list[float | None] = [None] * len(items)
    if cfg.max_new_tokens > 0:
        texts = greedy_completions(model, tokenizer, items, cfg.max_new_tokens, cfg.batch)
        right = [accept_outcome(c, it) for c, it in zip(texts, items)]
        result["greedy"] = report(items, right, open_ended=True)
        completions, greedy = list(texts), list(right)
    result["items"] = [
        {"id": it.get("id", str(i)), "category": it["category"], "outcome": o, "outcome_byte_normalised": on,
         "scores": s, "completion": c, "outcome_greedy": g}
        for i, (it, o, on, s, c, g) in enumerate(zip(items, outcomes, norm, scores, completions, greedy))
    ]
    return result


def _steps(cfg: ProbesConfig) -> Sequence[int | None]:
    """The checkpoint steps `cfg` asks for (None = the latest)."""
    spec = cfg.checkpoints.strip()
    if not spec:
        return [cfg.step]
    if cfg.step is not None:
        raise UserError("give --step or --checkpoints, not both")
    have = [s for s, _ in list_checkpoints(cfg.run)]
    if not have:
        raise UserError(f"run {cfg.run} has no checkpoint")
    if spec == "all":
        return list(have)
    try:
        steps = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--checkpoints takes 'all' or steps like 100,200, got {spec!r}") from None
    if not steps:
        raise UserError(f"--checkpoints takes 'all' or steps like 100,200, got {spec!r}")
    missing = [str(s) for s in steps if s not in have]
    if missing:
        raise UserError(f"run {cfg.run} has no checkpoint at step {', '.join(missing)} "
                        f"(have: {', '.join(map(str, have))})")
    return steps


def _curve_point(step: int, tokens: Any, r: dict[str, Any]) -> dict[str, Any]:
    point: dict[str, Any] = {"step": step, "tokens": tokens}
    for measure, block in (("log_likelihood", r), ("byte_normalised", r["byte_normalised"]),
                           ("greedy", r.get("greedy"))):
        if block is None:
            continue
        point[measure] = {"accuracy": block["accuracy"], "ci95": block["ci95"]} | {
            c: {"accuracy": s["accuracy"], "ci95": s["ci95"]} for c, s in block["by_category"].items()
        }
    return point


def evaluate_probes(cfg: ProbesConfig) -> dict[str, Any]:
    """Score the probe items with the run's model; writes eval/probes.json in the run folder."""
    cfg = with_device(cfg)
    check(cfg)
    if not Path(cfg.run).is_dir():
        raise UserError(f"no run folder at {cfg.run}")
    items, sets = load_items(cfg)
    curve, result = [], {}
    for step in _steps(cfg):
        loaded = load_run(cfg.run, step=step, device=cfg.device)
        result = probe_model(loaded.model, loaded.tokenizer, items, cfg)
        tokens = read_state(loaded.path).get("tokens")
        curve.append(_curve_point(loaded.step, tokens, result))
    # The full record is the last (newest) checkpoint's; the curve holds every scored step.
    result = {
        "run": os.fspath(cfg.run),
        "step": loaded.step,
        "model": {
            "checkpoint": os.fspath(loaded.path),
            "weights_sha256": sha256_file(loaded.path / MODEL_FILE),
            "config": config_dict(loaded.config.model),
            "tokenizer_sha256": loaded.tokenizer.sha256,
        },
        "sets": sets,
        "settings": {
            "sets": cfg.sets, "probes": cfg.probes, "n": cfg.n, "seed": cfg.seed, "checkpoints": cfg.checkpoints,
            "max_new_tokens": cfg.max_new_tokens, "batch": cfg.batch, "device": cfg.device,
            "greedy": "temperature 0 (argmax), first sentence of the completion",
        },
        "method": "summed log-probability of each option after [eot] + prompt; right when the answer scores "
        "above every wrong option (a k-way tie counts 1/k); byte_normalised divides each option's score by its "
        "UTF-8 length; greedy: the completion names an accept string before any wrong option; 95% Wilson intervals",
        "version": __version__,
        "environment": environment(cfg.device),
        **result,
        "baselines": {name: report(items, rule_outcomes(items, rule)) for name, rule in RULES.items()},
    }
    if len(curve) > 1:
        result["curve"] = curve
    if cfg.write:
        out = Path(cfg.run) / "eval"
        atomic_write_json(out / "probes.json", result)
        if len(curve) > 1:
            result["plot"] = plot_curve(curve, out / "probes_curve.png", result["by_category"])
            if result["plot"]:
                atomic_write_json(out / "probes.json", result)
    return _brief(result)


def plot_curve(curve: Sequence[dict[str, Any]], path: Path, chance: dict[str, Any]) -> str | None:
    """Draw accuracy per category over training steps as a PNG; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [p["step"] for p in curve]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, measure in zip(axes, ("log_likelihood", "greedy")):
        for cat in CATEGORIES:
            if cat not in curve[-1].get(measure, {}):
                continue
            acc = [p[measure][cat]["accuracy"] for p in curve]
            low = [p[measure][cat]["ci95"][0] for p in curve]
            high = [p[measure][cat]["ci95"][1] for p in curve]
            (line,) = ax.plot(steps, acc, marker="o", label=cat)
            ax.fill_between(steps, low, high, alpha=0.15, color=line.get_color())
            if measure == "log_likelihood" and cat in chance:
                ax.axhline(chance[cat]["chance"], ls=":", color=line.get_color())
        ax.set_title(f"{measure.replace('_', ' ')} accuracy (95% CI; dotted: chance)" if measure != "greedy"
                     else "greedy completion names the answer")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        if ax.lines:  # a measure no category has (e.g. greedy, when no item names its answer) stays empty
            ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda name: fig.savefig(name, format="png", dpi=100))
    plt.close(fig)
    return path.name


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    # What the command prints: the headline figures per category, without per-item lines or the rules' detail.
    out = {k: result[k] for k in ("run", "step", "n", "correct", "accuracy", "ci95", "chance", "above_chance",
                                  "significant")}
    out["sets"] = {s["name"]: s["n"] for s in result["sets"]}
    for key in ("by_source", "by_category", "by_kind"):
        if key in result:
            out[key] = result[key]
    for measure in ("byte_normalised", "greedy"):
        if measure in result:
            block = result[measure]
            out[measure] = {"accuracy": block["accuracy"], "ci95": block["ci95"]} | {
                c: {"accuracy": s["accuracy"], "ci95": s["ci95"]} for c, s in block["by_category"].items()
            }
    out["baselines"] = {name: {k: b[k] for k in ("accuracy", "ci95")} for name, b in result["baselines"].items()}
    if "curve" in result:
        out["curve"] = [{"step": p["step"], "accuracy": p["log_likelihood"]["accuracy"]} for p in result["curve"]]
        out["plot"] = result.get("plot")
    return out
