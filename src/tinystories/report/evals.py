"""The evaluation stages of a run (eval/*.json): each known one as a summary of the figures a reader compares,
then one collapsed block of its configuration; any other file through the generic view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinystories.report import plots
from tinystories.report.html import esc, fmt, how_to_read, not_run, num, pct, stage, table

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


def read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return None, f"{path.name} could not be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


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


def loss_label(name: str, data: dict[str, Any]) -> str:
    """'procedural' / 'real' for the pipeline's files, else where the text came from."""
    if name.startswith("loss_"):
        return name[len("loss_"):]
    if data.get("dataset"):
        return f"{Path(str(data['dataset'])).name} ({data.get('split', '')})"
    files = data.get("files") or []
    return Path(str(files[0])).name if files else name


def loss_stage(files: dict[str, dict[str, Any]]) -> str:
    """Every eval/loss*.json as one table: the texts side by side."""
    cols = [(loss_label(n, d), d) for n, d in files.items()]
    ps = [d.get("per_story", {}) for _, d in cols]
    st = [d.get("stream", {}) for _, d in cols]
    rows = [
        ["loss (nats / token, per story)", *[p.get("loss") for p in ps]],
        ["bits per byte", *[p.get("bits_per_byte") for p in ps]],
        ["perplexity (per story)", *[p.get("perplexity") for p in ps]],
        ["loss (nats / token, stream, as training's val loss)", *[s.get("loss") for s in st]],
        ["stories", *[d.get("stories") for _, d in cols]],
        ["tokens", *[d.get("tokens") for _, d in cols]],
        ["bytes per token", *[d.get("bytes_per_token") for _, d in cols]],
    ]
    summary = table(rows, ["", *[c for c, _ in cols]], "fig") + how_to_read(
        "Lower is better. Bits per byte compares across texts and tokenizers; loss per token only between models "
        "with the same tokenizer. A low figure on procedural text beside a high one on real stories means the "
        "model learned the engine's templates rather than English at large.")
    detail = "".join(f"<h4>{esc(c)}</h4>" + bookkeeping_table(d, ("per_story", "stream")) for c, d in cols)
    return stage("eval-loss", "Loss and bits per byte", summary, detail)


# --- probes ----------------------------------------------------------------------------------------


