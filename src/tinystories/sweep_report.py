"""The report of a sweep: results table with intervals, plots as PNGs, and one self-contained report.html.

It draws only what the sweep's points wrote (results rows, each point's
metrics.jsonl and its probes' per-checkpoint curve); nothing is recomputed.

    plots/scores_vs_params.png   every score (mean over seeds, interval) against non-embedding parameters
    plots/scores_vs_flops.png    every probe score at each evaluated checkpoint against training FLOPs so far
    plots/frontier.png           training loss against FLOPs per point; the frontier is the lowest loss at each compute
    plots/heatmaps.png           one width x depth heat map per score (means over seeds)
    plots/emergence.png          probe accuracy per category against training step, one panel per shape
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from tinystories.io import atomic_write_bytes, atomic_write_text
from tinystories.report.html import Raw, details, esc, how_to_read, num, page, pct, table
from tinystories.report.plots import palette_png, pyplot

PLOTS_DIR = "plots"
SCORES_LOWER_BETTER = ("val_loss", "val_bpb", "real_loss", "real_bpb", "train_loss")
"""The score columns where lower is better (colour scales and titles turn with them)."""
CATEGORIES = ("fact", "reasoning", "context")
"""The probe categories whose per-checkpoint accuracy the probes stage records (its `curve`)."""


def score_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The score columns of results rows (losses, probe accuracies, judge scores), in column order."""
    names: list[str] = []
    for r in rows:
        for k in r:
            if k in names or k.endswith(("_lo", "_hi", "_n")):
                continue
            if k in SCORES_LOWER_BETTER or k.startswith(("probes", "greedy", "judge_")):
                names.append(k)
    return names


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _label(score: str) -> str:
    return score.replace("probes_", "probes: ").replace("_", " ")


class _Plots:
    """Saves each figure as plots/<name>.png and keeps its HTML <figure> (the same bytes, inlined)."""

    def __init__(self, out: Path) -> None:
        self.dir = out / PLOTS_DIR
        self.html: dict[str, str] = {}

    def save(self, fig: Any, name: str, caption: str) -> None:
        import io

        plt = pyplot()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        data = palette_png(buf.getvalue())
        atomic_write_bytes(self.dir / f"{name}.png", data)
        b64 = base64.b64encode(data).decode("ascii")
        self.html[name] = (f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
                           f"<figcaption>{esc(caption)}</figcaption></figure>")


