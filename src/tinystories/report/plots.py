"""The report's plots: matplotlib PNGs embedded as data URIs, each made for what its data is.

Every function returns an HTML <figure> (title in the image's alt text and in a
caption), or "" when matplotlib is not installed: the page then renders
without plots and says so once at the top.
"""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Sequence
from typing import Any

from tinystories.plotting import optional_pyplot, pyplot
from tinystories.report.html import esc


def png(fig: Any, title: str, caption: str = "") -> str:
    """A matplotlib figure as a <figure> holding an <img> with a data URI (the figure is closed)."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(palette_png(buf.getvalue())).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<figure><img alt="{esc(title)}" title="{esc(title)}" src="data:image/png;base64,{data}">'
            f"{cap}</figure>")


def palette_png(raw: bytes) -> bytes:
    """The PNG with a 256-colour palette: a plot has few colours, and the page carries every plot (~half the bytes)."""
    try:
        from PIL import Image  # Pillow comes with matplotlib
    except ImportError:
        return raw
    out = io.BytesIO()
    Image.open(io.BytesIO(raw)).convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(raw) else raw


def line_plot(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
              logy: bool = False, size: tuple[float, float] = (6.4, 3.2)) -> str:
    plt = optional_pyplot()
    if plt is None or not any(series.values()):
        return ""
    fig, ax = plt.subplots(figsize=size)
    for name, pts in series.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, marker="." if len(pts) < 30 else None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if max(abs(p[0]) for pts in series.values() for p in pts) >= 10_000:
        from matplotlib.ticker import EngFormatter

        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 400k, not 400000
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len([s for s in series.values() if s]) > 1:
        ax.legend(fontsize=8)
    return png(fig, title)


def accuracy_bars(rows: Sequence[dict[str, Any]], title: str, xlabel: str = "accuracy") -> str:
    """Horizontal bars of accuracy with their 95% intervals and each row's chance level.

    rows: {"label", "accuracy", "ci95": [low, high] | None, "chance": float | None, "group": str}; bars of
    one group share a colour.
    """
    plt = optional_pyplot()
    rows = [r for r in rows if isinstance(r.get("accuracy"), int | float)]
    if plt is None or not rows:
        return ""
    colors = ["tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]
    groups = list(dict.fromkeys(r.get("group", "") for r in rows))
    fig, ax = plt.subplots(figsize=(5.2, 0.9 + 0.3 * len(rows)))
    ys = list(range(len(rows)))[::-1]  # first row on top
    for y, r in zip(ys, rows):
        ci = r.get("ci95")
        err = None
        if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci:
            err = [[r["accuracy"] - ci[0]], [ci[1] - r["accuracy"]]]
        ax.barh(y, r["accuracy"], xerr=err, color=colors[groups.index(r.get("group", "")) % len(colors)],
                alpha=0.8, capsize=3, error_kw={"lw": 1})
        if isinstance(r.get("chance"), int | float):
            ax.plot([r["chance"]] * 2, [y - 0.42, y + 0.42], color="k", ls="--", lw=1.2)
    ax.set_yticks(ys, [r["label"] for r in rows], fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.plot([], [], color="k", ls="--", lw=1.2, label="chance")
    ax.legend(fontsize=8, loc="lower right")
    return png(fig, title)


def histogram_pair(hist: Any, title: str, xlabel: str, ylabel: str,
                   reference: Any = None, ref_label: str = "reference",
                   label: str = "model") -> str:
    """A histogram a stage already binned ({"edges", "counts"}): bars over the bins, the reference beside them.

    The edges place the bars on the x axis; they are never data themselves.
    """
    plt = optional_pyplot()
    if plt is None or not is_histogram(hist):
        return ""
    fig, ax = plt.subplots(figsize=(4.8, 2.8))

    def bars(h: dict[str, Any], name: str, color: str, alpha: float) -> None:
        e = h["edges"]
        total = sum(h["counts"]) or 1
        # Shares, not counts: model and reference may hold different numbers of values.
        ax.bar(e[:-1], [c / total for c in h["counts"]], width=[b - a for a, b in itertools.pairwise(e)],
               align="edge", color=color, alpha=alpha, label=f"{name} (n={sum(h['counts']):,})", edgecolor="none")

    bars(hist, label, "tab:blue", 0.75)
    if reference is not None and is_histogram(reference):
        bars(reference, ref_label, "tab:orange", 0.5)
    ax.set_xlim(hist["edges"][0], hist["edges"][-1])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig, title)


def is_histogram(h: Any) -> bool:
    """A binned histogram as the stages write it: {"edges": [n + 1 numbers], "counts": [n numbers]}."""
    return (isinstance(h, dict) and isinstance(h.get("edges"), list) and isinstance(h.get("counts"), list)
            and len(h["edges"]) == len(h["counts"]) + 1 and len(h["counts"]) > 0)


def value_histogram(values: list[float], title: str, xlabel: str, reference: list[float] | None = None,
                    ref_label: str = "reference", label: str = "values") -> str:
    """A histogram of raw values (neuron scores vs random directions; unknown number lists)."""
    plt = optional_pyplot()
    if plt is None or not values:
        return ""
    fig, ax = plt.subplots(figsize=(4.8, 2.8))
    if reference:
        ax.hist(reference, bins=30, alpha=0.5, density=True, label=ref_label, color="tab:orange")
    ax.hist(values, bins=30, alpha=0.7, density=bool(reference), label=label if reference else None,
            color="tab:blue")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("density" if reference else "count", fontsize=8)
    if reference:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png(fig, title)


def score_bars(rows: Sequence[tuple[str, Any, Any]], title: str, lo: float, hi: float, xlabel: str) -> str:
    """Horizontal bars of means with their intervals on a fixed scale (the judge's scores)."""
    plt = optional_pyplot()
    rows = [r for r in rows if isinstance(r[1], int | float)]
    if plt is None or not rows:
        return ""
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.35 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    for y, (_, mean, ci) in zip(ys, rows):
        err = [[mean - ci[0]], [ci[1] - mean]] if isinstance(ci, list | tuple) and len(ci) == 2 else None
        ax.barh(y, mean, xerr=err, color="tab:blue", alpha=0.8, capsize=3, left=0)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=8)
    ax.set_xlim(lo, hi)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return png(fig, title)


