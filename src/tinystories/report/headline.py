"""The headline figures of a run, and several runs side by side (`tinystories report --run a --run b`).

`compare_html(runs)` is the reusable part: a page fragment that any page
comparing runs (a sweep, say) can embed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinystories.report import plots
from tinystories.report.evals import loss_label, probe_rows, read_json
from tinystories.report.html import esc, how_to_read, num, pct, table


def _eval(run: Path, name: str) -> dict[str, Any]:
    data, _ = read_json(run / "eval" / f"{name}.json")
    return data if isinstance(data, dict) else {}


def _vs(a: str, b: str) -> str:
    return f"{a} (true text {b})"


def headline(run: Path) -> list[tuple[str, str]]:
    """(figure, value) pairs, in reading order, of whatever stages the run has had."""
    out: list[tuple[str, str]] = []
    try:
        _collect(run, out)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # A stage file of another layout: keep the figures read so far and say where it stopped.
        out.append(("(a stage file of an unexpected layout)", f"{type(e).__name__}: {e}"))
    return out


def _collect(run: Path, out: list[tuple[str, str]]) -> None:
    from tinystories.report.sections import model_sizes, read_metrics

    sizes = model_sizes(run)
    if sizes:
        out.append(("parameters (non-embedding)", f"{sizes[0][1]:,} ({sizes[1][1]:,})"))
    rows = read_metrics(run)
    if rows:
        last = rows[-1]
        if "tokens" in last:
            out.append(("training tokens", f"{last['tokens']:,}"))
        val = [r["val_loss"] for r in rows if "val_loss" in r]
        if val:
            out.append(("last validation loss (nats / token)", num(val[-1])))
    folder = run / "eval"
    for f in sorted(folder.glob("loss*.json")) if folder.is_dir() else []:
        d, _ = read_json(f)
        if isinstance(d, dict) and isinstance(d.get("per_story"), dict):
            label = loss_label(f.stem, d)
            out.append((f"loss per token, {label} text", num(d["per_story"].get("loss"))))
            out.append((f"bits per byte, {label} text", num(d["per_story"].get("bits_per_byte"))))
    probes = _eval(run, "probes")
    for r in probe_rows(probes) if probes else []:
        label = r["label"].split(" (n=")[0]
        chance = f", chance {pct(r['chance'])}" if isinstance(r.get("chance"), int | float) else ""
        out.append((f"probes: {label}", pct(r["accuracy"], r["ci95"]) + chance))
    div = _eval(run, "diversity")
    if div:
        cvo = div.get("completion_vs_original") or {}
        if "mean" in cvo:
            out.append(("Rouge-2 precision vs. true continuation (mean)", num(cvo["mean"])))
        for key, block in (div.get("closest_training_story") or {}).items():
            if isinstance(block, dict) and "mean" in block:
                true_mean = (block.get("reference") or {}).get("mean")
                out.append((f"max {key.replace('rouge', 'Rouge-')} vs. training stories (mean)",
                            _vs(num(block["mean"]), num(true_mean))))
        k4 = (div.get("kgrams_in_corpus") or {}).get("4")
        if isinstance(k4, dict):
            out.append(("4-grams never seen in the corpus", _vs(pct(k4.get("never_share")),
                                                                  pct((k4.get("reference") or {}).get("never_share")))))
    for field, s in (_eval(run, "judge").get("scores") or {}).items():
        if isinstance(s, dict):
            out.append((f"judge: {field} (of 10)", num(s.get("mean"), s.get("ci95"), 2)))
    cons = _eval(run, "consistency")
    if cons:
        cref: dict[str, Any] = cons["reference"] if isinstance(cons.get("reference"), dict) else {}
        out.append(("distinct names per story (median)", f"{num(cons.get('median_distinct_names'), digits=1)} "
                    f"(reference {num(cref.get('median_distinct_names'), digits=1)})"))
        out.append(("stories that keep their protagonist", pct(cons.get("protagonist_kept_share"))))


def headline_table(run: Path) -> str:
    rows = headline(run)
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
    probe = [{r["label"].split(" (n=")[0]: r for r in probe_rows(_eval(run, "probes"))} if _eval(run, "probes")
             else {} for run in runs]
    labels = list(dict.fromkeys(k for p in probe for k in p))
    if labels:
        chart = plots.grouped_accuracy(labels, {n: [p.get(k) for k in labels] for n, p in zip(names, probe)},
                                       "Probe accuracy, runs side by side")
        parts.append(chart)
    return "".join(parts)


def compare_page(runs: Sequence[Path], names: Sequence[str] | None = None) -> str:
    from tinystories.report.html import page

    names = list(names) if names else run_names(runs)
    note = "" if plots.available() else f'<p class="noplots">{esc(plots.MISSING_NOTE)}</p>'
    listing = "<ul>" + "".join(f"<li><b>{esc(n)}</b>: <code>{esc(r)}</code></li>" for n, r in zip(names, runs)) + \
        "</ul>"
    return page("tinystories: " + " vs ".join(names), "Runs compared", note + listing + compare_html(runs, names))
