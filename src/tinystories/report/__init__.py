"""`tinystories report`: one self-contained HTML page that shows a run, or several runs side by side.

The report only renders what stages wrote into the run folder, read through
their typed summaries (`tinystories.summaries`); it computes nothing about
the model. The page opens with the run's headline figures
(`headline`), then one section per stage (HTML ids `config`, `training`,
`samples`, `eval`, `heads`, `neurons`, `findings`). Each stage shows a short
summary of the figures a reader compares, with one sentence on how to read
them, and keeps its configuration, environment, timings and hashes in one
collapsed "details" block. A stage with no output yet gets a "not run" line
with the command that makes it. Plots are matplotlib PNGs embedded as data
URIs (without matplotlib the page still renders, without them) and the
attention maps are drawn by a few lines of inline script, so the file opens
anywhere with no network.

With several `--run`s it writes a comparison page instead: their headline
figures side by side (`compare_html`, reusable by any page that compares runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories import plotting
from tinystories.errors import UserError
from tinystories.interp.summary import read_interp
from tinystories.io import atomic_write_text
from tinystories.plotting import pyplot
from tinystories.report.evals import section_eval
from tinystories.report.headline import compare_html, compare_page, headline, headline_table
from tinystories.report.html import esc, page
from tinystories.report.sections import (
    MAP_SCRIPT,
    findings,
    section_config,
    section_heads,
    section_neurons,
    section_samples,
    section_training,
)
from tinystories.summaries import read_evals, read_samples, read_train

__all__ = ["ReportConfig", "compare_html", "compare_page", "headline", "pyplot", "render", "report"]


@dataclass
class ReportConfig:
    """`tinystories report`: render a run folder into one HTML file, or compare several runs."""

    run: tuple[str, ...] = field(default=(), metadata={"repeat": True})
    """Run folder to report on; give --run several times to compare runs side by side."""
    out: str = ""
    """Output file; default: <run>/report.html, or compare.html when comparing runs."""
    max_samples: int = 12
    """Samples shown at most."""


def render(run: Path, cfg: ReportConfig) -> str:
    """The run's page as one HTML string."""
    train, interp = read_train(run), read_interp(run)
    heads_html = section_heads(interp, run)
    sections = [
        ("headline", "Headline figures", headline_table(run, train)),
        ("config", "Model", section_config(train)),
        ("training", "Training", section_training(train, run)),
        ("samples", "Samples", section_samples(read_samples(run), run, cfg.max_samples)),
        ("eval", "Evaluations", section_eval(read_evals(run), run)),
        ("heads", "Attention heads", heads_html),
        ("neurons", "MLP neurons", section_neurons(interp, run)),
        ("findings", "Findings", findings(interp)),
    ]
    nav = "<nav>" + "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections) + "</nav>"
    note = "" if plotting.available() else f'<p class="noplots">{esc(plotting.MISSING_NOTE)}</p>'
    body = nav + note + "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>'
                                for sid, title, content in sections)
    script = MAP_SCRIPT if interp.heads is not None and "attn-data" in heads_html else ""
    return page(f"tinystories report: {run.name}", f"Run <code>{esc(run)}</code>", body, script)


def report(cfg: ReportConfig) -> dict[str, Any]:
    """Write the run's HTML report (default <run>/report.html), or a comparison page of several runs."""
    runs = [Path(r) for r in ((cfg.run,) if isinstance(cfg.run, str | os.PathLike) else cfg.run) if str(r)]
    if not runs:
        raise UserError("--run is required: the run folder to report on (several to compare them)")
    for r in runs:
        if not r.is_dir():
            raise UserError(f"no run folder at {r}")
    if len(runs) == 1:
        text = render(runs[0], cfg)
        out = Path(cfg.out) if cfg.out else runs[0] / "report.html"
    else:
        text = compare_page(runs)
        out = Path(cfg.out or "compare.html")
    atomic_write_text(out, text)
    return {"written": os.fspath(out), "bytes": len(text.encode("utf-8")), "plots": plotting.available()}