def grouped_accuracy(labels: Sequence[str], runs: dict[str, list[dict[str, Any] | None]], title: str) -> str:
    """Accuracy of several runs side by side per label (compare page): bars with 95% intervals, chance dashes."""
    plt = optional_pyplot()
    if plt is None or not labels or not runs:
        return ""
    n = len(runs)
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.28 * len(labels) * n + 0.15 * len(labels)))
    height = 0.8 / n
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:olive"]
    for j, (name, vals) in enumerate(runs.items()):
        for i, v in enumerate(vals):
            if not v or not isinstance(v.get("accuracy"), int | float):
                continue
            y = (len(labels) - 1 - i) + 0.4 - height * (j + 0.5)
            ci = v.get("ci95")
            err = [[v["accuracy"] - ci[0]], [ci[1] - v["accuracy"]]] if isinstance(ci, list) and len(ci) == 2 \
                else None
            ax.barh(y, v["accuracy"], height=height * 0.9, xerr=err, color=colors[j % len(colors)], alpha=0.8,
                    capsize=2, label=name if i == next(k for k, x in enumerate(vals) if x) else None)
            if isinstance(v.get("chance"), int | float):
                ax.plot([v["chance"]] * 2, [y - height / 2, y + height / 2], color="k", ls="--", lw=1)
    ax.set_yticks(range(len(labels))[::-1], list(labels), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% interval; dashes: chance)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return png(fig, title)