def probe_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The bars of the probe chart: all items, then by set, by category, by procedural kind."""
    rows = [{"label": f"all items (n={data.get('n', '?')})", "group": "all", **_acc(data)}]
    for key, word in (("by_source", "set"), ("by_category", "category"), ("by_kind", "kind")):
        group = data.get(key)
        for name, s in group.items() if isinstance(group, dict) else ():
            if isinstance(s, dict):
                rows.append({"label": f"{word}: {name} (n={s.get('n', '?')})", "group": word, **_acc(s)})
    return rows


def _acc(s: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": s.get("accuracy"), "ci95": s.get("ci95"), "chance": s.get("chance")}


def probes_stage(data: dict[str, Any]) -> str:
    rows = probe_rows(data)
    chart = plots.accuracy_bars(rows, "Probe accuracy by set and category (95% Wilson intervals)")
    trows = [[r["label"], pct(r["accuracy"], r["ci95"]), pct(r["chance"])] for r in rows]
    for name, block in (("byte-normalised scores", data.get("byte_normalised")), ("greedy answer", data.get("greedy"))):
        if isinstance(block, dict):
            trows.append([f"all items, {name}", pct(block.get("accuracy"), block.get("ci95")),
                          pct(block.get("chance"))])
    for name, block in (data.get("baselines") or {}).items():
        if isinstance(block, dict):
            trows.append([f"context-only rule: {name.replace('_', ' ')}", pct(block.get("accuracy"), block.get("ci95")),
                          pct(block.get("chance"))])
    summary = f'<div class="plots">{chart}<div>' + table(
        trows, ["items", "accuracy (95% interval)", "chance"], "fig") + "</div></div>" + how_to_read(
        "Each bar is the share of items where the model scores the right answer above every wrong one; the "
        "whisker is its 95% interval and the dashed mark is chance, so a whisker entirely right of its dash is "
        "above chance. The context-only rules show what reading the options' mentions alone would score.")
    curve = data.get("curve")
    if isinstance(curve, list) and len(curve) > 1:
        series: dict[str, list[tuple[float, float]]] = {}
        for p in curve:
            ll = p.get("log_likelihood") or {}
            for cat, v in [("all", ll), *[(k, x) for k, x in ll.items() if isinstance(x, dict)]]:
                if isinstance(v.get("accuracy"), int | float):
                    series.setdefault(cat, []).append((p["step"], v["accuracy"]))
        summary += plots.line_plot(series, "Probe accuracy over training", "step", "accuracy")
    detail = bookkeeping_table(data) + (f"<p>{len(data['items'])} scored items are in the file.</p>"
                                        if isinstance(data.get("items"), list) else "")
    return stage("eval-probes", "Probes", summary, detail)


# --- memorization and diversity ----------------------------------------------------------------------


def _mm(block: dict[str, Any]) -> str:
    if not isinstance(block, dict) or "mean" not in block:
        return "-"
    return f"{block['mean']:.3f} ({block.get('median', float('nan')):.3f})"


def diversity_stage(data: dict[str, Any]) -> str:
    """The paper's memorization measures (its Figures 14-17): each against the same on true continuations."""
    figs, rows = [], []
    cvo = data.get("completion_vs_original") or {}
    if cvo:
        rows.append(["Rouge-2 precision vs. the true continuation (higher: closer to the original)", _mm(cvo), "-"])
        figs.append(plots.histogram_pair(cvo.get("histogram"), "Rouge-2 precision vs. true continuation (Fig. 14)",
                                         "Rouge-2 precision", "share of completions"))
    bg = data.get("between_generations") or {}
    if bg:
        rows.append(["max Rouge-2 F with another completion (higher: completions repeat each other)", _mm(bg),
                     _mm(bg.get("reference", {}))])
        figs.append(plots.histogram_pair(bg.get("histogram"), "max Rouge-2 F vs. other completions (Fig. 15)",
                                         "Rouge-2 F", "share of completions", (bg.get("reference") or {}).get("histogram"),
                                         "true continuations"))
    closest = data.get("closest_training_story") or {}
    for key, block in closest.items():
        if not isinstance(block, dict) or "histogram" not in block:
            continue
        k = key.replace("rouge", "")
        rows.append([f"max Rouge-{k} precision vs. any training story (higher: more copied)", _mm(block),
                     _mm(block.get("reference", {}))])
        if isinstance(block.get("closest_is_source"), int) and isinstance(block.get("n"), int):
            rows.append([f"closest training story (Rouge-{k}) is the one cut", f"{block['closest_is_source']} of "
                         f"{block['n']}", "-"])
        figs.append(plots.histogram_pair(block["histogram"], f"max Rouge-{k} precision vs. training stories (Fig. 17)",
                                         f"Rouge-{k} precision", "share of completions",
                                         (block.get("reference") or {}).get("histogram"), "true continuations"))
    kg = data.get("kgrams_in_corpus") or {}
    for k, block in kg.items():
        if not isinstance(block, dict) or "histogram" not in block:
            continue
        ref = block.get("reference") or {}
        rows.append([f"{k}-grams never seen in the corpus (higher: more novel text)", pct(block.get("never_share")),
                     pct(ref.get("never_share"))])
        figs.append(plots.histogram_pair(block["histogram"], f"{k}-grams: log10 frequency in the corpus (Fig. 16)",
                                         "log10 corpus frequency (-10: never)", "share of distinct k-grams",
                                         ref.get("histogram"), "true continuations"))
    n = (data.get("sampling") or {}).get("stories")
    summary = (table(rows, ["measure", "model: mean (median)", "true continuations: mean (median)"], "fig")
               + (f"<p>{fmt(n)} training stories cut and completed by the model.</p>" if n else "")
               + (f'<div class="plots">{"".join(figs)}</div>' if any(figs) else "")
               + how_to_read(
                   "Blue is the model's completions, orange the true continuations of the same beginnings measured "
                   "the same way: a model that copies its corpus sits right of the orange bars in the Rouge plots "
                   "and has fewer never-seen k-grams than the true text; one that writes its own stories overlaps "
                   "them."))
    detail = bookkeeping_table(data) + (f"<p>{len(data['items'])} per-story records are in the file.</p>"
                                        if isinstance(data.get("items"), list) else "")
    return stage("eval-diversity", "Memorization and diversity", summary, detail)


