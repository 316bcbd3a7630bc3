"""HTML building blocks of the report pages: escaping, numbers, tables, stage blocks and the page shell."""

from __future__ import annotations

import html
import math
import re
from typing import Any


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


class Raw(str):
    """HTML that `table` inserts as is."""


def fmt(v: Any) -> str:
    if isinstance(v, Raw):
        return v
    if isinstance(v, bool) or v is None:
        return esc(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return esc(v)
        return f"{v:,.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    if isinstance(v, int):
        return f"{v:,}"
    return esc(v)


def _interval(ci: Any, scale: float, digits: int) -> str:
    """' (lo-hi)' for a two-number interval, scaled; '' for anything else."""
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(c, int | float) for c in ci):
        return f" ({scale * ci[0]:.{digits}f}-{scale * ci[1]:.{digits}f})"
    return ""


def pct(v: Any, ci: Any = None) -> str:
    """A share as a percentage, with its interval when given: '70.2% (67.3-73.0)'."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return "-"
    return f"{100 * v:.1f}%" + _interval(ci, 100, 1)


def num(v: Any, ci: Any = None, digits: int = 3) -> str:
    """A number with `digits` decimals, with its interval when given."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return "-"
    return f"{v:.{digits}f}" + _interval(ci, 1, digits)


def table(rows: list[list[Any]], header: list[str] | None = None, cls: str = "") -> str:
    """A table inside its own horizontally scrolling box, so a wide one never widens the page."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return (f'<div class="scroll"><table class="{cls}">' + (f"<thead><tr>{head}</tr></thead>" if head else "")
            + f"<tbody>{body}</tbody></table></div>")


NUMERIC = re.compile(r"^([-+]?[\d.,]+(%| |$)|-$)")


def _cell(v: Any) -> str:
    # Numbers (and figures like '52.6% (49.7-55.5)') align right in figure tables; words stay left.
    numeric = (isinstance(v, int | float) and not isinstance(v, bool)) or (
        isinstance(v, str) and not isinstance(v, Raw) and NUMERIC.match(v) is not None)
    return f'<td class="n">{fmt(v)}</td>' if numeric else f"<td>{fmt(v)}</td>"


def not_run(what: str, command: str) -> str:
    return f'<p class="notrun">not run: {esc(what)} — <code>{esc(command)}</code></p>'


def how_to_read(text: str) -> str:
    """The one sentence under a summary that says how to read it."""
    return f'<p class="read">{esc(text)}</p>'


def details(title: str, content: str) -> str:
    """The collapsed block of a stage: configuration, environment, timings, hashes."""
    if not content:
        return ""
    return f'<details class="stage-details"><summary>{esc(title)}</summary>{content}</details>'


def stage(sid: str, title: str, summary: str, detail: str = "") -> str:
    """One stage: its summary first, then its single collapsed details block (no heading when `title` is "")."""
    heading = f"<h3>{esc(title)}</h3>" if title else ""
    return (f'<div class="stage" id="{esc(sid)}">{heading}<div class="summary">{summary}</div>'
            f"{details('configuration, environment, timings', detail)}</div>")


STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 1.5em auto; padding: 0 1em; color: #222;
       line-height: 1.4; overflow-wrap: anywhere; }
h1 { font-size: 1.5em; } h1 code { font-size: .8em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { margin: 1.4em 0 .4em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; overflow-wrap: normal; }
th { background: #f4f4f4; }
table.num td, table.fig td { font-variant-numeric: tabular-nums; }
table.fig td.n { text-align: right; white-space: nowrap; }
table.fig td:first-child { min-width: 13em; }
img { max-width: 100%; height: auto; }
.plots { display: flex; flex-wrap: wrap; gap: .5em 1em; align-items: flex-start; }
.plots figure { margin: 0; flex: 1 1 340px; max-width: 100%; }
figure { margin: .5em 0; }
figcaption { font-size: 12px; color: #555; }
.read { color: #444; font-size: 14px; border-left: 3px solid #9cc3e6; padding-left: .6em; margin: .4em 0 .8em; }
.notrun { color: #8a5a00; background: #fff6e0; padding: .3em .6em; border-left: 3px solid #e0a000; }
.noplots { color: #555; background: #eef3f8; padding: .3em .6em; border-left: 3px solid #9cc3e6; }
details { margin: .6em 0; }
details > summary { cursor: pointer; color: #555; font-size: 14px; }
.stage { margin-bottom: 1.5em; }
.sample { white-space: pre-wrap; border: 1px solid #ddd; padding: .5em; margin: .5em 0; font-size: 14px; }
.sample .src { float: right; color: #888; font-size: 11px; margin-left: .5em; }
mark { background: #ff6b6b; color: #000; }
mark.name { background: #ffe08a; border-radius: 2px; }
.cards { display: flex; flex-wrap: wrap; gap: 0 2em; } .cards > .neuron { flex: 1 1 420px; min-width: 0; }
.neuron h4 { margin-bottom: .2em; } .neuron p { margin: .2em 0; font-size: 14px; }
.neuron ol { font-size: 14px; } .act { color: #888; font-size: 11px; }
.k-distance { color: #1f77b4; } .k-semantic { color: #d62728; font-weight: bold; } .k-other { color: #777; }
.k-induction { color: #2ca02c; font-weight: bold; }
table.headmap td { text-align: center; min-width: 3.2em; font-size: 12px; }
table.headmap td.k-distance { background: #cfe2f3; } table.headmap td.k-semantic { background: #f4cccc; }
table.headmap td.k-induction { background: #d9ead3; }
table.headmap td.k-other { background: #f3f3f3; }
#attn-tokens { line-height: 1.9; margin: .5em 0; } .tok { white-space: pre; border-radius: 2px; }
#attn-canvas { image-rendering: pixelated; border: 1px solid #ccc; max-width: 100%; }
nav { display: flex; flex-wrap: wrap; gap: .2em 1em; }
code { overflow-wrap: anywhere; }
table.headmap th { white-space: nowrap; }
@media (max-width: 600px) {
  body { padding: 0 .6em; margin-top: 1em; }
  table.fig td:first-child { min-width: 8em; }
  table.fig td.n { white-space: normal; }
}
"""


def page(title: str, heading: str, body: str, script: str = "") -> str:
    """The whole self-contained page (no external resource; the viewport tag makes phones use their width)."""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><h1>{heading}</h1>{body}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>")
