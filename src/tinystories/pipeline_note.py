"""The closing note of `tinystories pipeline`: what a pipeline folder's stages found, as a few lines of text.

Samples with their character names marked, name consistency, loss and bits
per byte on procedural vs real text, the probes, memorization, the judge, and
the targets a small model should reach. Everything is read through the
stages' typed summaries (`tinystories.summaries`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from tinystories.eval.probes import summarize
from tinystories.interp.summary import read_interp
from tinystories.summaries import (
    Accuracy,
    ConsistencyResult,
    DiversityResult,
    JudgeResult,
    LossFigures,
    LossResult,
    ProbesResult,
    Sample,
    read_eval,
    read_samples_file,
)
from tinystories.synth.probes import CATEGORY as PROBE_CATEGORY

STATE_FILE = "pipeline.json"
"""The pipeline folder's record of its stages."""
REPORT_FILE = "report.html"


def _shown_samples(samples: list[Sample], n: int) -> list[Sample]:
    # One completion of each prompt first (the recipe may ask for several per prompt).
    firsts = list({s.prompt: s for s in reversed(samples)}.values())[::-1]
    return (firsts + [s for s in samples if s not in firsts])[:n]


def _mark_names(text: str, names: list[str], bold: bool) -> str:
    """The text with each character name in bold (a terminal) or in [brackets] (a log file)."""
    if not names:
        return text
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    return pattern.sub(lambda m: f"\033[1m{m.group()}\033[0m" if bold else f"[{m.group()}]", text)


def _consistency_lines(r: ConsistencyResult | None) -> list[str]:
    if r is None:
        return []
    ref = r.reference
    line = (
        f"names: median {r.median_distinct_names:g} distinct names per sample, "
        f"{r.protagonist_kept_share:.0%} keep the protagonist's name to the end"
        + (f", {r.said_once_share:.0%} name someone only once" if r.said_once_share is not None else "")
        + (f", {r.one_name_for_two_share:.0%} give two characters one name"
           if r.one_name_for_two_share is not None else "")
        + f" ({r.n_samples} samples)"
    )
    if ref:
        kept = ref.protagonist_kept_share if ref.protagonist_kept_share is not None else float("nan")
        line += f"; real stories: median {ref.median_distinct_names:g}, {kept:.0%} keep it"
        if ref.said_once_share is not None:
            line += f", {ref.said_once_share:.0%} name someone once"
        if ref.one_name_for_two_share is not None:
            line += f", {ref.one_name_for_two_share:.0%} give two one name"
        line += f" ({ref.source})"
    return [line]


def _target_lines(model: Path) -> list[str]:
    """What a small model trained on this corpus should reach, and by how much each is met or missed."""
    found: list[tuple[str, float, float, bool, str]] = []  # name, value, target, higher is better, unit
    caveats: dict[str, str] = {}  # name -> what the figure does not show when it is met
    probes = read_eval(model, ProbesResult, "probes")
    context = probes.by_category.get("context") if probes else None
    if context and context.ci95:
        found.append(("context probes, lower end of the 95% interval", context.ci95[0] * 100, 60.0, True, "%"))
    heads = read_interp(model).heads
    if heads:
        copying = sum(h.kind in ("induction", "semantic") for h in heads.heads)
        found.append(("induction or semantic heads", copying, 1, True, ""))
    names = read_eval(model, ConsistencyResult, "consistency")
    if names and names.median_distinct_names is not None and names.protagonist_kept_share is not None:
        found.append(("distinct names per sample (median)", names.median_distinct_names, 3, False, ""))
        found.append(("samples keeping the protagonist", names.protagonist_kept_share * 100, 80.0, True, "%"))
        # A model can keep its hero's name by giving it to everyone; real stories do so in about 1%.
        doubled = names.one_name_for_two_share
        if doubled is not None and doubled >= 0.1:
            caveats["samples keeping the protagonist"] = f"; but {doubled:.0%} of samples give two characters one name"
    real = read_eval(model, LossResult, "loss_real")
    if real and real.per_story and real.per_story.bits_per_byte is not None:
        found.append(("bits per byte on real stories", real.per_story.bits_per_byte, 2.0, False, ""))
    lines = ["targets:"] if found else []
    missed = []
    for name, value, target, higher, unit in found:
        ok = value >= target if higher else value <= target
        gap = "met" if ok else f"missed by {abs(value - target):.3g}{' points' if unit else ''}"
        lines.append(f"  {name}: {value:.3g}{unit} ({'>=' if higher else '<='} {target:g}{unit}: {gap}"
                     f"{caveats.get(name, '') if ok else ''})")
        if not ok:
            missed.append(name)
    return lines + _why_lines(model, missed, probes, real)