def _panels(plt: Any, n: int, cols: int = 4, size: tuple[float, float] = (3.4, 2.6)) -> tuple[Any, list[Any]]:
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _style(ax: Any, title: str, xlabel: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _yerr(rows: list[dict[str, Any]], score: str) -> list[list[float]] | None:
    lo = [r.get(f"{score}_lo") for r in rows]
    hi = [r.get(f"{score}_hi") for r in rows]
    if not all(_is_num(v) for v in lo + hi):
        return None
    return [[r[score] - a for r, a in zip(rows, lo)], [b - r[score] for r, b in zip(rows, hi)]]


def _shape_legend(plt: Any, fig: Any, shapes: list[str]) -> None:
    cmap = plt.get_cmap("viridis", max(2, len(shapes)))
    handles = [plt.Line2D([], [], color=cmap(i), marker="o", ls="", label=s) for i, s in enumerate(shapes)]
    fig.legend(handles=handles, fontsize=8, loc="upper center", ncol=min(5, len(shapes)), bbox_to_anchor=(0.5, 0))


def _log_x(ax: Any) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # the minor labels of a short log range overprint each other


def _scores_vs_params(plots: _Plots, shapes: list[dict[str, Any]], scores: list[str], names: list[str]) -> None:
    plt = pyplot()
    fig, axes = _panels(plt, len(scores))
    cmap = plt.get_cmap("viridis", max(2, len(names)))
    for ax, score in zip(axes, scores):
        for r in shapes:
            if _is_num(r.get(score)) and _is_num(r.get("non_embedding_params")):
                ax.errorbar([r["non_embedding_params"]], [r[score]], yerr=_yerr([r], score), fmt="o", ms=4,
                            capsize=3, color=cmap(names.index(r["shape"])))
        _log_x(ax)
        _style(ax, _label(score) + (" (lower is better)" if score in SCORES_LOWER_BETTER else ""),
               "non-embedding parameters")
    fig.tight_layout()
    _shape_legend(plt, fig, names)
    plots.save(fig, "scores_vs_params", "Every score against non-embedding parameters: one dot per shape (mean "
               "over seeds); bars: probes 95% Wilson interval pooled over seeds, losses lowest-highest seed.")


def _point_curves(points_dir: Path, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per point: its training-loss trajectory [(flops, loss)] and its probe curve (from eval/probes.json)."""
    curves: dict[str, dict[str, Any]] = {}
    for r in rows:
        run = points_dir / r["point"]
        fpt = float(r.get("flops_per_token") or 0)
        loss: list[tuple[float, float]] = []
        metrics = run / "metrics.jsonl"
        if metrics.is_file():
            for line in metrics.read_text(encoding="utf-8").splitlines():
                m = json.loads(line) if line.strip() else {}
                if _is_num(m.get("loss")) and _is_num(m.get("tokens")):
                    loss.append((fpt * m["tokens"], m["loss"]))
        probes = run / "eval" / "probes.json"
        curve = json.loads(probes.read_text(encoding="utf-8")).get("curve") or [] if probes.is_file() else []
        curves[r["point"]] = {"shape": r["shape"], "seed": r["seed"], "fpt": fpt, "loss": loss, "curve": curve}
    return curves


def _frontier(plots: _Plots, curves: dict[str, dict[str, Any]], shapes: list[str]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    cmap = plt.get_cmap("viridis", max(2, len(shapes)))
    everything: list[tuple[float, float]] = []
    for name, c in curves.items():
        if not c["loss"]:
            continue
        i = shapes.index(c["shape"])
        first = next(n for n, d in curves.items() if d["shape"] == c["shape"]) == name
        ax.plot(*zip(*c["loss"]), color=cmap(i), lw=0.9, alpha=0.8, label=c["shape"] if first else None)
        everything += c["loss"]
    if everything:
        # The frontier: over all points, the lowest loss reached with at most this much compute.
        everything.sort()
        best, front = math.inf, []
        for f, loss in everything:
            if loss < best:
                best = loss
                front.append((f, loss))
        ax.step(*zip(*front), where="post", color="k", lw=2, label="frontier (lowest loss so far)")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("Compute frontier: training loss against FLOPs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    plots.save(fig, "frontier", "Training loss against FLOPs spent, one line per point (colour: shape); black: "
               "the lowest loss any point reached with at most that much compute.")


def _scores_at(entry: dict[str, Any], key: str) -> dict[str, Any]:
    """One checkpoint's log-likelihood scores of `key`: "all" (the whole set) or a category."""
    ll = entry.get("log_likelihood") or {}
    return ll if key == "all" else ll.get(key) or {}


def _accuracy(curve: list[dict[str, Any]], key: str) -> list[tuple[dict[str, Any], float]]:
    """(checkpoint entry, log-likelihood accuracy of `key`: "all" or a category) along a probes curve."""
    out = []
    for e in curve:
        block = _scores_at(e, key)
        if _is_num(block.get("accuracy")):
            out.append((e, float(block["accuracy"])))
    return out


def _ci95(entry: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The 95% interval of `key` ("all" or a category) at one checkpoint of a probes curve, if recorded."""
    ci = _scores_at(entry, key).get("ci95")
    return (float(ci[0]), float(ci[1])) if isinstance(ci, list) and len(ci) == 2 and all(map(_is_num, ci)) else None


def _scores_vs_flops(plots: _Plots, curves: dict[str, dict[str, Any]], shapes: list[str]) -> None:
    plt = pyplot()
    keys = ["all", *CATEGORIES]
    fig, axes = _panels(plt, len(keys), cols=4, size=(3.6, 2.8))
    cmap = plt.get_cmap("viridis", max(2, len(shapes)))
    for ax, key in zip(axes, keys):
        for c in curves.values():
            pts = [(c["fpt"] * e["tokens"], acc) for e, acc in _accuracy(c["curve"], key) if _is_num(e.get("tokens"))]
            if pts:
                ax.plot(*zip(*pts), marker=".", lw=0.8, color=cmap(shapes.index(c["shape"])))
        _style(ax, f"probes: {key}", "training FLOPs")
    fig.tight_layout()
    _shape_legend(plt, fig, shapes)
    plots.save(fig, "scores_vs_flops", "Probe accuracy at each evaluated checkpoint against the training FLOPs "
               "spent so far (one line per point, colour: shape).")


def _heat_axes(grid: list[str], shapes: list[dict[str, Any]]) -> tuple[str, str] | None:
    varying = [k for k in grid if len({str(r.get(k)) for r in shapes}) > 1]
    if "d_model" in varying and "n_layer" in varying:
        return "d_model", "n_layer"
    return (varying[0], varying[1]) if len(varying) >= 2 else None


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, float(v)) if _is_num(v) else (1, str(v))


def _heatmaps(plots: _Plots, shapes: list[dict[str, Any]], scores: list[str], axes_keys: tuple[str, str]) -> None:
    plt = pyplot()
    xk, yk = axes_keys
    xs = sorted({r[xk] for r in shapes}, key=_sort_key)
    ys = sorted({r[yk] for r in shapes}, key=_sort_key)
    fig, axes = _panels(plt, len(scores), size=(3.4, 2.9))
    for ax, score in zip(axes, scores):
        cells: dict[tuple[int, int], list[float]] = {}
        for r in shapes:
            if _is_num(r.get(score)):  # extra grid keys (a third axis) are averaged into the cell
                cells.setdefault((ys.index(r[yk]), xs.index(r[xk])), []).append(r[score])
        grid = [[math.nan] * len(xs) for _ in ys]
        for (i, j), vals in cells.items():
            grid[i][j] = sum(vals) / len(vals)
        cmap = "viridis_r" if score in SCORES_LOWER_BETTER else "viridis"  # bright = better
        im = ax.imshow(grid, cmap=cmap, aspect="auto", origin="lower")
        for i in range(len(ys)):
            for j in range(len(xs)):
                if not math.isnan(grid[i][j]):
                    ax.text(j, i, f"{grid[i][j]:.3g}", ha="center", va="center", fontsize=8, color="w",
                            path_effects=_outline())
        ax.set_xticks(range(len(xs)), [str(x) for x in xs], fontsize=7)
        ax.set_yticks(range(len(ys)), [str(y) for y in ys], fontsize=7)
        ax.set_xlabel(xk, fontsize=8)
        ax.set_ylabel(yk, fontsize=8)
        ax.set_title(_label(score), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046).ax.tick_params(labelsize=6)
    fig.tight_layout()
    plots.save(fig, "heatmaps", f"One {xk} x {yk} heat map per score (mean over seeds; bright = better).")


def _outline() -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=1.5, foreground="k")]


def _emergence(plots: _Plots, curves: dict[str, dict[str, Any]], shapes: list[str]) -> None:
    plt = pyplot()
    fig, axes = _panels(plt, len(shapes), cols=3, size=(3.6, 2.6))
    colors = {"all": "k", "fact": "tab:blue", "reasoning": "tab:green", "context": "tab:red"}
    for ax, shape in zip(axes, shapes):
        points = [c for c in curves.values() if c["shape"] == shape]
        for k, c in enumerate(points):
            for key, color in colors.items():
                pts = _accuracy(c["curve"], key)
                if pts:
                    steps = [e["step"] for e, _ in pts]
                    ax.plot(steps, [acc for _, acc in pts], color=color, ls="-" if k == 0 else "--", marker=".",
                            lw=1, label=key if k == 0 else None)
                    band = [b for e, _ in pts if (b := _ci95(e, key)) is not None]
                    if len(band) == len(pts):  # each checkpoint's 95% interval over the probe items, lightly shaded
                        ax.fill_between(steps, [b[0] for b in band], [b[1] for b in band], color=color,
                                        alpha=0.07, lw=0)
        _style(ax, shape, "training step")
        ax.set_ylim(0.2, 0.8)
    if axes:
        axes[0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    plots.save(fig, "emergence", "Probe accuracy per category against training step, one panel per shape "
               "(solid: first seed, dashed: second; shaded: each checkpoint's 95% Wilson interval over the probe "
               "items); the points are the evaluated checkpoints.")


def _cell(row: dict[str, Any], score: str) -> str:
    ci = [row.get(f"{score}_lo"), row.get(f"{score}_hi")]
    if score.startswith(("probes", "greedy")):
        return pct(row.get(score), ci)
    return num(row.get(score), ci)


def results_table(rows: list[dict[str, Any]], scores: list[str], first: str = "shape") -> str:
    """Rows (per shape or per point) with parameters, compute and every score with its interval."""
    header = [first, "non-emb params", "tokens", "FLOPs", *(_label(s) for s in scores)]
    body = [[Raw(f"<code>{esc(r[first])}</code>"), int(r.get("non_embedding_params") or 0),
             int(r.get("tokens") or 0), f"{float(r.get('flops') or 0):.3g}", *(_cell(r, s) for s in scores)]
            for r in rows]
    return table(body, header, "fig")


def write_report(out: Path, results: dict[str, Any], points_dir: Path) -> dict[str, Any]:
    """plots/*.png and report.html in the sweep folder `out` from `results` (as `sweep.write_results` returns
    it) and the points' run folders under `points_dir` (their training losses and probe curves)."""
    out = Path(out)
    rows, shapes = results["points"], results["shapes"]
    scores = score_columns(rows)
    shape_names = list(dict.fromkeys(r["shape"] for r in rows))
    shapes = sorted(shapes, key=lambda r: shape_names.index(r["shape"]))  # grid order, as the points
    plots = _Plots(out)
    if rows:
        curves = _point_curves(Path(points_dir), rows)
        _scores_vs_params(plots, shapes, scores, shape_names)
        _frontier(plots, curves, shape_names)
        if any(c["curve"] for c in curves.values()):
            _scores_vs_flops(plots, curves, shape_names)
            _emergence(plots, curves, shape_names)
        heat = _heat_axes(results.get("grid", []), shapes)
        if heat is not None:
            _heatmaps(plots, shapes, scores, heat)
    fig = plots.html.get
    emergence = fig("emergence") or ("<p>No per-checkpoint probe curve: each point saved one checkpoint "
                                     "(use --checkpoints 4 or more).</p>")
    settings = results.get("settings", {})
    budget = next((f"--{k} {settings[k]}" for k in ("flops", "tokens", "time") if settings.get(k)), "")
    body = (
        f"<p>{results['finished']} of {results['total']} points finished; budget per point {esc(budget)}; "
        f"seeds {esc(settings.get('seeds'))}.</p>"
        + "<h2>Results per shape</h2>"
        + how_to_read("Means over seeds; probes: 95% Wilson interval on the items of all seeds pooled; losses "
                      "(nats per token) and bits per byte: lowest-highest seed.")
        + results_table(shapes, scores)
        + details("every point", results_table(rows, scores, "point"))
        + "<h2>Scores against size</h2>" + fig("scores_vs_params", "")
        + "<h2>Compute frontier</h2>" + fig("frontier", "") + fig("scores_vs_flops", "")
        + "<h2>Width x depth</h2>" + fig("heatmaps", "")
        + "<h2>Emergence</h2>" + emergence
        + details("settings", f"<pre>{esc(json.dumps(settings, indent=1))}</pre>"
                              f"<p>{esc(results.get('intervals', ''))}</p>")
    )
    text = page(f"tinystories sweep: {out.name}", f"Sweep <code>{esc(out)}</code>", body)
    atomic_write_text(out / "report.html", text)
    return {"report": str(out / "report.html"), "plots": sorted(str(plots.dir / f"{n}.png") for n in plots.html),
            "bytes": len(text.encode("utf-8"))}
