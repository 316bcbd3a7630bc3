"""The headline figures of a run, and several runs side by side (`tinystories report --run a --run b`).

`compare_html(runs)` is the reusable part: a page fragment that any page
comparing runs (a sweep, say) can embed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tinystories import plotting
from tinystories.report import plots
from tinystories.report.evals import probe_rows
from tinystories.report.html import esc, how_to_read, num, page, pct, table
from tinystories.summaries import (
    ConsistencyResult,
    DiversityResult,
    JudgeResult,
    NamesReference,
    ProbesResult,
    TrainSummary,
    read_eval,
    read_losses,
    read_train,
)


def _vs(a: str, b: str) -> str:
    return f"{a} (true text {b})"


def headline(run: Path, train: TrainSummary | None = None) -> list[tuple[str, str]]:
    """(figure, value) pairs, in reading order, of whatever stages the run has had (`train`: already read)."""
    out: list[tuple[str, str]] = []
    try:
        _collect(run, train or read_train(run), out)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # A stage file of another layout: keep the figures read so far and say where it stopped.
        out.append(("(a stage file of an unexpected layout)", f"{type(e).__name__}: {e}"))
    return out


def _collect(run: Path, train: TrainSummary, out: list[tuple[str, str]]) -> None:
    if train.sizes is not None:
        out.append(("parameters, all (non-embedding)", f"{train.sizes.params:,} ({train.sizes.non_embedding:,})"))
    rows = train.metrics
    if rows:
        last = rows[-1]
        if last.tokens is not None:
            out.append(("training tokens", f"{last.tokens:,}"))
        val = [r.val_loss for r in rows if r.val_loss is not None]
        if val:
            out.append(("last validation loss (nats / token)", num(val[-1])))
    for d in read_losses(run):
        if d.per_story is not None:
            out.append((f"loss per token, {d.label} text", num(d.per_story.loss)))
            out.append((f"bits per byte, {d.label} text", num(d.per_story.bits_per_byte)))
    probes = read_eval(run, ProbesResult, "probes")
    for r in probe_rows(probes) if probes else []:
        label = r["label"].split(" (n=")[0]
        chance = f", chance {pct(r['chance'])}" if isinstance(r.get("chance"), int | float) else ""
        out.append((f"probes: {label}", pct(r["accuracy"], r["ci95"]) + chance))
    div = read_eval(run, DiversityResult, "diversity")
    if div:
        cvo = div.completion_vs_original
        if cvo is not None and cvo.mean is not None:
            out.append(("Rouge-2 precision vs. true continuation (mean)", num(cvo.mean)))
        for key, block in div.closest_training_story.items():
            if block.mean is not None:
                true_mean = block.reference.mean if block.reference else None
                out.append((f"max {key.replace('rouge', 'Rouge-')} vs. training stories (mean)",
                            _vs(num(block.mean), num(true_mean))))
        k4 = div.kgrams_in_corpus.get("4")
        if k4 is not None:
            ref = k4.reference.never_share if k4.reference else None
            out.append(("4-grams never seen in the corpus", _vs(pct(k4.never_share), pct(ref))))
    judge = read_eval(run, JudgeResult, "judge")
    for field, s in judge.scores.items() if judge else []:
        if s is not None:
            out.append((f"judge: {field} (of 10)", num(s.mean, s.ci95, 2)))
    cons = read_eval(run, ConsistencyResult, "consistency")
    if cons:
        cref = cons.reference or NamesReference()
        out.append(("distinct names per story (median)", f"{num(cons.median_distinct_names, digits=1)} "
                    f"(reference {num(cref.median_distinct_names, digits=1)})"))
        out.append(("stories that keep their protagonist", pct(cons.protagonist_kept_share)))


def headline_table(run: Path, train: TrainSummary | None = None) -> str:
    rows = headline(run, train)
    if not rows:
        return "<p>No stage has written figures yet.</p>"
    return table([list(r) for r in rows], ["figure", "value"], "fig") + how_to_read(
        "The figures to compare between runs, with 95% intervals in brackets where the stage computed them; the "
        "sections below show where each comes from.")


def run_names(runs: Sequence[Path]) -> list[str]:
    """Short column names: the shortest tails of the paths that tell the runs apart."""
    parts = [Path(os.path.abspath(r)).parts for r in runs]
    # A pipeline's run is its folder's model/: name it after the pipeline folder too.
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-max(n, 2 if p[-1] == "model" else 1):]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [os.fspath(r) for r in runs]


def compare_html(runs: Sequence[Path], names: Sequence[str] | None = None) -> str:
    """Headline figures of `runs` side by side (one column per run) and their probe accuracy in one chart."""
    names = list(names) if names else run_names(runs)
    figures = [dict(headline(r)) for r in runs]
    order = list(dict.fromkeys(k for f in figures for k in f))
    rows = [[k, *[f.get(k, "-") for f in figures]] for k in order]
    parts = [table(rows, ["figure", *names], "fig"), how_to_read(
        "One column per run; '-' means that run has not had the stage. Loss per token compares only runs with the "
        "same tokenizer, bits per byte any two runs scored on the same text.")]
    found = [read_eval(run, ProbesResult, "probes") for run in runs]
    probe = [{r["label"].split(" (n=")[0]: r for r in probe_rows(p)} if p else {} for p in found]
    labels = list(dict.fromkeys(k for p in probe for k in p))
    if labels:
        chart = plots.grouped_accuracy(labels, {n: [p.get(k) for k in labels] for n, p in zip(names, probe)},
                                       "Probe accuracy, runs side by side")
        parts.append(chart)
    return "".join(parts)


def compare_page(runs: Sequence[Path], names: Sequence[str] | None = None) -> str:
    names = list(names) if names else run_names(runs)
    note = "" if plotting.available() else f'<p class="noplots">{esc(plotting.MISSING_NOTE)}</p>'
    listing = "<ul>" + "".join(f"<li><b>{esc(n)}</b>: <code>{esc(r)}</code></li>" for n, r in zip(names, runs)) + \
        "</ul>"
    return page("tinystories: " + " vs ".join(names), "Runs compared", note + listing + compare_html(runs, names))