def _at_chance(a: Accuracy) -> bool:
    return a.ci95 is not None and a.chance is not None and a.ci95[0] <= a.chance <= a.ci95[1]


def _why_lines(model: Path, missed: list[str], probes: ProbesResult | None, real: LossResult | None) -> list[str]:
    """For each missed target, the figures of this run that show why (nothing that the run did not measure)."""
    lines = []
    if any(name.startswith("context probes") for name in missed) and probes:
        kinds = {k: a for k, a in probes.by_kind.items() if PROBE_CATEGORY.get(k) == "context" and a.accuracy is not None}
        handwritten = _handwritten_context(probes)
        if handwritten:
            kinds["hand-written"] = handwritten
        if kinds:
            cells = ", ".join(f"{k} {a.accuracy:.1%}" + (" (at chance)" if _at_chance(a) else "")
                              for k, a in kinds.items())
            flat = [k for k, a in kinds.items() if _at_chance(a)]
            line = f"  why (context): context items by kind: {cells}"
            if flat:
                line += (f"; at chance, {' and '.join(flat)} {'is' if len(flat) == 1 else 'are'} not learned yet: "
                         "copying a name is learned long before binding a thing or a name to its owner")
            lines.append(line)
    train = _train_summary(model)
    copying = ("induction or semantic heads", "distinct names per sample (median)", "samples keeping the protagonist")
    if train.get("stopped_by_time_cap") and any(name in copying for name in missed):
        lines.append(f"  why (names): the time cap stopped training at {train.get('tokens', 0):,} tokens, short of the recipe's "
                     "budget; copying names from the context comes late in training (more time, or a faster "
                     "machine, trains the rest)")
    if any(name.startswith("bits per byte on real") for name in missed) and real and real.per_story:
        procedural = read_eval(model, LossResult, "loss_procedural")
        backend = _corpus_backend(model)
        if backend == "procedural" and procedural and procedural.per_story:
            lines.append(f"  why (real text): the corpus is the procedural engine's; the model reads its stories at "
                         f"{procedural.per_story.bits_per_byte:.2f} bits per byte and real ones at "
                         f"{real.per_story.bits_per_byte:.2f}: real stories use words and phrasing the engine does "
                         "not write, which only real or LLM-written stories in the corpus teach")
    return lines


def _handwritten_context(probes: ProbesResult) -> Accuracy | None:
    """The built-in (hand-written) context items' accuracy, from the per-item record."""
    items = [it for it in probes.items or [] if it.get("category") == "context" and not it["id"].startswith("proc-")]
    if not items:
        return None
    # Each item's scores are its options' (answer first), so chance is one over their number.
    r = summarize([it["outcome"] for it in items], [1 / len(it["scores"]) for it in items])
    return Accuracy(n=r["n"], accuracy=r["accuracy"], ci95=r["ci95"], chance=r["chance"], significant=r["significant"])


