"""The evaluation stages of a run (eval/*.json): each known one as a summary of the figures a reader compares,
then one collapsed block of its configuration; any other file through the generic view.

Known files are read through their typed summaries (`tinystories.summaries`); the details block lists the
bookkeeping keys of the file as written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinystories.report import plots
from tinystories.report.html import esc, fmt, how_to_read, not_run, num, pct, stage, table
from tinystories.summaries import (
    Accuracy,
    ConsistencyResult,
    DiversityResult,
    EvalFile,
    JudgeResult,
    KGramsReference,
    LossFigures,
    LossResult,
    NamesReference,
    ProbesResult,
    Spread,
    StageFile,
    is_loss,
)

EVAL_STAGES = {
    "loss": "tinystories eval loss --run {run}",
    "probes": "tinystories eval probes --run {run}",
    "judge": "tinystories eval judge --run {run}",
    "diversity": "tinystories eval diversity --run {run}",
}
"""Evaluations every run can have, with the command that makes each (any other eval/*.json is shown too)."""

BOOKKEEPING = {
    "run", "step", "model", "environment", "settings", "sampling", "timings", "index", "version", "method",
    "templates", "checkpoint", "corpus", "bootstrap", "judge", "cost", "prompts", "tokenization", "plot", "sets",
    "measure", "context", "files", "dataset", "split", "source", "config", "device", "seed",
}
"""Keys that say how a result was made rather than what it is: they go into the stage's details block."""


def is_bookkeeping(key: str) -> bool:
    k = key.lower()
    return k in BOOKKEEPING or "sha256" in k or "fingerprint" in k or k.endswith("_s") or k.endswith("path")


def kv_rows(obj: Any, prefix: str = "", limit: int = 400) -> list[list[Any]]:
    """(dotted key, value) rows of a nested structure; long lists and records are summarised, not dumped."""
    rows: list[list[Any]] = []

    def walk(o: Any, p: str) -> None:
        if len(rows) >= limit:
            return
        if isinstance(o, dict):
            if plots.is_histogram(o):
                rows.append([p, f"histogram of {len(o['counts'])} bins"])
                return
            for k, v in o.items():
                walk(v, f"{p}.{k}" if p else str(k))
        elif isinstance(o, list):
            if o and all(isinstance(v, str | int | float | bool) or v is None for v in o):
                shown = ", ".join(fmt(v) if not isinstance(v, str) else v for v in o[:12])
                rows.append([p, shown + (f" ... ({len(o)} in all)" if len(o) > 12 else "")])
            else:
                rows.append([p, f"{len(o)} records"])
        else:
            text = o if not isinstance(o, str) or len(o) <= 300 else o[:300] + " ..."
            rows.append([p, text])

    walk(obj, prefix)
    return rows


def bookkeeping_table(data: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
    """The details block's content: the bookkeeping keys of a stage file (and `extra` ones) as rows."""
    keep = {k: v for k, v in data.items() if is_bookkeeping(k) or k in extra}
    return table(kv_rows(keep), ["key", "value"], "kv") if keep else ""


# --- loss ------------------------------------------------------------------------------------------


def loss_stage(files: list[LossResult]) -> str:
    """Every eval/loss*.json as one table: the texts side by side."""
    ps = [d.per_story or LossFigures() for d in files]
    st = [d.stream or LossFigures() for d in files]
    rows: list[list[Any]] = [
        ["loss (nats / token, per story)", *[p.loss for p in ps]],
        ["bits per byte", *[p.bits_per_byte for p in ps]],
        ["perplexity (per story)", *[p.perplexity for p in ps]],
        ["loss (nats / token, stream, as training's val loss)", *[s.loss for s in st]],
        ["stories", *[d.stories for d in files]],
        ["tokens", *[d.tokens for d in files]],
        ["bytes per token", *[d.bytes_per_token for d in files]],
    ]
    summary = table(rows, ["", *[d.label for d in files]], "fig") + how_to_read(
        "Lower is better. Bits per byte compares across texts and tokenizers; loss per token only between models "
        "with the same tokenizer. A low figure on procedural text beside a high one on real stories means the "
        "model learned the engine's templates rather than English at large.")
    detail = "".join(f"<h4>{esc(d.label)}</h4>" + bookkeeping_table(d.raw, ("per_story", "stream")) for d in files)
    return stage("eval-loss", "Loss and bits per byte", summary, detail)


# --- probes ----------------------------------------------------------------------------------------


def probe_rows(data: ProbesResult) -> list[dict[str, Any]]:
    """The bars of the probe chart: all items, then by set, by category, by procedural kind."""
    rows = [{"label": f"all items (n={_n(data)})", "group": "all", **_acc(data)}]
    for groups, word in ((data.by_source, "set"), (data.by_category, "category"), (data.by_kind, "kind")):
        for name, s in groups.items():
            rows.append({"label": f"{word}: {name} (n={_n(s)})", "group": word, **_acc(s)})
    return rows


def _n(s: Accuracy) -> Any:
    return "?" if s.n is None else s.n


def _acc(s: Accuracy) -> dict[str, Any]:
    return {"accuracy": s.accuracy, "ci95": s.ci95, "chance": s.chance}


def probes_stage(data: ProbesResult) -> str:
    rows = probe_rows(data)
    chart = plots.accuracy_bars(rows, "Probe accuracy by set and category (95% Wilson intervals)")
    trows = [[r["label"], pct(r["accuracy"], r["ci95"]), pct(r["chance"])] for r in rows]
    for name, block in (("byte-normalised scores", data.byte_normalised), ("greedy answer", data.greedy)):
        if block is not None:
            trows.append([f"all items, {name}", pct(block.accuracy, block.ci95), pct(block.chance)])
    for name, block in data.baselines.items():
        trows.append([f"context-only rule: {name.replace('_', ' ')}", pct(block.accuracy, block.ci95),
                      pct(block.chance)])
    summary = f'<div class="plots">{chart}<div>' + table(
        trows, ["items", "accuracy (95% interval)", "chance"], "fig") + "</div></div>" + how_to_read(
        "Each bar is the share of items where the model scores the right answer above every wrong one; the "
        "whisker is its 95% interval and the dashed mark is chance, so a whisker entirely right of its dash is "
        "above chance. The context-only rules show what reading the options' mentions alone would score.")
    curve = data.curve
    if curve is not None and len(curve) > 1:
        series: dict[str, list[tuple[float, float]]] = {}
        for p in curve:
            ll = p.get("log_likelihood") or {}
            for cat, v in [("all", ll), *[(k, x) for k, x in ll.items() if isinstance(x, dict)]]:
                if isinstance(v.get("accuracy"), int | float):
                    series.setdefault(cat, []).append((p["step"], v["accuracy"]))
        summary += plots.line_plot(series, "Probe accuracy over training", "step", "accuracy")
    detail = bookkeeping_table(data.raw) + (f"<p>{len(data.items)} scored items are in the file.</p>"
                                            if data.items is not None else "")
    return stage("eval-probes", "Probes", summary, detail)


# --- memorization and diversity ----------------------------------------------------------------------


def _mm(block: Spread | None) -> str:
    if block is None or block.mean is None:
        return "-"
    median = block.median if block.median is not None else float("nan")
    return f"{block.mean:.3f} ({median:.3f})"


def diversity_stage(data: DiversityResult) -> str:
    """The paper's memorization measures (its Figures 14-17): each against the same on true continuations."""
    figs, rows = [], []
    cvo = data.completion_vs_original
    if cvo is not None:
        rows.append(["Rouge-2 precision vs. the true continuation (higher: closer to the original)", _mm(cvo), "-"])
        figs.append(plots.histogram_pair(cvo.histogram, "Rouge-2 precision vs. true continuation (Fig. 14)",
                                         "Rouge-2 precision", "share of completions"))
    bg = data.between_generations
    if bg is not None:
        rows.append(["max Rouge-2 F with another completion (higher: completions repeat each other)", _mm(bg),
                     _mm(bg.reference)])
        figs.append(plots.histogram_pair(bg.histogram, "max Rouge-2 F vs. other completions (Fig. 15)",
                                         "Rouge-2 F", "share of completions", _hist(bg.reference),
                                         "true continuations"))
    for key, block in data.closest_training_story.items():
        k = key.replace("rouge", "")
        rows.append([f"max Rouge-{k} precision vs. any training story (higher: more copied)", _mm(block),
                     _mm(block.reference)])
        if block.closest_is_source is not None and block.n is not None:
            rows.append([f"closest training story (Rouge-{k}) is the one cut", f"{block.closest_is_source} of "
                         f"{block.n}", "-"])
        figs.append(plots.histogram_pair(block.histogram, f"max Rouge-{k} precision vs. training stories (Fig. 17)",
                                         f"Rouge-{k} precision", "share of completions", _hist(block.reference),
                                         "true continuations"))
    for k, kg in data.kgrams_in_corpus.items():
        ref = kg.reference
        rows.append([f"{k}-grams never seen in the corpus (higher: more novel text)", pct(kg.never_share),
                     pct(ref.never_share if ref else None)])
        figs.append(plots.histogram_pair(kg.histogram, f"{k}-grams: log10 frequency in the corpus (Fig. 16)",
                                         "log10 corpus frequency (-10: never)", "share of distinct k-grams",
                                         _hist(ref), "true continuations"))
    n = data.sampling.stories if data.sampling else None
    summary = (table(rows, ["measure", "model: mean (median)", "true continuations: mean (median)"], "fig")
               + (f"<p>{fmt(n)} training stories cut and completed by the model.</p>" if n else "")
               + (f'<div class="plots">{"".join(figs)}</div>' if any(figs) else "")
               + how_to_read(
                   "Blue is the model's completions, orange the true continuations of the same beginnings measured "
                   "the same way: a model that copies its corpus sits right of the orange bars in the Rouge plots "
                   "and has fewer never-seen k-grams than the true text; one that writes its own stories overlaps "
                   "them."))
    detail = bookkeeping_table(data.raw) + (f"<p>{len(data.items)} per-story records are in the file.</p>"
                                            if data.items is not None else "")
    return stage("eval-diversity", "Memorization and diversity", summary, detail)


def _hist(block: Spread | KGramsReference | None) -> Any:
    return block.histogram if block is not None else None


# --- judge -----------------------------------------------------------------------------------------


def judge_stage(data: JudgeResult) -> str:
    rows, bars = [], []
    for f, s in data.scores.items():
        if s is not None:
            rows.append([f, num(s.mean, s.ci95, 2), s.n, s.groups])
            bars.append((f, s.mean, s.ci95))
    summary = plots.score_bars(bars, "Judge's scores (95% bootstrap intervals over beginnings)", 0, 10,
                               "mean score (1-10)")
    summary += table(rows, ["score", "mean (95% interval)", "grades", "beginnings"], "fig")
    parse = data.parse
    if parse is not None:
        summary += (f"<p>{fmt(parse.graded)} completions graded; {fmt(parse.missing)} answers could not "
                    f"be read ({pct(parse.failure_rate)}).</p>")
    if data.not_comparable:
        summary += f"<p class='notrun'>Not comparable with the paper's figures: {esc(data.not_comparable)}</p>"
    summary += how_to_read("Scores are out of 10; the interval comes from resampling the story beginnings, so two "
                           "runs differ only where their intervals do not overlap.")
    detail = bookkeeping_table(data.raw, ("age_groups",)) + (
        f"<p>{len(data.completions)} graded completions are in the file.</p>"
        if data.completions is not None else "")
    return stage("eval-judge", "LLM judge", summary, detail)


# --- character consistency ---------------------------------------------------------------------------


def consistency_stage(data: ConsistencyResult) -> str:
    ref = data.reference or NamesReference()
    rows = [
        ["distinct character names per story (median)", num(data.median_distinct_names, digits=1),
         num(ref.median_distinct_names, digits=1)],
        ["stories that keep their protagonist", pct(data.protagonist_kept_share),
         pct(ref.protagonist_kept_share)],
    ]
    if data.said_once_share is not None:
        rows.append(["stories that name someone only once", pct(data.said_once_share), pct(ref.said_once_share)])
    if data.one_name_for_two_share is not None:
        rows.append(["stories that give two characters one name", pct(data.one_name_for_two_share),
                     pct(ref.one_name_for_two_share)])
    n = data.n_samples
    src = f" (reference: {esc(ref.source)})" if ref.source else ""
    summary = (table(rows, ["", "model", "reference"], "fig")
               + (f"<p>{fmt(n)} samples{src}.</p>" if n is not None else (f"<p>{src}</p>" if src else ""))
               + how_to_read("A model that keeps its characters names about as many of them per story as the "
                             "reference and keeps its protagonist to the end; more names and a lower share mean "
                             "characters appear and vanish. A name said only once is a stranger who comes and "
                             "goes, often a wrong name for a character the story already has. One name for "
                             "two characters (\"a cat named Jimmy\" in Jimmy's story) keeps the protagonist "
                             "share high without keeping the characters apart."))
    detail = bookkeeping_table(data.raw) + "".join(
        f"<p>{esc(k)}: {len(v)} per-sample values.</p>" for k, v in data.raw.items() if isinstance(v, list))
    return stage("eval-consistency", "Character consistency", summary, detail)


# --- anything else -----------------------------------------------------------------------------------


def _collect(obj: Any, prefix: str, scalars: list[list[Any]], hists: dict[str, tuple[Any, Any]],
             numbers: dict[str, list[float]], curves: dict[str, list[dict]]) -> None:
    """Results of an unknown file by dotted key: scalars, binned histograms (with their reference), number
    lists and per-step records."""
    if isinstance(obj, dict):
        if plots.is_histogram(obj):
            hists[prefix.rstrip(".")] = (obj, None)
            return
        paired = plots.is_histogram(obj.get("histogram")) and plots.is_histogram(
            (obj.get("reference") or {}).get("histogram") if isinstance(obj.get("reference"), dict) else None)
        if plots.is_histogram(obj.get("histogram")):
            hists[prefix.rstrip(".")] = (obj["histogram"], obj["reference"]["histogram"] if paired else None)
        for k, v in obj.items():
            if k == "histogram" and plots.is_histogram(v):
                continue
            if k == "reference" and paired:
                rest = {rk: rv for rk, rv in v.items() if rk != "histogram"}
                _collect(rest, f"{prefix}{k}.", scalars, hists, numbers, curves)
                continue
            _collect(v, f"{prefix}{k}.", scalars, hists, numbers, curves)
    elif isinstance(obj, list):
        key = prefix.rstrip(".")
        if obj and all(isinstance(v, int | float) and not isinstance(v, bool) for v in obj):
            if len(obj) >= 5:
                numbers[key] = [float(v) for v in obj]
            else:
                scalars.append([key, ", ".join(fmt(v) for v in obj)])
        elif obj and all(isinstance(v, dict) and ("step" in v or "tokens" in v) for v in obj):
            curves[key] = obj
        elif obj and all(isinstance(v, str | int | float | bool) for v in obj):
            scalars.append([key, ", ".join(str(v) for v in obj[:20]) + (" ..." if len(obj) > 20 else "")])
        elif obj:
            scalars.append([key, f"{len(obj)} records"])
    else:
        scalars.append([prefix.rstrip("."), obj])


def generic_stage(name: str, data: Any) -> str:
    """An eval file the report does not know: its results (numbers, histograms, curves) first, bookkeeping after."""
    results = {k: v for k, v in data.items() if not is_bookkeeping(k)} if isinstance(data, dict) else data
    scalars: list[list[Any]] = []
    hists: dict[str, tuple[Any, Any]] = {}
    numbers: dict[str, list[float]] = {}
    curves: dict[str, list[dict]] = {}
    _collect(results, "", scalars, hists, numbers, curves)
    shown = scalars[:40]
    parts = [table(shown, ["key", "value"], "kv") if shown else ""]
    figs = [plots.histogram_pair(h, key, key, "share", ref, "reference") for key, (h, ref) in list(hists.items())[:8]]
    figs += [plots.value_histogram(v, f"{key}: {len(v)} values", key) for key, v in list(numbers.items())[:6]]
    for key, recs in list(curves.items())[:4]:
        x = "step" if all("step" in r for r in recs) else "tokens"
        metrics = [k for k, v in recs[0].items() if k != x and isinstance(v, int | float) and not isinstance(v, bool)]
        series = {m: [(r[x], r[m]) for r in recs if isinstance(r.get(m), int | float)] for m in metrics[:6]}
        figs.append(plots.line_plot(series, f"{key} over {x}", x, "value"))
    if any(figs):
        parts.append(f'<div class="plots">{"".join(figs)}</div>')
    parts.append(how_to_read("This file has no dedicated view: its numbers are listed by key, its histograms "
                             "and number lists drawn, its per-step records drawn as curves."))
    detail = (bookkeeping_table(data) if isinstance(data, dict) else "") + (
        table(scalars[40:], ["key", "value"], "kv") if len(scalars) > 40 else "")
    return stage(f"eval-{name}", name, "".join(parts), detail)


KNOWN: dict[type[StageFile], Callable[[Any], str]] = {
    ProbesResult: probes_stage, DiversityResult: diversity_stage, JudgeResult: judge_stage,
    ConsistencyResult: consistency_stage,
}


def section_eval(files: list[EvalFile], run: Path) -> str:
    out, loss, present = [], [], set()
    for f in files:
        if f.error:
            out.append(f"<p class='notrun'>{esc(f.error)}</p>")
            continue
        if is_loss(f.name):
            if isinstance(f.summary, LossResult):
                loss.append(f.summary)
                present.add("loss")
            continue
        present.add(f.name)
        try:
            out.append(KNOWN[type(f.summary)](f.summary) if f.summary is not None else generic_stage(f.name, f.data))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # A file of an older or newer layout: show it generically rather than fail the page.
            out.append(f"<p class='notrun'>{esc(f.file)}: unexpected layout ({esc(type(e).__name__)}: {esc(e)}); "
                       "shown as is</p>" + generic_stage(f.name, f.data))
    if loss:
        out.insert(0, loss_stage(loss))
    for name, cmd in EVAL_STAGES.items():
        if name not in present:
            out.append(not_run(f"eval {name}", cmd.format(run=run)))
    return "".join(out)