# --- judge -----------------------------------------------------------------------------------------


def judge_stage(data: dict[str, Any]) -> str:
    scores = data.get("scores") or {}
    rows, bars = [], []
    for f, s in scores.items():
        if isinstance(s, dict):
            rows.append([f, num(s.get("mean"), s.get("ci95"), 2), s.get("n"), s.get("groups")])
            bars.append((f, s.get("mean"), s.get("ci95")))
    summary = plots.score_bars(bars, "Judge's scores (95% bootstrap intervals over beginnings)", 0, 10,
                               "mean score (1-10)")
    summary += table(rows, ["score", "mean (95% interval)", "grades", "beginnings"], "fig")
    parse = data.get("parse") or {}
    if parse:
        summary += (f"<p>{fmt(parse.get('graded'))} completions graded; {fmt(parse.get('missing'))} answers could not "
                    f"be read ({pct(parse.get('failure_rate'))}).</p>")
    if data.get("not_comparable"):
        summary += f"<p class='notrun'>Not comparable with the paper's figures: {esc(data['not_comparable'])}</p>"
    summary += how_to_read("Scores are out of 10; the interval comes from resampling the story beginnings, so two "
                           "runs differ only where their intervals do not overlap.")
    detail = bookkeeping_table(data, ("age_groups",)) + (
        f"<p>{len(data['completions'])} graded completions are in the file.</p>"
        if isinstance(data.get("completions"), list) else "")
    return stage("eval-judge", "LLM judge", summary, detail)


# --- character consistency ---------------------------------------------------------------------------


def consistency_stage(data: dict[str, Any]) -> str:
    ref: dict[str, Any] = data["reference"] if isinstance(data.get("reference"), dict) else {}
    rows = [
        ["distinct character names per story (median)", num(data.get("median_distinct_names"), digits=1),
         num(ref.get("median_distinct_names"), digits=1)],
        ["stories that keep their protagonist", pct(data.get("protagonist_kept_share")),
         pct(ref.get("protagonist_kept_share"))],
    ]
    n = data.get("n_samples")
    src = f" (reference: {esc(ref['source'])})" if ref.get("source") else ""
    summary = (table(rows, ["", "model", "reference"], "fig")
               + (f"<p>{fmt(n)} samples{src}.</p>" if n is not None else (f"<p>{src}</p>" if src else ""))
               + how_to_read("A model that keeps its characters names about as many of them per story as the "
                             "reference and keeps its protagonist to the end; more names and a lower share mean "
                             "characters appear and vanish."))
    detail = bookkeeping_table(data) + "".join(
        f"<p>{esc(k)}: {len(v)} per-sample values.</p>" for k, v in data.items() if isinstance(v, list))
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


KNOWN = {"probes": probes_stage, "diversity": diversity_stage, "judge": judge_stage,
         "consistency": consistency_stage}


def section_eval(run: Path) -> str:
    folder = run / "eval"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    out, loss, present = [], {}, set()
    for f in files:
        data, err = read_json(f)
        if err:
            out.append(f"<p class='notrun'>{esc(err)}</p>")
            continue
        if f.stem == "loss" or f.stem.startswith("loss_"):
            if isinstance(data, dict):
                loss[f.stem] = data
                present.add("loss")
            continue
        present.add(f.stem)
        render = KNOWN.get(f.stem)
        try:
            out.append(render(data) if render and isinstance(data, dict) else generic_stage(f.stem, data))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # A file of an older or newer layout: show it generically rather than fail the page.
            out.append(f"<p class='notrun'>{esc(f.name)}: unexpected layout ({esc(type(e).__name__)}: {esc(e)}); "
                       "shown as is</p>" + generic_stage(f.stem, data))
    if loss:
        out.insert(0, loss_stage(loss))
    for name, cmd in EVAL_STAGES.items():
        if name not in present:
            out.append(not_run(f"eval {name}", cmd.format(run=run)))
    return "".join(out)