def _train_summary(model: Path) -> dict[str, Any]:
    """The train stage's summary in the pipeline folder's record ({} when there is none)."""
    path = model.parent / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))["stages"]["train"]["summary"] or {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _corpus_backend(model: Path) -> str | None:
    path = model.parent / "corpus" / "job.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("backend")
    except (OSError, ValueError, AttributeError):
        return None


def _loss_lines(model: Path) -> list[str]:
    found = {name: r for name in ("procedural", "real") if (r := read_eval(model, LossResult, f"loss_{name}"))}
    if not found:
        return []
    per = {name: r.per_story or LossFigures() for name, r in found.items()}
    return [
        f"{'':<22}" + "".join(f"{name:>14}" for name in found),
        f"{'stories':<22}" + "".join(f"{r.stories:>14}" for r in found.values()),
        f"{'loss (per story)':<22}" + "".join(f"{p.loss:>14.3f}" for p in per.values()),
        f"{'bits per byte':<22}" + "".join(f"{p.bits_per_byte:>14.3f}" for p in per.values()),
    ]


def _probe_lines(r: ProbesResult | None) -> list[str]:
    if r is None or r.ci95 is None:
        return []
    lo, hi = r.ci95
    lines = [f"probes: {r.accuracy:.1%} of {r.n} (95% CI {lo:.1%}-{hi:.1%}), chance {r.chance:.1%}"
             + ("" if r.significant else "  [not above chance]")]
    groups = {**(r.by_source if len(r.by_source) > 1 else {}), **r.by_category}
    for name, c in groups.items():
        ci = c.ci95 or [float("nan")] * 2
        lines.append(f"  {name:<10} {c.accuracy:.1%} of {c.n} (95% CI {ci[0]:.1%}-{ci[1]:.1%}), chance {c.chance:.1%}")
    return lines


def _diversity_lines(r: DiversityResult | None) -> list[str]:
    if r is None or r.completion_vs_original is None:
        return []
    k4 = r.kgrams_in_corpus.get("4")
    never = k4.never_share if k4 else None
    return [f"memorization: completions vs the cut stories' true endings, Rouge-2 precision mean "
            f"{r.completion_vs_original.mean:.3f}" + (f"; 4-grams never in the corpus {never:.1%}" if never is not None
                                                       else "")]


def _judge_lines(r: JudgeResult | None) -> list[str]:
    if r is None:
        return []
    cells = ", ".join(f"{k} {v.mean:.1f}" for k, v in r.scores.items() if v and v.mean is not None)
    model = r.judge.model if r.judge else None
    failures = r.parse.failure_rate if r.parse else None
    return [f"judge ({model}): {cells or 'no grades'}; parse failures {failures:.0%}"]


def _sweep_lines(folder: Path) -> list[str]:
    """Per shape (seeds pooled): validation loss and the probes, lowest loss first."""
    path = folder / "results.json"
    if not path.is_file():
        return []
    results = json.loads(path.read_text(encoding="utf-8"))
    lines = [f"sweep: {results['finished']} of {results['total']} points finished; per shape, lowest "
             "validation loss first (probes pooled over seeds, 95% interval):"]
    for r in sorted(results["shapes"], key=lambda r: r.get("val_loss") or math.inf):
        probes = f"probes {r['probes']:.2f} ({r['probes_lo']:.2f}-{r['probes_hi']:.2f})" if "probes" in r else ""
        lines.append(f"  {r['shape']}: {r['non_embedding_params']:,.0f} non-embedding params, "
                     f"{r['tokens']:,.0f} tokens, val loss {r['val_loss']:.3f}, {probes}")
    lines.append(f"sweep outputs: {folder / 'results.csv'}, {folder / 'report.html'}")
    return lines


CHECKS = {"all_words": "stories with all words", "words_present": "words present",
          "sentence": "stories with the sentence"}


def _instruct_lines(folder: Path) -> list[str]:
    """The required checks of the story model and the fine-tuned one, in- and out-of-distribution."""
    lines = []
    for kind, sets in (("id", "in-distribution"), ("ood", "OOD (Words + Summary)")):
        for label, model in (("story", "story model"), ("instruct", "fine-tuned")):
            f = folder / f"{label}-{kind}.json"
            if not f.is_file():
                continue
            checks = json.loads(f.read_text(encoding="utf-8"))["checks"]
            cells = ", ".join(f"{CHECKS.get(name, name)} {c['mean']:.1%} [{c['ci95'][0]:.1%}, {c['ci95'][1]:.1%}]"
                              for name, c in checks.items())
            lines.append(f"  {model}, {sets}: {cells}")
    return ["instruct, `eval instruct` checks (95% interval over sets):", *lines] if lines else []


def _model_lines(model: Path, n_samples: int, bold: bool) -> list[str]:
    """The model's samples with their names marked, name consistency, losses, probes, memorization, judge, targets."""
    lines = []
    samples = model / "samples" / "samples.json"
    if samples.is_file():
        lines.append("samples (character names marked):")
        for s in _shown_samples(read_samples_file(samples).samples, n_samples):
            text = " ".join((s.prompt + s.completion).split())
            lines.append(f"  > {_mark_names(text, s.names or [], bold)}")
    lines += _consistency_lines(read_eval(model, ConsistencyResult, "consistency"))
    lines += _loss_lines(model)
    lines += _probe_lines(read_eval(model, ProbesResult, "probes"))
    lines += _diversity_lines(read_eval(model, DiversityResult, "diversity"))
    lines += _judge_lines(read_eval(model, JudgeResult, "judge"))
    lines += _target_lines(model)
    return lines


def closing_note(root: Path, n_samples: int = 3, bold: bool = False) -> str:
    """Samples with their names marked, name consistency, loss and bits per byte on procedural vs real
    text, and the probes, from the stage outputs; an experiment's results when the recipe ran one."""
    model = root / "model"
    lines = [f"== {root} =="]
    folders = [str(root / d) for d in ("sweep", "instruct", "ab") if (root / d).is_dir()]
    if model.is_dir():
        lines += _model_lines(model, n_samples, bold)
        folders.insert(0, f"{model} (eval/, samples/, interp/)")
    lines += _sweep_lines(root / "sweep") + _instruct_lines(root / "instruct" / "eval")
    if (root / "ab" / "results.md").is_file():
        lines += ["curriculum A/B:", *(root / "ab" / "results.md").read_text(encoding="utf-8").splitlines()]
    lines.append(f"outputs: {', '.join(folders)}; records: {root / STATE_FILE}")
    report = root / REPORT_FILE
    if report.is_file():
        lines.append(f"report: {report}")
    return "\n".join(lines)
